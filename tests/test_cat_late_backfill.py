"""`ssmd data cat` and `Archive.records` over a range reaching midnight also give the
trade backfill records written early the next day whose window overlaps the range
(marked `"_late":true` / `record.late`): what says those trades were repaired or lost."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import ssmd.archive
from ssmd.cli.main import main
from ssmd.connector.records import BackfillRecord, ConnectRecord
from ssmd.subjects import market_subject
from tests.archive_harness import utc_ns
from tests.market_tape import ENV, Tape, archive_tape

S = 1_000_000_000
A, B = "KXBTCD-26MAR1213-T69499.99", "KXHIGHNY-26MAR12-B40.5"
DAY, NEXT = "2026-01-05", "2026-01-06"


def at(hour: int, minute: int, second: float = 0) -> int:
    return utc_ns(2026, 1, 5, hour, minute, second)


def next_at(hour: int, minute: int, second: float = 0) -> int:
    return utc_ns(2026, 1, 6, hour, minute, second)


def trade(tape: Tape, market: str, when: int) -> None:
    msg = {"market_ticker": market, "yes_price": 40, "count": 1, "trade_id": f"{market}{when}"}
    tape.add(market_subject(ENV, "kalshi", "trade", market), {"type": "trade", "msg": msg}, when)


def backfill(low: int, high: int, when: int, markets: list[str]) -> BackfillRecord:
    return BackfillRecord(
        0, "trade", low // S, high // S, markets, 0, 0, when, outcome="unrepaired",
        requested_min_ts=low // S, cause="error:25", error="REST gave no full answer",
    )  # fmt: skip


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DAY 23:40..23:59 trades of A and B; next day: at 00:03 the record of A's window
    23:50..23:58, at 00:06 a partial one whose loss began at 23:59:40 (its window starts
    after midnight, cut at the ledger's horizon): the two to show; at 00:40 one for a
    window of the next day only, at 01:10 (past the files read ahead) one for 23:57..23:58."""
    tape = Tape()
    tape.record(ConnectRecord(0, "wss://x", at(23, 40)), at(23, 40))
    for minute in range(40, 60, 2):
        trade(tape, A, at(23, minute, 2))
        trade(tape, B, at(23, minute, 3))
    late = (
        backfill(at(23, 50), at(23, 58), next_at(0, 3), [A]),
        attrs.evolve(
            backfill(next_at(0, 0, 10), next_at(0, 0, 40), next_at(0, 6), [A]),
            outcome="partial",
            requested_min_ts=at(23, 59, 40) // S,
            error=None,
        ),
        backfill(next_at(0, 20), next_at(0, 30), next_at(0, 40), [A]),
        backfill(at(23, 57), at(23, 58), next_at(1, 10), [A]),
    )
    for record in late:
        tape.record(record, record.ts_ns)
    for minute in (1, 30, 59):
        trade(tape, B, next_at(0, minute))
    trade(tape, B, next_at(1, 20))
    tape.items.sort(key=lambda item: item.recv_ns)
    root = tmp_path_factory.mktemp("archive")
    trio.run(archive_tape, root, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    return root


def cat(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> list[dict[str, Any]]:
    code = main(["data", "cat", "kalshi", DAY, "--path", str(root), *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return [json.loads(line) for line in captured.out.splitlines()]


def day_lines(root: Path) -> list[dict[str, Any]]:
    """Every line of DAY's files, straight from the gzip files."""
    out = []
    for path in sorted((root / "kalshi" / DAY).glob("*.jsonl.gz")):
        with gzip.open(path) as f:
            out += [json.loads(line) for line in f]
    return out


def late_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("_late") is True]


def test_cat_to_midnight_shows_the_backfill_record_written_after_midnight(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = [line for line in day_lines(archive) if line["_recv_ns"] >= at(23, 0)]
    for args in (("--start", "23:00", "--end", "24:00"), ("--start", "23:00"), ()):
        lines = cat(capsys, archive, *args)
        # The day's own lines first, unchanged; then the two records, marked late.
        assert lines[:-2][-len(expected) :] == expected, args
        assert late_lines(lines) == lines[-2:]
        late = lines[-2]
        assert late["_subject"].endswith(".ssmd.backfill")
        assert late["_recv_ns"] == next_at(0, 3)
        assert (late["min_ts"], late["max_ts"]) == (at(23, 50) // S, at(23, 58) // S)
        assert late["outcome"] == "unrepaired" and late["markets"] == [A]
    # Filtered as the day's own discontinuity records are: it touches A's trades only.
    assert len(late_lines(cat(capsys, archive, "--type", "trade", "--ticker", A))) == 2
    assert late_lines(cat(capsys, archive, "--type", "trade", "--ticker", B)) == []


def test_cat_leaves_out_late_records_whose_window_misses_the_range(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Of the four next-day records only those whose window overlaps the range are shown
    (the one read past 0100 would overlap, but is not read)."""

    def shown(*args: str) -> list[int]:
        return [line["_recv_ns"] for line in late_lines(cat(capsys, archive, *args))]

    assert shown() == [next_at(0, 3), next_at(0, 6)]
    assert shown("--start", "23:57:59") == [next_at(0, 3), next_at(0, 6)]
    assert shown("--start", "23:58:30") == [next_at(0, 6)]  # from its requested_min_ts


def test_cat_range_ending_before_midnight_is_as_before(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A range ending before the day's end adds nothing: a record after it would be in
    the day's own files, outside the range as asked."""
    lines = cat(capsys, archive, "--start", "23:00", "--end", "23:59:30")
    assert lines == [
        line for line in day_lines(archive) if at(23, 0) <= line["_recv_ns"] < at(23, 59, 30)
    ]
    assert late_lines(lines) == []


def test_archive_records_gives_the_late_record_too(archive: Path) -> None:
    store = ssmd.archive.open(archive)
    records = list(store.records("kalshi", DAY, start="23:00", end="24:00"))
    assert [r.late for r in records] == [False] * (len(records) - 2) + [True, True]
    assert records[-2].recv_ns == next_at(0, 3)
    assert records[-2].payload()["min_ts"] == at(23, 50) // S
    assert not any(r.late for r in store.records("kalshi", DAY, end="23:59"))
    # Over all days nothing is added: the next day's own records hold it once.
    seqs = [r.seq for r in store.records("kalshi")]
    assert len(seqs) == len(set(seqs)) and not any(r.late for r in store.records("kalshi"))


def copy_of(archive: Path, tmp_path: Path) -> Path:
    import shutil

    root = tmp_path / "archive"
    shutil.copytree(archive, root)
    return root


def next_day_files(root: Path) -> dict[str, dict[str, int]]:
    """The next day's files, by name, with their manifest's discontinuity counts."""
    manifest = json.loads((root / "kalshi" / NEXT / "manifest.json").read_text())
    return {f["name"]: f.get("discontinuities", {}) for f in manifest["files"]}


def test_only_next_day_files_holding_backfill_records_are_read(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The manifest says which files hold backfill records; a file without any is not
    read (here made unreadable, which would fail the cat if it were)."""
    root = copy_of(archive, tmp_path)
    without = [n for n, d in next_day_files(root).items() if n < "0100" and not d.get("backfill")]
    assert without, next_day_files(root)
    for name in without:
        (root / "kalshi" / NEXT / name).write_bytes(b"not gzip")
    assert [line["_recv_ns"] for line in late_lines(cat(capsys, root))] == [
        next_at(0, 3),
        next_at(0, 6),
    ]


def test_an_unreadable_next_day_fails_the_cat_after_the_days_lines_and_says_so(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_of(archive, tmp_path)
    with_backfill = [n for n, d in next_day_files(root).items() if d.get("backfill")]
    (root / "kalshi" / NEXT / sorted(with_backfill)[0]).write_bytes(b"not gzip")
    code = main(["data", "cat", "kalshi", DAY, "--path", str(root)])
    captured = capsys.readouterr()
    assert code == 1
    assert len(captured.out.splitlines()) == len(day_lines(root))  # the day's own, all
    assert f"{DAY}'s late backfill records ({DAY}'s own lines are complete)" in captured.err


def test_a_day_whose_next_day_is_not_archived_yet_says_so(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_of(archive, tmp_path)
    (root / "kalshi" / NEXT / "manifest.json").unlink()
    code = main(["data", "cat", "kalshi", DAY, "--path", str(root), "--start", "23:00"])
    captured = capsys.readouterr()
    assert code == 0
    assert f"{NEXT} has no finished file yet" in captured.err
    code = main(["data", "cat", "kalshi", DAY, "--path", str(root), "--end", "23:30"])
    assert code == 0 and "no finished file" not in capsys.readouterr().err
