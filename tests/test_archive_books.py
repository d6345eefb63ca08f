"""`ssmd data book`: books rebuilt from the archive equal the exchange's own books, in
both Kalshi forms, and a book touched by a gap is invalid until its own next snapshot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ssmd.cli.main import main
from ssmd.connector.records import GapRecord, OverflowRecord, ResubscribeRecord
from tests.archive_harness import utc_ns
from tests.market_tape import KalshiBooks, Tape, archive_tape

MS = 1_000_000
A, B, C = "KXBTCD-26MAR1213-T69499.99", "KXHIGHNY-26MAR12-B40.5", "INXD-26MAR12-B5712.5"
T0 = utc_ns(2026, 1, 5, 12, 0)


def book(capsys: pytest.CaptureFixture[str], root: Path, market: str, at: int) -> dict[str, Any]:
    code = main(["data", "book", "kalshi", market, "--at", str(at), "--json", "--path", str(root)])
    out = capsys.readouterr().out
    assert code == 0, out
    result: dict[str, Any] = json.loads(out)
    return result


def levels(view: dict[str, Any]) -> dict[str, Any]:
    return {"yes": view["yes"], "no": view["no"]}


@pytest.mark.parametrize("form", ["cents", "fp"])
def test_books_equal_the_exchange_and_a_gap_invalidates_exactly_its_sid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    tape = Tape()
    exchange = KalshiBooks(tape, form, {1: [A, B], 2: [C]})  # type: ignore[arg-type]
    now = T0
    for market in (A, B, C):
        exchange.snapshot(market, now)
        now += 10 * MS
    checks: list[tuple[int, dict[str, Any], set[str]]] = []  # (time, states, invalid)

    def run_deltas(n: int) -> None:
        nonlocal now
        for i in range(n):
            exchange.delta((A, B, C, A)[i % 4], now)
            now += 40 * MS

    def check(invalid: set[str]) -> None:
        # Between the last message and the next: the book must equal the state now.
        checks.append((now - 20 * MS, {m: exchange.state(m) for m in (A, B, C)}, invalid))

    run_deltas(200)
    check(set())
    run_deltas(300)
    check(set())
    # A delta of A on sid 1 is lost upstream; the connector sees the jump on the next one.
    exchange.delta(A, now, deliver=False)
    sid1_expected = exchange.seq[1]
    exchange.delta(B, now + 5 * MS)
    gap_at = now + 6 * MS
    tape.record(
        GapRecord(0, 1, "orderbook_delta", sid1_expected, sid1_expected + 1, [A, B], gap_at), gap_at
    )
    tape.record(ResubscribeRecord(0, "gap", "orderbook_delta", 1, 3, [A, B], gap_at), gap_at + MS)
    now += 20 * MS
    run_deltas(100)
    check({A, B})
    exchange.snapshot(A, now)
    now += 10 * MS
    run_deltas(40)
    check({B})
    exchange.snapshot(B, now)
    now += 10 * MS
    run_deltas(40)
    check(set())

    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))

    for at, states, invalid in checks:
        for market in (A, B, C):
            view = book(capsys, tmp_path, market, at)
            assert view["market"] == market and view["feed"] == "kalshi"
            if market in invalid:
                assert view["valid"] is False, (market, at)
                assert "exchange gap on sid 1" in view["reason"]
            else:
                assert view["valid"] is True and view["reason"] is None, (market, at, view)
                assert levels(view) == states[market], (market, at)
    # The lost delta really made A's rebuilt book differ: invalid was the truth.
    at, states, _ = checks[2]
    assert levels(book(capsys, tmp_path, A, at)) != states[A]


def test_book_before_any_snapshot_is_invalid_and_depth_cuts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tape = Tape()
    exchange = KalshiBooks(tape, "fp", {1: [A]})
    exchange.snapshot(A, T0 + 1000 * MS)
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    early = book(capsys, tmp_path, A, T0)
    assert early["valid"] is False and early["reason"] == "no snapshot yet"
    code = main(
        [
            "data",
            "book",
            "kalshi",
            A,
            "--at",
            "2026-01-05T12:00:02Z",
            "--depth",
            "2",
            "--json",
            "--path",
            str(tmp_path),
        ]
    )
    view = json.loads(capsys.readouterr().out)
    assert code == 0 and view["valid"] is True
    assert view["yes"] == exchange.state(A)["yes"][:2] and len(view["no"]) == 2
    assert view["yes"][0][0] == "0.4400"  # best (highest) bid first, fixed-point text


def test_every_step_gives_one_line_per_book_and_the_api_agrees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ssmd.archive

    tape = Tape()
    exchange = KalshiBooks(tape, "cents", {1: [A]})
    exchange.snapshot(A, T0 + 500 * MS)
    states = {}
    for second in range(1, 6):
        exchange.delta(A, T0 + second * 1000 * MS)
        states[second] = exchange.state(A)
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    code = main(
        ["data", "book", "kalshi", A, "--every", "1s", "--start", "2026-01-05T12:00:00Z",
         "--end", "2026-01-05T12:00:05.5Z", "--path", str(tmp_path)]
    )  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and len(lines) == 6
    assert [v["valid"] for v in lines] == [False, True, True, True, True, True]
    assert [v["at"] for v in lines[:2]] == [
        "2026-01-05T12:00:00.000000000Z",
        "2026-01-05T12:00:01.000000000Z",
    ]
    for second in range(1, 6):
        assert levels(lines[second]) == states[second]
    api = ssmd.archive.open(tmp_path).book("kalshi", A, at="2026-01-05T12:00:03Z")
    assert api.to_json() == lines[3]


def test_records_apply_in_stream_order_up_to_the_last_received_by_the_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A retry can be stored after a message received later; the book takes the stream's
    order and stops at the last record received at or before the time asked."""
    tape = Tape()
    exchange = KalshiBooks(tape, "fp", {1: [A]})
    exchange.snapshot(A, T0 + 1000 * MS)
    at_snapshot = exchange.state(A)
    exchange.delta(A, T0 + 3000 * MS)  # stored first, received last
    after_first = exchange.state(A)
    exchange.delta(A, T0 + 2000 * MS)  # stored second, received earlier
    after_both = exchange.state(A)
    assert after_first != after_both
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    assert levels(book(capsys, tmp_path, A, T0 + 1500 * MS)) == at_snapshot
    assert levels(book(capsys, tmp_path, A, T0 + 2500 * MS)) == after_both
    assert levels(book(capsys, tmp_path, A, T0 + 3500 * MS)) == after_both


def test_a_book_starts_from_the_previous_days_snapshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tape = Tape()
    exchange = KalshiBooks(tape, "cents", {1: [A]})
    exchange.snapshot(A, utc_ns(2026, 1, 5, 23, 59))
    for i in range(20):
        exchange.delta(A, utc_ns(2026, 1, 6, 0, 1, i))
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sorted(p.name for p in (tmp_path / "kalshi").iterdir() if p.is_dir()) == [
        "2026-01-05",
        "2026-01-06",
    ]
    view = book(capsys, tmp_path, A, utc_ns(2026, 1, 6, 0, 2))
    assert view["valid"] is True and levels(view) == exchange.state(A)


def test_book_prints_a_readable_table_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tape = Tape()
    exchange = KalshiBooks(tape, "fp", {1: [A]})
    exchange.snapshot(A, T0 + 1000 * MS)
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    assert main(["data", "book", "kalshi", A, "--at", str(T0), "--path", str(tmp_path)]) == 0
    assert "INVALID: no snapshot yet" in capsys.readouterr().out
    assert (
        main(
            [
                "data",
                "book",
                "kalshi",
                A,
                "--at",
                str(T0 + 2000 * MS),
                "--depth",
                "1",
                "--path",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    best = exchange.state(A)["yes"][0]
    assert ": valid" in out and f"{best[0]:>14} {best[1]:>16}" in out
    assert main(["data", "book", "nosuchvenue", A, "--at", str(T0), "--path", str(tmp_path)]) == 2
    assert "no book rules for feed 'nosuchvenue'" in capsys.readouterr().err


def test_an_overflow_invalidates_books_and_hours_from_its_first_drop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The publisher writes the overflow record once its buffer drains, hours after the
    first message it dropped: books and coverage must count from `first_recv_ns`."""
    s, h = 1000 * MS, 3600 * 1000 * MS
    tape = Tape()
    exchange = KalshiBooks(tape, "fp", {1: [A]})
    exchange.snapshot(A, T0)
    first, last = T0 + 2 * s, T0 + 2 * h
    exchange.snapshot(A, T0 + h)  # received while dropping: deltas after it were lost
    tape.record(OverflowRecord(40, 4000, first, last, last + s), last + s)
    exchange.snapshot(A, last + 10 * s)
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    assert book(capsys, tmp_path, A, T0 + s)["valid"] is True
    for at in (first + s, T0 + h + s, last):
        view = book(capsys, tmp_path, A, at)
        assert view["valid"] is False and "overflow: 40" in view["reason"], at
    assert book(capsys, tmp_path, A, last + 20 * s)["valid"] is True
    code = main(["data", "coverage", "kalshi", "2026-01-05", "--json", "--path", str(tmp_path)])
    hours = {r["hour"][11:13]: r for r in json.loads(capsys.readouterr().out)["hours"]}
    assert code == 0
    for hour in ("12", "13", "14"):
        assert hours[hour]["status"] == "degraded", hour
        assert "overflow" in [r["kind"] for r in hours[hour]["reasons"]], hour


def test_the_snapshot_search_reads_only_days_holding_the_market_and_is_bounded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ssmd.archive import store
    from ssmd.archive.books import rebuild
    from ssmd.archive.books.registry import venue_for

    tape = Tape()
    exchange = KalshiBooks(tape, "cents", {1: [A], 2: [B]})
    exchange.snapshot(A, utc_ns(2026, 1, 5, 12, 0))
    exchange.snapshot(B, utc_ns(2026, 1, 6, 12, 0))  # 01-06 holds B only
    for i in range(5):
        exchange.delta(A, utc_ns(2026, 1, 7, 12, 0, i))
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    opened: list[str] = []
    real = store.file_lines

    def counting(path: Path) -> Any:
        opened.append(path.parent.name)
        return real(path)

    monkeypatch.setattr(rebuild, "file_lines", counting)
    at = utc_ns(2026, 1, 7, 13, 0)
    start = rebuild._start_day(tmp_path, "kalshi", A, venue_for("kalshi"), at)
    assert start == "2026-01-05" and "2026-01-06" not in opened
    monkeypatch.setattr(rebuild, "file_lines", real)
    view = book(capsys, tmp_path, A, at)
    assert view["valid"] is True and levels(view) == exchange.state(A)
    monkeypatch.setattr(rebuild, "MAX_LOOKBACK_DAYS", 1)
    assert book(capsys, tmp_path, A, at)["reason"] == "no snapshot yet"


def test_a_book_reads_while_the_next_days_first_slot_is_being_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tape = Tape()
    exchange = KalshiBooks(tape, "fp", {1: [A]})
    exchange.snapshot(A, T0)
    exchange.delta(A, T0 + 1000 * MS)
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    new_day = tmp_path / "kalshi" / "2026-01-06"
    new_day.mkdir()
    (new_day / "0000.jsonl.gz.partial").write_bytes(b"")
    view = book(capsys, tmp_path, A, T0 + 2000 * MS)
    assert view["valid"] is True and levels(view) == exchange.state(A)
