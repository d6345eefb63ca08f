"""`ssmd data book|export|query|replay|coverage`: the archive as a researcher reads it."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import trio

from ssmd.archive.books.rebuild import books_at
from ssmd.archive.coverage import coverage
from ssmd.archive.errors import ArchiveError
from ssmd.archive.integrity import stream_gaps
from ssmd.archive.records import Record
from ssmd.archive.replay import nats_sink, replay
from ssmd.archive.store import RecordFilter, iter_lines, read_manifest
from ssmd.archive.times import parse_interval, parse_time
from ssmd.archiver.manifest import Manifest
from ssmd.config import ConfigError, load_config
from ssmd.feeds.kraken_book import DEPTHS
from ssmd.nats.bridge import open_bridge
from ssmd.nats.types import NatsUnavailable

RootOf = Callable[[argparse.Namespace], Path]
MAX_STEPS = 1_000_000
KRAKEN_DEFAULT_DEPTH = 10  # ssmd.feeds.kraken.DEFAULT_DEPTH


def cmd_book(args: argparse.Namespace, root: Path) -> int:
    if args.every:
        if not (args.start and args.end):
            raise ArchiveError("--every needs --start and --end")
        step = parse_interval(args.every)
        start, end = parse_time(args.start), parse_time(args.end)
        if end < start or (end - start) // step > MAX_STEPS:
            raise ArchiveError(f"--start..--end must be ordered and at most {MAX_STEPS} steps")
        times = list(range(start, end + 1, step))
    elif args.at:
        times = [parse_time(args.at)]
    else:
        raise ArchiveError("give --at TIME, or --every INTERVAL --start T1 --end T2")
    as_lines = args.json or bool(args.every)
    views = books_at(
        root,
        args.feed,
        args.market,
        times,
        depth=args.depth,
        asset=args.asset,
        subscribed_depth=args.book_depth or _config_depth(args),
    )
    for view in views:
        data = view.to_json()
        if as_lines:
            print(json.dumps(data, separators=(",", ":")), flush=False)
        else:
            _print_book(data)
    sys.stdout.flush()
    return 0


def _config_depth(args: argparse.Namespace) -> int | None:
    """Kraken's subscribed depth from -c CONFIG: the connector of this feed."""
    if not args.config:
        return None
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise ArchiveError(f"config error: {exc}") from None
    for connector in config.connectors:
        if connector.feed == args.feed and connector.venue == "kraken":
            return connector.depth or KRAKEN_DEFAULT_DEPTH  # the connector's default
    return None


def _print_book(data: dict[str, Any]) -> None:
    status = "valid" if data["valid"] else f"INVALID: {data['reason']}"
    asset = f" asset {data['asset_id']}" if "asset_id" in data else ""
    print(f"{data['feed']} {data['market']}{asset} at {data['at']} (seq {data['seq']}): {status}")
    sides = [k for k in ("yes", "no", "bids", "asks") if k in data]
    for side in sides:
        print(f"  {side}:")
        for price, qty in data[side]:
            print(f"    {price:>14} {qty:>16}")
        if not data[side]:
            print("    (empty)")


def cmd_export(args: argparse.Namespace, root: Path) -> int:
    from ssmd.archive.export import export_parquet

    report = export_parquet(root, Path(args.out), args.feed, args.date)
    for slot in report.written:
        print(f"exported {slot}")
    for slot, by_type in report.untyped.items():
        kinds = ", ".join(f"{t} {n}" for t, n in sorted(by_type.items()))
        print(f"ssmd: note: {slot}: not typed (kept in raw only): {kinds}", file=sys.stderr)
    for day in report.skipped:
        print(
            f"ssmd: note: skipped {day}: no manifest yet (first slot being written)",
            file=sys.stderr,
        )
    rows = ", ".join(f"{t} {n}" for t, n in sorted(report.rows.items()) if n)
    untyped = sum(n for counts in report.untyped.values() for n in counts.values())
    print(
        f"{len(report.written)} slot(s) exported, {report.already} already done"
        + (f"; rows: {rows}" if rows else "")
        + (f"; {untyped} record(s) not typed" if untyped else "")
    )
    return 0


def cmd_query(args: argparse.Namespace, root: Path | None) -> int:
    parquet = Path(args.parquet) if args.parquet else None
    from ssmd.archive.query import run_query

    columns, rows = run_query(args.sql, parquet, root)
    out = sys.stdout
    if args.json:
        for row in rows:
            out.write(json.dumps(dict(zip(columns, row, strict=True)), default=str) + "\n")
    elif args.csv:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        out.write(format_table(columns, rows))
    return 0


def format_table(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    cells = [["NULL" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def fmt(r: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |"

    body = [line, fmt(columns), line, *map(fmt, cells), line]
    return "\n".join(body) + f"\n({len(rows)} row{'s' if len(rows) != 1 else ''})\n"


def cmd_replay(args: argparse.Namespace, root: Path) -> int:
    manifest = read_manifest(root, args.feed, args.date)
    flt = RecordFilter(
        type_token=args.type,
        ticker=args.ticker,
        start_ns=parse_time(args.start, args.date) if args.start else None,
        end_ns=parse_time(args.end, args.date) if args.end else None,
    )
    day_dir = root / args.feed / args.date
    records = (Record.from_line(line) for line in iter_lines(day_dir, manifest, flt, validate=True))
    speed = None if args.max else args.speed
    if args.to:
        trio.run(_replay_to_nats, records, args.to, args.prefix, speed)
        _report_stream_gaps(manifest)
        return 0
    out = sys.stdout.buffer

    async def write(batch: Sequence[Record]) -> None:
        out.write(b"".join(r.line for r in batch))
        out.flush()

    try:
        trio.run(replay, records, write, speed)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    _report_stream_gaps(manifest)
    return 0


def _report_stream_gaps(manifest: Manifest) -> None:
    """Stream gaps are in the manifest, not in the records: say so where a user looks."""
    for gap in stream_gaps(manifest.gaps):
        print(f"ssmd: note: {gap.describe()} (missing from the replay)", file=sys.stderr)


async def _replay_to_nats(
    records: Iterable[Record], url: str, prefix: str | None, speed: float | None
) -> None:
    try:
        async with open_bridge([u.strip() for u in url.split(",")], name="ssmd-replay") as bridge:
            sent = await replay(records, nats_sink(bridge, prefix), speed)
    except NatsUnavailable as exc:
        raise ArchiveError(f"replay to {url}: {exc}") from None
    print(
        f"replayed {sent} record(s) to {url}" + (f" under {prefix}." if prefix else ""),
        file=sys.stderr,
    )


def cmd_coverage(args: argparse.Namespace, root: Path) -> int:
    result = coverage(root, args.feed, args.date, by_market=args.by == "market")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['feed']} {result['date']}")
    for row in result["hours"]:
        print(f"  {row['hour']}  {row['records']:>10}  {row['status']}")
        for reason in row["reasons"]:
            print(f"      {_reason_text(reason)}")
    for row in result.get("markets", []):
        if row["status"] == "degraded":
            print(f"  {row['hour']}  {row['market']:<40} {row['records']:>8}  degraded")
            for reason in row["reasons"]:
                print(f"      {_reason_text(reason)}")
    return 0


def _reason_text(reason: dict[str, Any]) -> str:
    duration = f" for {reason['duration_s']:g} s" if "duration_s" in reason else ""
    return f"{reason['kind']}{duration} at {reason['at']}: {reason['detail']}"


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}")
    return value


def add_research_commands(data_sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    book = data_sub.add_parser(
        "book",
        help="the L2 order book of a market as of a time, rebuilt from the archive",
        description="The last snapshot before TIME plus the updates after it, applied in "
        "stream order up to the last record received at or before TIME. A book touched by a "
        "gap, disconnect, resubscribe, overflow or stream gap since its snapshot is "
        '"valid": false with the reason.',
    )
    common(book)
    book.add_argument("feed", help="feed name, e.g. kalshi, polymarket, kraken")
    book.add_argument(
        "market", help="Kalshi ticker, Polymarket condition id, Kraken symbol (BTC/USD)"
    )
    book.add_argument(
        "--at", metavar="TIME", help="ISO 8601 UTC, or epoch s (<=11 digits), ms (13), us (16), ns"
    )
    book.add_argument("--depth", type=int, metavar="N", help="best N levels per side")
    book.add_argument("--asset", metavar="TOKEN_ID", help="Polymarket: only this outcome token")
    book.add_argument(
        "--book-depth",
        type=int,
        choices=DEPTHS,
        metavar="N",
        help="Kraken: the subscribed depth (connector.depth; read from -c CONFIG when given). "
        "Without it only the 10 checksummed levels are shown",
    )
    book.add_argument("--every", metavar="INTERVAL", help="one book per step (e.g. 1s, 5m)")
    book.add_argument("--start", metavar="TIME", help="first step, with --every")
    book.add_argument("--end", metavar="TIME", help="last step (inclusive), with --every")
    book.add_argument("--json", action="store_true", help="one JSON object per book")
    book.set_defaults(research=cmd_book)

    export = data_sub.add_parser(
        "export",
        help="typed Parquet tables of finished slots (incremental, idempotent)",
        description="Tables trades, tickers, book_snapshots, book_deltas, lifecycle, markets, "
        "discontinuities and raw (every record) at OUT/{table}/feed={feed}/date={date}/{HHMM}.parquet.",
    )
    common(export)
    export.add_argument("--format", choices=["parquet"], default="parquet")
    export.add_argument("--out", required=True, metavar="DIR", help="where the tables go")
    export.add_argument("feed", nargs="?", help="only this feed")
    export.add_argument("date", nargs="?", help="only this day, YYYY-MM-DD")
    export.set_defaults(research=cmd_export)

    query = data_sub.add_parser(
        "query",
        help="SQL (DuckDB) over the exported tables and the raw JSONL",
        description="Views: each exported table by name (hive-partitioned: feed, date), and "
        "jsonl over the archive's finished files (json is the whole line).",
    )
    common(query)
    query.add_argument("sql", help="the SQL to run")
    query.add_argument("--parquet", metavar="DIR", help="the export directory")
    fmt = query.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV with a header")
    fmt.add_argument("--json", action="store_true", help="one JSON object per row")
    query.set_defaults(research=cmd_query, optional_root=True)

    rp = data_sub.add_parser(
        "replay",
        help="a day's records in stream order, paced by receive time, to stdout or NATS",
    )
    common(rp)
    rp.add_argument("feed")
    rp.add_argument("date", help="day, YYYY-MM-DD (UTC)")
    rp.add_argument("--start", metavar="TIME")
    rp.add_argument("--end", metavar="TIME", help="exclusive")
    rp.add_argument("--ticker")
    rp.add_argument("--type")
    pace = rp.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed", type=_positive, default=1.0, metavar="N", help="N times real time (1)"
    )
    pace.add_argument("--max", action="store_true", help="as fast as possible")
    rp.add_argument("--to", metavar="NATS_URL", help="republish on the original subjects")
    rp.add_argument("--prefix", metavar="P", help="with --to: publish under P.{subject}")
    rp.set_defaults(research=cmd_replay)

    cov = data_sub.add_parser(
        "coverage", help="per hour (and market): records, complete or degraded and why"
    )
    common(cov)
    cov.add_argument("feed")
    cov.add_argument("date", help="day, YYYY-MM-DD (UTC)")
    cov.add_argument("--by", choices=["hour", "market"], default="hour")
    cov.add_argument("--json", action="store_true")
    cov.set_defaults(research=cmd_coverage)
