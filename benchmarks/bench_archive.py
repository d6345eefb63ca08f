"""Reading the archive back: Parquet export and book rebuilding, each against a plain
read (gzip + json.loads per line) of the same files in the same run.

    .venv/bin/python benchmarks/bench_archive.py [--records 200000]

The archive is written by the archiver's own slot writer: Kalshi messages in the 2026
fixed-point form, 20 markets, a snapshot per market every 500 deltas, with tickers and
trades between (half the records are deltas), one 15-minute file per 20,000 records.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ssmd.archive.books.rebuild import books_at
from ssmd.archive.export import export_parquet
from ssmd.archiver.files import FileOps, SlotFile
from ssmd.archiver.manifest import FileEntry, Manifest, write_manifest
from ssmd.nats.types import FetchedMessage

DAY = "2026-01-05"
T0 = 1_767_600_000 * 10**9  # 2026-01-05T08:00:00Z
SLOT_NS = 900 * 10**9
PER_FILE = 20_000
MARKETS = [f"KXBTCD-26MAR1213-T{68499.99 + 500 * i:.2f}" for i in range(20)]


def _messages(n: int) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(1)
    out: list[tuple[str, dict[str, Any]]] = []
    deltas = dict.fromkeys(MARKETS, 0)
    msg: dict[str, Any]
    for i in range(n):
        market = MARKETS[i % len(MARKETS)]
        token = market.replace(".", "%2E")
        kind = i % 4
        if kind in (0, 2):
            if deltas[market] % 500 == 0:
                levels = [[f"0.{p:02d}00", f"{rng.randint(1, 900)}.00"] for p in range(30, 45)]
                msg = {"market_ticker": market, "yes_dollars_fp": levels, "no_dollars_fp": levels}
                out.append(
                    (
                        f"prod.kalshi.json.orderbook.{token}",
                        {"type": "orderbook_snapshot", "sid": 1, "seq": i, "msg": msg},
                    )
                )
            else:
                msg = {
                    "market_ticker": market,
                    "side": rng.choice(("yes", "no")),
                    "price_dollars": f"0.{rng.randint(30, 44)}0",
                    "delta_fp": f"{rng.randint(-5, 20)}.00",
                    "ts_ms": 1767600000000 + i,
                }
                out.append(
                    (
                        f"prod.kalshi.json.orderbook.{token}",
                        {"type": "orderbook_delta", "sid": 1, "seq": i, "msg": msg},
                    )
                )
            deltas[market] += 1
        elif kind == 1:
            msg = {
                "market_ticker": market,
                "price_dollars": "0.4200",
                "yes_bid_dollars": "0.4100",
                "yes_ask_dollars": "0.4300",
                "volume_fp": f"{i}.00",
                "ts_ms": 1767600000000 + i,
            }
            out.append(
                (f"prod.kalshi.json.ticker.{token}", {"type": "ticker", "sid": 2, "msg": msg})
            )
        else:
            msg = {
                "market_ticker": market,
                "trade_id": str(i),
                "yes_price_dollars": "0.4200",
                "count_fp": "3.00",
                "taker_side": "yes",
                "ts_ms": 1767600000000 + i,
            }
            out.append((f"prod.kalshi.json.trade.{token}", {"type": "trade", "sid": 3, "msg": msg}))
    return out  # fmt: skip


def build_archive(root: Path, n: int) -> int:
    """Write n records with the archiver's writer; returns the number of files."""
    day_dir = root / "kalshi" / DAY
    day_dir.mkdir(parents=True)
    manifest = Manifest(feed="kalshi", date=DAY, rotation_interval="15m")
    messages = _messages(n)
    files = 0
    for start in range(0, n, PER_FILE):
        slot_start = T0 + files * SLOT_NS
        label = time.strftime("%H%M", time.gmtime(slot_start // 10**9))
        slot = SlotFile(day_dir, label, slot_start, slot_start + SLOT_NS, 6, FileOps())
        chunk = [
            FetchedMessage(subject, json.dumps(payload).encode(), start + i + 1, start + i + 1, 1, slot_start + i * 10_000, "")
            for i, (subject, payload) in enumerate(messages[start : start + PER_FILE])
        ]  # fmt: skip
        for i in range(0, len(chunk), 1000):
            slot.append(chunk[i : i + 1000])
        path = slot.finish()
        manifest.add_file(
            FileEntry.from_stats(
                path.name, slot_start, slot_start + SLOT_NS, slot.stats, path.stat().st_size
            ),
            slot.stats.tickers,
        )
        files += 1
    write_manifest(day_dir, manifest, FileOps())
    return files


def plain_read(root: Path) -> tuple[int, float]:
    start = time.perf_counter()
    count = 0
    for path in sorted((root / "kalshi" / DAY).glob("*.jsonl.gz")):
        with gzip.open(path, "rb") as f:
            for line in f:
                json.loads(line)
                count += 1
    return count, time.perf_counter() - start


def measure(n: int, tmp: Path) -> dict[str, float]:
    tmp.mkdir(parents=True, exist_ok=True)
    root = tmp / "archive"
    build_archive(root, n)
    records, read_s = plain_read(root)
    start = time.perf_counter()
    report = export_parquet(root, tmp / "parquet")
    export_s = time.perf_counter() - start
    assert report.rows["raw"] == records == n
    # One market's book at the end of the day: its snapshot and every delta after it.
    market = MARKETS[0]
    market_records = sum(1 for i in range(n) if i % len(MARKETS) == 0 and i % 4 in (0, 2))
    start = time.perf_counter()
    list(books_at(root, "kalshi", market, [T0 + 10**15]))
    book_s = time.perf_counter() - start
    return {
        "records": n,
        "read_rate": records / read_s,
        "export_rate": records / export_s,
        "book_records": market_records,
        "book_rate": market_records / book_s,
        "book_scan_rate": records / book_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ssmd-bench-archive-"))
    try:
        result = measure(args.records, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"plain read (gzip + json.loads): {result['read_rate']:,.0f} records/s")
    print(f"export to Parquet:              {result['export_rate']:,.0f} records/s")
    print(
        f"book rebuild (one market):      {result['book_rate']:,.0f} deltas/s ({result['book_scan_rate']:,.0f} records scanned/s)"
    )


if __name__ == "__main__":
    main()
