"""Readers of the archive and the trade backfill: a window the backfill did not repair
is a gap in the coverage of those markets (only for its span, and only their trades: a
book stays valid); a repaired one is listed as repaired; the export's `discontinuities`
table gives each backfill's outcome and count."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import trio
import trio.testing

from ssmd.cli.main import main
from ssmd.connector.records import BackfillRecord, ConnectRecord, DisconnectRecord
from ssmd.subjects import market_subject
from tests.archive_harness import utc_ns
from tests.market_tape import ENV, KalshiBooks, Tape, archive_tape

S = 1_000_000_000
A, B = "KXBTCD-26MAR1213-T69499.99", "KXHIGHNY-26MAR12-B40.5"
DAY = "2026-01-05"


def at(hour: int, minute: int, second: float = 0) -> int:
    return utc_ns(2026, 1, 5, hour, minute, second)


def trade(tape: Tape, market: str, when: int) -> None:
    msg = {"market_ticker": market, "yes_price": 40, "count": 1, "trade_id": f"{market}{when}"}
    tape.add(market_subject(ENV, "kalshi", "trade", market), {"type": "trade", "msg": msg}, when)


def build(root: Path) -> None:
    """12:00 connect; 12:10 a 20 s disconnect whose trades are repaired; at 13:20 a loss
    on A's trades that REST refused to repair (window 13:19:58..13:20:32); 14:00 a
    window whose start was cut at the ledger's horizon (14:29:50..14:30 unrepaired)."""
    tape = Tape()
    books = KalshiBooks(tape, "cents", {1: [A]})
    tape.record(ConnectRecord(0, "wss://x", at(12, 0)), at(12, 0))
    books.snapshot(A, at(12, 0, 1))
    for minute in range(0, 59, 5):
        for hour in (12, 13, 14):
            trade(tape, A, at(hour, minute, 2))
            trade(tape, B, at(hour, minute, 3))
    tape.items.sort(key=lambda item: item.recv_ns)
    tape.record(DisconnectRecord(0, "ConnectionClosed", at(14, 59)), at(14, 59))
    tape.record(ConnectRecord(0, "wss://x", at(14, 59, 20)), at(14, 59, 20))
    books.delta(A, at(14, 59, 30))
    # Placed by receive time among the trades.
    repaired = BackfillRecord(
        0, "trade", at(12, 9, 58) // S, at(12, 10, 32) // S, [], 5, 2, at(12, 10, 40),
        requested_min_ts=at(12, 9, 58) // S, cause="disconnect",
    )  # fmt: skip
    refused = BackfillRecord(
        0, "trade", at(13, 19, 58) // S, at(13, 20, 32) // S, [A], 0, 0, at(13, 21),
        outcome="unrepaired", requested_min_ts=at(13, 19, 58) // S, cause="error:25",
        error="REST refused: HTTP 401",
    )  # fmt: skip
    partial = BackfillRecord(
        0, "trade", at(14, 30) // S, at(14, 31) // S, [B], 3, 1, at(14, 31, 10),
        outcome="partial", requested_min_ts=at(14, 29, 50) // S, cause="gap",
    )  # fmt: skip
    for record in (repaired, refused, partial):
        tape.record(record, record.ts_ns)
    tape.items.sort(key=lambda item: item.recv_ns)
    trio.run(archive_tape, root, tape, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    build(root)
    return root


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["data", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return code, captured.out


def test_coverage_shows_unrepaired_windows_as_gaps_of_their_markets(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, text = run(
        capsys, "coverage", "kalshi", DAY, "--by", "market", "--json", "--path", str(archive)
    )
    result = json.loads(text)
    hours = {h["hour"][11:13]: h for h in result["hours"]}
    by = {(r["hour"][11:13], r["market"]): r for r in result["markets"]}

    def kinds(row: dict[str, Any]) -> list[str]:
        return sorted(r["kind"] for r in row["reasons"])

    # The refused window: A's trades of 13:19:58..13:20:33 may be missing; B is complete.
    assert kinds(by[("13", A)]) == ["backfill"] and by[("13", B)]["status"] == "complete"
    (gap,) = by[("13", A)]["reasons"]
    assert gap["at"] == f"{DAY}T13:19:58.000Z" and gap["duration_s"] == 35
    assert gap["markets"] == [A] and "REST refused: HTTP 401" in gap["detail"]
    assert "not repaired (unrepaired" in gap["detail"]
    # The partial one: only the part before the horizon, only B.
    (cut,) = by[("14", B)]["reasons"][:1]
    assert (cut["kind"], cut["at"], cut["duration_s"]) == ("backfill", f"{DAY}T14:29:50.000Z", 10)
    assert "backfill" not in kinds(by[("14", A)])
    # The repaired window degrades nothing and is listed as repaired.
    assert hours["12"]["reasons"] == [r for r in hours["12"]["reasons"] if r["kind"] == "start"]
    (repair,) = hours["12"]["repaired"]
    assert repair["at"] == f"{DAY}T12:09:58.000Z" and "2 backfilled" in repair["detail"]
    assert "repaired" not in hours["11"]
    assert [r["kind"] for r in hours["14"]["repaired"]] == ["backfill"]  # the cut one's rest


def test_a_book_stays_valid_through_an_unrepaired_trade_window(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, text = run(
        capsys, "book", "kalshi", A, "--at", str(at(13, 30)), "--json", "--path", str(archive)
    )
    view = json.loads(text)
    assert view["valid"] is True, view["reason"]


def test_export_gives_each_backfill_its_outcome_and_count(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pq"
    run(capsys, "export", "--out", str(out), "--path", str(archive))
    rows = (
        pl.read_parquet(out / "discontinuities" / "feed=kalshi" / f"date={DAY}" / "*.parquet")
        .filter(pl.col("kind") == "backfill")
        .sort("seq")
    )
    assert rows["reason"].to_list() == ["repaired", "unrepaired: REST refused: HTTP 401", "partial"]
    assert rows["count"].to_list() == [2, 0, 1]
    assert rows["markets"].to_list() == [[], [A], [B]]


def test_coverage_sees_an_unrepaired_window_whose_record_landed_after_midnight(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A loss at 23:58 is given up on after midnight: its record is in the next day's
    files, and the day's coverage still shows A's trades of 23:57:58.. as maybe missing."""
    tape = Tape()
    tape.record(ConnectRecord(0, "wss://x", at(23, 50)), at(23, 50))
    for minute in (50, 55, 59):
        trade(tape, A, at(23, minute, 2))
        trade(tape, B, at(23, minute, 3))
    after = utc_ns(2026, 1, 6, 0, 4, 30)
    late = BackfillRecord(
        0, "trade", at(23, 57, 58) // S, at(23, 58, 32) // S, [A], 0, 0, after,
        outcome="unrepaired", requested_min_ts=at(23, 57, 58) // S, cause="error:25",
        error="REST gave no full answer in 300s (12 failed requests)",
    )  # fmt: skip
    tape.record(late, after)
    trade(tape, B, utc_ns(2026, 1, 6, 0, 5))
    tape.items.sort(key=lambda item: item.recv_ns)
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    _, text = run(
        capsys, "coverage", "kalshi", DAY, "--by", "market", "--json", "--path", str(tmp_path)
    )
    by = {(r["hour"][11:13], r["market"]): r for r in json.loads(text)["markets"]}
    (gap,) = [r for r in by[("23", A)]["reasons"] if r["kind"] == "backfill"]
    assert gap["at"] == f"{DAY}T23:57:58.000Z" and "no full answer" in gap["detail"]
    assert not [r for r in by[("23", B)]["reasons"] if r["kind"] == "backfill"]
