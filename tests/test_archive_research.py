"""Export, query, replay and coverage over an archive the real archiver wrote from a
scripted Kalshi tape whose every message (and sum) the test knows."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import trio
import trio.testing

import ssmd.archive
from ssmd.archive.replay import replay
from ssmd.archiver.lines import format_line
from ssmd.cli.main import main
from ssmd.connector.records import (
    ConnectRecord,
    DisconnectRecord,
    GapRecord,
    ResubscribeRecord,
)
from ssmd.nats.server import NatsServer
from ssmd.subjects import market_subject
from tests.archive_harness import utc_ns
from tests.backtest_stream import make_stream, read_back
from tests.market_tape import ENV, KalshiBooks, Tape, archive_tape

S = 1_000_000_000
A, B, C = "KXBTCD-26MAR1213-T69499.99", "KXHIGHNY-26MAR12-B40.5", "INXD-26MAR12-B5712.5"
DAY = "2026-01-05"


def at(hour: int, minute: int, second: float = 0) -> int:
    return utc_ns(2026, 1, 5, hour, minute, second)


class Expected:
    def __init__(self) -> None:
        self.trades: dict[str, int] = defaultdict(int)
        self.contracts: dict[str, Decimal] = defaultdict(Decimal)
        self.notional: dict[str, Decimal] = defaultdict(Decimal)


def trade(tape: Tape, exp: Expected, market: str, i: int, now: int) -> None:
    cents, count = 20 + i % 60, 1 + i % 7
    if i % 2:  # integer-cent form
        msg: dict[str, Any] = {
            "market_ticker": market,
            "yes_price": cents,
            "count": count,
            "ts": now // S,
        }
    else:  # 2026 fixed-point form
        msg = {
            "market_ticker": market,
            "yes_price_dollars": f"{cents / 100:.4f}",
            "count_fp": f"{count}.00",
            "ts_ms": now // 1_000_000,
        }
    msg["trade_id"] = f"t{i}"
    msg["taker_side"] = "yes"
    tape.add(
        market_subject(ENV, "kalshi", "trade", market), {"type": "trade", "sid": 9, "msg": msg}, now
    )
    exp.trades[market] += 1
    exp.contracts[market] += count
    exp.notional[market] += Decimal(cents) / 100 * count


def build_tape() -> tuple[Tape, Expected, KalshiBooks]:
    """10:58 connect; 11 quiet; 12:10 a 30 s disconnect, 12:40 a stream gap; 13:05 an
    exchange gap on sid 1 (A and B; C is on sid 2); 14:02 a clean shutdown."""
    tape, exp = Tape(), Expected()
    books = KalshiBooks(tape, "fp", {1: [A, B], 2: [C]})
    now = at(10, 58)
    tape.record(ConnectRecord(0, "ws://x", now), now)
    for m in (A, B, C):
        now += S
        books.snapshot(m, now)
    # Frames replay must give back byte for byte: an array (as Polymarket sends) and an
    # object with its own `_` keys, both archived under `_raw`.
    unrouted = "prod.kalshi.json.unrouted.invalid"
    tape.add(unrouted, b'[{"price": "0.10"}, {"price": 0.10, "size": 2.50} ]', now)
    tape.add(unrouted, b'{"_id": 7, "price": 0.10}', now)
    i = 0
    while now < at(14, 2):
        now += 10 * S
        i += 1
        market = (A, B, C)[(i // 3) % 3]
        if now >= at(12, 10) and not tape_has(tape, "disconnect"):
            tape.record(DisconnectRecord(0, "ConnectionLost: no frame for 30s", now), now)
            now += 30 * S
            tape.record(ConnectRecord(0, "ws://x", now), now)
            for m in (A, B, C):
                books.snapshot(m, now)
        if now >= at(12, 40) and not tape.stream_gaps:
            tape.lose_in_stream(4)
        if now >= at(13, 5) and not tape_has(tape, "gap"):
            tape.record(GapRecord(0, 1, "orderbook_delta", 50, 52, [A, B], now), now)
            tape.record(ResubscribeRecord(0, "gap", "orderbook_delta", 1, 7, [A, B], now), now)
        if i % 3 == 0:
            trade(tape, exp, market, i, now)
        elif i % 3 == 1:
            books.delta(market, now)
        else:
            tape.add(
                market_subject(ENV, "kalshi", "ticker", market),
                {
                    "type": "ticker",
                    "sid": 8,
                    "msg": {"market_ticker": market, "price": 40, "ts": now // S},
                },
                now,
            )
    now += S
    # A field first seen in the very last data record (schema inference would drop it).
    late = {"market_ticker": C, "price": 41, "late_key": "x", "ts": now // S}
    tape.add(
        market_subject(ENV, "kalshi", "ticker", C), {"type": "ticker", "sid": 8, "msg": late}, now
    )
    tape.record(DisconnectRecord(0, "shutdown: unsubscribed, nothing in flight", now + S), now + S)
    return tape, exp, books


def tape_has(tape: Tape, kind: str) -> bool:
    return any(item.subject.endswith(f".ssmd.{kind}") for item in tape.items)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tape, Expected]:
    root = tmp_path_factory.mktemp("archive")
    tape, exp, _books = build_tape()
    trio.run(archive_tape, root, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    return root, tape, exp


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["data", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_export_is_typed_hive_parquet_that_duckdb_and_polars_read_exactly(
    archive: tuple[Path, Tape, Expected], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, tape, exp = archive
    out = tmp_path / "pq"
    code, text, err = run(
        capsys, "export", "--format", "parquet", "--out", str(out), "--path", str(root)
    )
    assert code == 0, err
    manifest = json.loads((root / "kalshi" / DAY / "manifest.json").read_text())
    stems = [f["name"].removesuffix(".jsonl.gz") for f in manifest["files"]]
    assert len(stems) >= 12
    for table in (
        "trades",
        "tickers",
        "book_snapshots",
        "book_deltas",
        "lifecycle",
        "markets",
        "discontinuities",
        "raw",
    ):
        assert sorted(
            p.stem for p in (out / table / "feed=kalshi" / f"date={DAY}").glob("*.parquet")
        ) == sorted(stems)

    code, text, err = run(
        capsys, "query", "--parquet", str(out), "--json",
        "SELECT market, count(*) AS n, sum(size) AS contracts, sum(price * size) AS notional, "
        "min(typeof(exchange_ts)) AS ts_type, min(date) AS d FROM trades GROUP BY market ORDER BY market",
    )  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in text.splitlines()]
    assert {r["market"] for r in rows} == {A, B, C}
    for r in rows:
        m = r["market"]
        assert r["n"] == exp.trades[m]
        assert Decimal(str(r["contracts"])) == exp.contracts[m]
        assert abs(Decimal(str(r["notional"])) - exp.notional[m]) < Decimal("1e-9")
        assert r["ts_type"] == "TIMESTAMP WITH TIME ZONE" and r["d"] == DAY

    # polars reads the same tree with hive partitioning.
    trades = pl.scan_parquet(
        str(out / "trades" / "**" / "*.parquet"), hive_partitioning=True
    ).collect()
    assert set(trades["feed"].unique()) == {"kalshi"}
    per = trades.group_by("market").agg(pl.len().alias("n"), pl.col("size").sum().alias("c"))
    assert {r["market"]: (r["n"], Decimal(str(r["c"]))) for r in per.to_dicts()} == {
        m: (exp.trades[m], exp.contracts[m]) for m in (A, B, C)
    }

    # Every slot's rows agree with its manifest entry's records_by_type; raw has all.
    for entry in manifest["files"]:
        stem, by_type = entry["name"].removesuffix(".jsonl.gz"), entry["records_by_type"]

        def seqs(table: str, where: str = "true", stem: str = stem) -> int:
            path = out / table / "feed=kalshi" / f"date={DAY}" / f"{stem}.parquet"
            df = pl.read_parquet(path).filter(pl.sql_expr(where))
            return int(df["seq"].n_unique())

        assert (
            seqs("raw")
            == entry["records"]
            == len(pl.read_parquet(out / "raw" / "feed=kalshi" / f"date={DAY}" / f"{stem}.parquet"))
        )
        assert seqs("trades") == by_type.get("trade", 0)
        assert seqs("tickers") == by_type.get("ticker", 0)
        both = pl.concat([
            pl.read_parquet(out / t / "feed=kalshi" / f"date={DAY}" / f"{stem}.parquet").select("seq")
            for t in ("book_snapshots", "book_deltas")
        ])  # fmt: skip
        assert both["seq"].n_unique() == by_type.get("orderbook", 0)
        assert seqs("discontinuities", "kind != 'stream_gap'") == by_type.get("ssmd", 0)
    code, text, _ = run(
        capsys,
        "query",
        "--parquet",
        str(out),
        "--csv",
        "SELECT kind, count FROM discontinuities WHERE kind = 'stream_gap'",
    )
    assert text.splitlines() == ["kind,count", "stream_gap,4"]
    assert len(tape.items) == sum(f["records"] for f in manifest["files"])


def test_second_export_writes_nothing_and_a_later_slot_is_exported_next(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, out = tmp_path / "a", tmp_path / "pq"
    tape = Tape()
    for i in range(30):
        tape.add(
            market_subject(ENV, "kalshi", "trade", A),
            {"type": "trade", "msg": {"market_ticker": A, "count": 1, "yes_price": 5}},
            at(12, 0, i * 20),
        )
    trio.run(archive_tape, root, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    code, text, _ = run(capsys, "export", "--out", str(out), "--path", str(root))
    assert code == 0 and "1 slot(s) exported" in text
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    assert len(before) == 8
    code, text, _ = run(capsys, "export", "--out", str(out), "--path", str(root), "kalshi")
    assert code == 0 and "0 slot(s) exported, 1 already done" in text
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == before
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]

    later = Tape()
    for i in range(10):
        later.add(
            market_subject(ENV, "kalshi", "trade", B),
            {"type": "trade", "msg": {"market_ticker": B, "count": 2, "yes_price": 7}},
            at(12, 31, i),
        )
    trio.run(archive_tape, root, later, 900, 30, clock=trio.testing.MockClock(autojump_threshold=0))
    code, text, _ = run(capsys, "export", "--out", str(out), "--path", str(root))
    assert code == 0 and f"exported kalshi/{DAY}/1230" in text and "1 slot(s) exported" in text
    con = ssmd.archive.open(root).duckdb(out)
    assert con.execute(
        "SELECT market, count(*), sum(size) FROM trades GROUP BY 1 ORDER BY 1"
    ).fetchall() == [(A, 30, 30.0), (B, 10, 20.0)]


def test_jsonl_view_keeps_a_field_first_seen_in_the_last_line(
    archive: tuple[Path, Tape, Expected], capsys: pytest.CaptureFixture[str]
) -> None:
    root, tape, _ = archive
    code, text, err = run(
        capsys, "query", "--path", str(root), "--json",
        "SELECT count(*) AS n, count(*) FILTER (WHERE json->'msg'->>'late_key' = 'x') AS late, "
        "min(date) AS d FROM jsonl",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(text) == {"n": len(tape.items), "late": 1, "d": DAY}
    code, text, err = run(
        capsys, "query", "--path", str(root), "SELECT count(*) AS n FROM jsonl WHERE type = 'ssmd'"
    )
    assert code == 0 and "| n " in text and "(1 row)" in text
    # market is the decoded ticker, as in the Parquet tables (A's dots are %2E in subjects)
    code, text, err = run(
        capsys, "query", "--path", str(root), "--csv",
        "SELECT DISTINCT market FROM jsonl WHERE type IN ('trade', 'ssmd') ORDER BY 1 NULLS LAST",
    )  # fmt: skip
    assert code == 0, err
    assert text.splitlines() == ["market", *sorted((A, B, C)), '""']  # NULL for ssmd


def test_jsonl_view_infers_no_schema_past_duckdbs_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DuckDB samples 20,480 lines to infer a JSON schema: a key first seen after that
    would be dropped by an inferring reader. The view must keep it."""
    day_dir = tmp_path / "kalshi" / DAY
    day_dir.mkdir(parents=True)
    subject = market_subject(ENV, "kalshi", "ticker", A)
    lines = [
        format_line(i, subject, b'{"type":"ticker","msg":{"price":%d}}' % i, at(12, 0) + i)
        for i in range(1, 20_600)
    ]
    lines.append(
        format_line(20_600, subject, b'{"type":"ticker","msg":{"late_key":"x"}}', at(12, 1))
    )
    (day_dir / "1200.jsonl.gz").write_bytes(gzip.compress(b"".join(lines)))
    code, text, err = run(
        capsys, "query", "--path", str(tmp_path), "--json",
        "SELECT count(*) AS n, count(*) FILTER (WHERE json->'msg'->>'late_key' = 'x') AS late, "
        "max(seq) FILTER (WHERE json->'msg'->>'late_key' = 'x') AS seq FROM jsonl",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(text) == {"n": 20_600, "late": 1, "seq": 20_600}


def test_bad_sql_is_one_clear_error(
    archive: tuple[Path, Tape, Expected], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "query", "--path", str(archive[0]), "SELECT * FROM nope")
    assert (
        code == 2
        and err.startswith("ssmd: query failed")
        and "jsonl" in err
        and "Traceback" not in err
    )


async def test_replay_keeps_stream_order_filters_and_paces_by_receive_time(
    archive: tuple[Path, Tape, Expected], autojump_clock: trio.testing.MockClock
) -> None:
    root, tape, _ = archive
    arch = ssmd.archive.open(root)
    got: list[tuple[float, int, int | None]] = []

    async def sink(batch: Any) -> None:
        got.extend((trio.current_time(), r.seq, r.recv_ns) for r in batch)

    start = trio.current_time()
    records = arch.records("kalshi", DAY, ticker=A, type="trade", start=at(12, 0), end=at(12, 30))
    sent = await replay(records, sink, speed=4.0)
    expected = [
        it
        for it in tape.items
        if it.subject
        in (
            market_subject(ENV, "kalshi", "trade", A),
            f"{ENV}.kalshi.json.ssmd.disconnect",
            f"{ENV}.kalshi.json.ssmd.connect",
        )
        and at(12, 0) <= it.recv_ns < at(12, 30)
    ]  # the disconnect touches every market: a filtered replay keeps it
    assert sent == len(got) == len(expected) > 10
    assert [r for _t, _s, r in got] == [it.recv_ns for it in expected]
    assert [s for _t, s, _r in got] == sorted(s for _t, s, _r in got)
    first = got[0][2]
    assert first is not None
    for when, _seq, recv in got:
        assert recv is not None
        assert when - start == pytest.approx((recv - first) / 1e9 / 4.0, abs=1e-6)
    # As fast as possible: no virtual time passes.
    t0 = trio.current_time()
    assert await replay(arch.records("kalshi", DAY), sink, speed=None) == len(tape.items)
    assert trio.current_time() == t0


def test_replay_max_prints_the_archive_lines_in_order(
    archive: tuple[Path, Tape, Expected], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _, _ = archive
    code, replayed, _ = run(
        capsys, "replay", "kalshi", DAY, "--max", "--type", "ssmd", "--path", str(root)
    )
    code2, cat, _ = run(capsys, "cat", "kalshi", DAY, "--type", "ssmd", "--path", str(root))
    assert code == code2 == 0 and replayed == cat and len(cat.splitlines()) == 6


def test_a_filtered_replay_keeps_the_discontinuities_touching_its_ticker(
    archive: tuple[Path, Tape, Expected], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _, _ = archive
    kinds = {}
    for ticker in (A, C):
        code, out, err = run(
            capsys, "replay", "kalshi", DAY, "--max", "--ticker", ticker, "--type", "trade",
            "--path", str(root),
        )  # fmt: skip
        assert code == 0, err
        assert "stream gap: 4 message(s) after seq" in err
        subjects = [json.loads(line)["_subject"] for line in out.splitlines()]
        kinds[ticker] = [s.rsplit(".", 1)[1] for s in subjects if ".ssmd." in s]
        trades = market_subject(ENV, "kalshi", "trade", ticker)
        assert all(s == trades for s in subjects if ".ssmd." not in s)
        code, cat, _ = run(capsys, "cat", "kalshi", DAY, "--ticker", ticker, "--path", str(root))
        assert code == 0
        assert [json.loads(line)["_subject"].rsplit(".", 1)[1] for line in cat.splitlines()
                if ".ssmd." in line] == kinds[ticker]  # fmt: skip
    assert kinds[A] == ["connect", "disconnect", "connect", "gap", "resubscribe", "disconnect"]
    assert kinds[C] == ["connect", "disconnect", "connect", "disconnect"]  # the gap is sid 1's


def test_replay_republishes_the_same_subjects_and_payloads_to_nats(
    archive: tuple[Path, Tape, Expected],
    nats_server: NatsServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, tape, _ = archive
    make_stream(nats_server.url)
    code, _, err = run(
        capsys,
        "replay",
        "kalshi",
        DAY,
        "--max",
        "--to",
        nats_server.url,
        "--prefix",
        "bt",
        "--path",
        str(root),
    )
    assert code == 0, err

    got = [
        (subject, data, (headers or {}).get("Ssmd-Recv-Ns"))
        for subject, data, headers in read_back(nats_server.url, len(tape.items))
    ]
    assert got == [("bt." + it.subject, it.payload.strip(), str(it.recv_ns)) for it in tape.items]


def test_coverage_reports_exactly_the_degraded_hours_and_markets(
    archive: tuple[Path, Tape, Expected], capsys: pytest.CaptureFixture[str]
) -> None:
    root, _, _ = archive
    code, text, err = run(
        capsys, "coverage", "kalshi", DAY, "--by", "market", "--json", "--path", str(root)
    )
    assert code == 0, err
    result = json.loads(text)
    hours = {h["hour"][11:13]: h for h in result["hours"]}
    assert list(hours) == [f"{h:02d}" for h in range(24)]  # every hour, data or not
    kinds = {h: sorted(r["kind"] for r in row["reasons"]) for h, row in hours.items()}
    assert kinds == {
        **{f"{h:02d}": ["no_data"] for h in (*range(10), *range(15, 24))},
        "10": ["start"],
        "11": [],
        "12": ["disconnect", "stream_gap"],
        "13": ["gap", "resubscribe"],
        "14": ["end"],
    }
    assert hours["11"]["status"] == "complete" and hours["12"]["status"] == "degraded"
    disconnect = next(r for r in hours["12"]["reasons"] if r["kind"] == "disconnect")
    assert disconnect["duration_s"] == 30 and disconnect["at"] == f"{DAY}T12:10:03.000Z"
    assert sum(h["records"] for h in result["hours"]) == sum(
        f["records"]
        for f in json.loads((root / "kalshi" / DAY / "manifest.json").read_text())["files"]
    )
    by = {(r["hour"][11:13], r["market"]): r for r in result["markets"]}
    assert by[("13", A)]["status"] == by[("13", B)]["status"] == "degraded"
    assert {r["kind"] for r in by[("13", A)]["reasons"]} == {"gap", "resubscribe"}
    assert by[("13", C)]["status"] == "complete"
    assert by[("11", C)]["status"] == "complete" and by[("12", C)]["status"] == "degraded"
    code, text, _ = run(capsys, "coverage", "kalshi", DAY, "--path", str(root))
    assert "disconnect for 30 s at 2026-01-05T12:10:03.000Z" in text


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_or_truncated_files_are_a_clear_error_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    tape, _exp, _books = build_tape()
    tape.items = tape.items[:400]
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    victim = sorted((tmp_path / "kalshi" / DAY).glob("*.jsonl.gz"))[1]
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x55
    victim.write_bytes(bytes(data))
    for args in (
        ["book", "kalshi", A, "--at", str(at(23, 0)), "--json"],
        ["export", "--out", str(tmp_path / "pq")],
        ["replay", "kalshi", DAY, "--max"],
        ["coverage", "kalshi", DAY],
        ["cat", "kalshi", DAY],
    ):
        code, _out, err = run(capsys, *args, "--path", str(tmp_path))
        assert code == 1, (args, err)
        assert err.startswith("ssmd: corrupt archive: ") and str(victim) in err, (args, err)
    assert not list((tmp_path / "pq").rglob(f"{victim.name.split('.')[0]}.parquet"))
    assert not [p for p in (tmp_path / "pq").rglob(".*") if p.is_file()]  # no temp left
    result = subprocess.run(
        [sys.executable, "-m", "ssmd", "data", "export", "--out", str(tmp_path / "pq2"), "--path", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (
        result.returncode == 1 and "Traceback" not in result.stderr and str(victim) in result.stderr
    )


def test_export_keeps_odd_messages_in_raw_instead_of_failing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ssmd.archive.export.BATCH_ROWS", 2)  # several row groups per file
    tape = Tape()
    odd: list[tuple[str, dict[str, Any] | bytes]] = [
        (market_subject(ENV, "kalshi", "orderbook", A), {"type": "orderbook_delta", "sid": 1, "msg": {"market_ticker": A, "side": "yes"}}),
        (market_subject(ENV, "kalshi", "trade", A), {"type": "trade", "msg": {"market_ticker": A, "yes_price": "abc", "count": 1.5}}),
        ("prod.kalshi.json.unrouted.invalid", b"not json at all"),
        (market_subject(ENV, "kalshi", "trade", A), {"type": "trade", "msg": {"market_ticker": A, "yes_price": 40, "count": 2}}),
    ]  # fmt: skip
    for i, (subject, payload) in enumerate(odd):
        tape.add(subject, payload, at(12, 0, i))
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    out = tmp_path / "pq"
    code, text, err = run(capsys, "export", "--out", str(out), "--path", str(tmp_path))
    assert code == 0, err
    # The delta without a price could not be typed: said, not silent.
    assert "1 record(s) not typed" in text and "not typed (kept in raw only): orderbook 1" in err
    con = ssmd.archive.open(tmp_path).duckdb(out)
    raw = con.execute("SELECT type, payload FROM raw ORDER BY seq").fetchall()
    assert [t for t, _ in raw] == ["orderbook", "trade", "unrouted", "trade"]
    assert raw[2][1] == '"not json at all"'
    assert con.execute("SELECT count(*) FROM book_deltas").fetchone() == (0,)
    assert con.execute("SELECT price, size FROM trades ORDER BY seq").fetchall() == [
        (None, 1.5),
        (0.4, 2.0),
    ]


def test_a_stream_gap_between_two_files_is_one_discontinuities_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tape = Tape()
    for i, when in enumerate((at(12, 0, 1), at(12, 0, 2), at(12, 20, 1), at(12, 20, 2))):
        if i == 2:
            tape.lose_in_stream(7)  # seqs 3..9 never archived; files hold 1-2 and 10-11
        tape.add(
            market_subject(ENV, "kalshi", "trade", A),
            {"type": "trade", "msg": {"market_ticker": A, "count": 1, "yes_price": 5}},
            when,
        )
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    files = json.loads((tmp_path / "kalshi" / DAY / "manifest.json").read_text())["files"]
    assert [(f["nats_start_seq"], f["nats_end_seq"]) for f in files] == [(1, 2), (10, 11)]
    out = tmp_path / "pq"
    assert run(capsys, "export", "--out", str(out), "--path", str(tmp_path))[0] == 0
    con = ssmd.archive.open(tmp_path).duckdb(out)
    assert con.execute(
        "SELECT kind, seq, count FROM discontinuities WHERE kind = 'stream_gap'"
    ).fetchall() == [("stream_gap", 2, 7)]


@pytest.mark.parametrize("damage", ["cut", "broken"])
def test_a_damaged_line_inside_a_good_gzip_is_a_clear_error_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    tape, _exp, _books = build_tape()
    tape.items = tape.items[:400]
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    victim = sorted((tmp_path / "kalshi" / DAY).glob("*.jsonl.gz"))[0]
    lines = gzip.decompress(victim.read_bytes()).splitlines(keepends=True)
    n = next(i for i, line in enumerate(lines) if b'"orderbook_delta"' in line)
    if damage == "cut":  # a valid prefix, the body cut short
        lines[n] = lines[n][: len(lines[n]) // 2 + 40] + b"\n"
    else:  # ends like a line, is not JSON
        lines[n] = lines[n].replace(b'"msg":', b'"msg"', 1)
    victim.write_bytes(gzip.compress(b"".join(lines)))
    commands = [
        ["book", "kalshi", A, "--at", str(at(23, 0)), "--json"],  # the delta is A's
        ["export", "--out", str(tmp_path / "pq")],
    ]
    commands += [  # readers that pass lines on unparsed check them too
        ["replay", "kalshi", DAY, "--max"],
        ["replay", "kalshi", DAY, "--max", "--type", "ticker"],
        ["coverage", "kalshi", DAY],
        ["cat", "kalshi", DAY],
    ]
    for args in commands:
        code, _out, err = run(capsys, *args, "--path", str(tmp_path))
        assert code == 1, (args, err)
        assert err.startswith("ssmd: corrupt archive: ") and str(victim) in err, (args, err)
    code, _out, err = run(capsys, "query", "--path", str(tmp_path), "SELECT count(*) FROM jsonl")
    assert "Traceback" not in err and (code == 0 or err.startswith("ssmd: query failed"))


@pytest.mark.parametrize(
    "args",
    [
        ["book", "kalshi", A, "--at", "inf"],
        ["book", "kalshi", A, "--at=-inf"],
        ["replay", "kalshi", DAY, "--speed", "0"],
        ["replay", "kalshi", DAY, "--speed=-2"],
        ["replay", "kalshi", DAY, "--speed", "nan"],
    ],
)
def test_bad_times_and_speeds_are_one_line_errors(
    archive: tuple[Path, Tape, Expected], capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    try:
        code = main(["data", *args, "--path", str(archive[0])])
    except SystemExit as exc:  # argparse
        code = int(str(exc.code))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "cannot read time" in err or "must be a positive number" in err, err


def test_export_skips_a_new_day_whose_first_slot_is_still_being_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tape = Tape()
    for i in range(3):
        tape.add(
            market_subject(ENV, "kalshi", "trade", A),
            {"type": "trade", "msg": {"market_ticker": A, "count": 1, "yes_price": 5}},
            at(23, 50, i),
        )
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    new_day = tmp_path / "kalshi" / "2026-01-06"
    new_day.mkdir()
    (new_day / "0000.jsonl.gz.partial").write_bytes(b"")
    out = tmp_path / "pq"
    code, text, err = run(capsys, "export", "--out", str(out), "--path", str(tmp_path))
    assert code == 0, err
    assert f"exported kalshi/{DAY}/2345" in text and "skipped kalshi/2026-01-06" in err
    assert (out / "raw" / "feed=kalshi" / f"date={DAY}" / "2345.parquet").exists()
    code, _, err = run(
        capsys, "export", "--out", str(out), "--path", str(tmp_path), "kalshi", "2026-01-06"
    )
    assert code == 2 and "no manifest for kalshi 2026-01-06" in err


def test_coverage_spans_a_stream_gap_over_a_silence_and_lists_empty_hours(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records at 12:00, then nothing until 14:30, where the stream gap is detected:
    the lost messages could lie anywhere in between, so 12, 13 and 14 are degraded."""
    tape = Tape()
    for i, when in enumerate((at(12, 0, 1), at(12, 0, 2), at(14, 30), at(14, 30, 1))):
        if i == 2:
            tape.lose_in_stream(3)
        tape.add(
            market_subject(ENV, "kalshi", "trade", A),
            {"type": "trade", "msg": {"market_ticker": A, "count": 1, "yes_price": 5}},
            when,
        )
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    code, text, err = run(capsys, "coverage", "kalshi", DAY, "--json", "--path", str(tmp_path))
    assert code == 0, err
    hours = {h["hour"][11:13]: h for h in json.loads(text)["hours"]}
    assert len(hours) == 24
    for hour in ("12", "13", "14"):
        assert hours[hour]["status"] == "degraded", hour
        assert "stream_gap" in [r["kind"] for r in hours[hour]["reasons"]], hour
    assert [r["kind"] for r in hours["13"]["reasons"]] == ["no_data", "stream_gap"]
    assert hours["11"]["status"] == "degraded" and hours["11"]["records"] == 0


def test_export_checks_each_slot_against_the_manifests_records_by_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tape = Tape()
    for i in range(4):
        kind = "trade" if i % 2 else "ticker"
        tape.add(
            market_subject(ENV, "kalshi", kind, A),
            {"type": kind, "msg": {"market_ticker": A, "count": 1, "yes_price": 5}},
            at(12, 0, i),
        )
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    path = tmp_path / "kalshi" / DAY / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["files"][0]["records_by_type"] == {"ticker": 2, "trade": 2}
    manifest["files"][0]["records_by_type"] = {"ticker": 1, "trade": 3}  # same total
    path.write_text(json.dumps(manifest))
    code, _, err = run(capsys, "export", "--out", str(tmp_path / "pq"), "--path", str(tmp_path))
    assert code == 1 and "manifest says {'ticker': 1, 'trade': 3}" in err, err
    assert not list((tmp_path / "pq").rglob("*.parquet"))


def test_export_makes_every_table_durable_before_raw_says_the_slot_is_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tape = Tape()
    tape.add(
        market_subject(ENV, "kalshi", "trade", A),
        {"type": "trade", "msg": {"market_ticker": A, "count": 1, "yes_price": 5}},
        at(12, 0, 1),
    )
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    events: list[tuple[str, str]] = []
    paths: dict[int, str] = {}
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

    def logged_open(path: Any, flags: int, *args: Any) -> int:
        fd = real_open(path, flags, *args)
        paths[fd] = str(path)
        return fd

    def logged_fsync(fd: int) -> None:
        events.append(("fsync", paths.get(fd, "?")))
        real_fsync(fd)

    def logged_replace(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        events.append(("replace", str(dst)))

    monkeypatch.setattr("ssmd.archive.export.os.open", logged_open)
    monkeypatch.setattr("ssmd.archive.export.os.fsync", logged_fsync)
    monkeypatch.setattr("ssmd.archive.export.os.replace", logged_replace)
    out = tmp_path / "pq"
    assert run(capsys, "export", "--out", str(out), "--path", str(tmp_path))[0] == 0
    raw = str(out / "raw" / "feed=kalshi" / f"date={DAY}" / "1200.parquet")
    renames = [i for i, (what, _) in enumerate(events) if what == "replace"]
    assert len(renames) == 8 and events[renames[-1]] == ("replace", raw)
    for i in renames:
        target = Path(events[i][1])
        assert events[i - 1] == ("fsync", str(target.parent / f".{target.name}.tmp"))
        assert events[i + 1] == ("fsync", str(target.parent)), events[i : i + 2]


def test_export_batches_by_bytes_as_well_as_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory is bounded by bytes too: a few huge payloads must not wait for 50,000 rows."""
    import pyarrow.parquet as pq

    monkeypatch.setattr("ssmd.archive.export.BATCH_BYTES", 1000)
    tape = Tape()
    for i in range(6):
        tape.add("prod.kalshi.json.unrouted.invalid", {"pad": "x" * 600, "i": i}, at(12, 0, i))
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    out = tmp_path / "pq"
    assert run(capsys, "export", "--out", str(out), "--path", str(tmp_path))[0] == 0
    raw = pq.ParquetFile(out / "raw" / "feed=kalshi" / f"date={DAY}" / "1200.parquet")
    assert raw.metadata.num_rows == 6 and raw.num_row_groups == 3


def test_export_keeps_backfilled_rest_trades_and_catalogue_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A REST trade (backfilled after a loss) is a `trades` row marked backfilled; a
    market or event catalogue record (a REST object, no `msg`) is a `markets` row."""
    tape = Tape()
    tape.add(
        market_subject(ENV, "kalshi", "trade", A),
        {"type": "trade", "msg": {"market_ticker": A, "count_fp": "2.00", "yes_price": 5}},
        at(12, 0, 1),
    )
    rest_trade = {
        "ticker": A, "created_time": "2026-01-05T11:59:58Z", "yes_price_dollars": "0.4200",
        "no_price_dollars": "0.5800", "count_fp": "3.00", "taker_side": "yes", "trade_id": "t-1",
    }  # fmt: skip
    tape.add(market_subject(ENV, "kalshi", "trade", A), rest_trade, at(12, 0, 2), backfilled=True)
    tape.add(
        market_subject(ENV, "kalshi", "market", A),
        {"ticker": A, "event_ticker": "KXBTCD-26MAR1213", "status": "active"},
        at(12, 0, 3),
    )
    tape.add(
        market_subject(ENV, "kalshi", "event", "KXBTCD-26MAR1213"),
        {"event_ticker": "KXBTCD-26MAR1213", "title": "BTC"},
        at(12, 0, 4),
    )
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    manifest = json.loads((tmp_path / "kalshi" / DAY / "manifest.json").read_text())
    (entry,) = manifest["files"]
    by_type = entry["records_by_type"]
    assert by_type == {"trade": 2, "market": 1, "event": 1}
    out = tmp_path / "pq"
    code, _, err = run(capsys, "export", "--out", str(out), "--path", str(tmp_path))
    assert code == 0, err
    stem = entry["name"].removesuffix(".jsonl.gz")

    def table(name: str) -> pl.DataFrame:
        return pl.read_parquet(out / name / "feed=kalshi" / f"date={DAY}" / f"{stem}.parquet")

    trades = table("trades").sort("seq")
    assert len(trades) == by_type["trade"]
    assert trades["backfilled"].to_list() == [False, True]
    assert trades["trade_id"].to_list()[1] == "t-1"
    assert trades["price"].to_list()[1] == 0.42 and trades["size"].to_list()[1] == 3.0
    assert trades["side"].to_list()[1] == "yes"
    assert trades["exchange_ts"].to_list()[1] is not None
    markets = table("markets")
    assert len(markets) == by_type["market"] + by_type["event"]
