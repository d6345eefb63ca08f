"""`ssmd data`: list, read, verify and summarise the local archive."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ssmd.archive.errors import ArchiveCorrupt, ArchiveError
from ssmd.archive.late import (
    following_day,
    mark_late,
    next_day_pending,
    range_lines,
    reaches_day_end,
)
from ssmd.archive.store import read_manifest
from ssmd.archive.times import iso_ms, parse_time
from ssmd.archiver.lines import read_prefix, strip_meta
from ssmd.archiver.manifest import ManifestCorrupt, load_manifest
from ssmd.cli.research import add_research_commands
from ssmd.config import ConfigError, load_config
from ssmd.reader import RecordFilter, days, feeds, iter_lines, verify_day
from ssmd.subjects import split_subject

EXIT_INCONSISTENT = 1
EXIT_USAGE = 2


class DataError(Exception):
    pass


def _root(args: argparse.Namespace) -> Path:
    if args.path:
        return Path(args.path)
    if args.config:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise DataError(f"config error: {exc}") from None
        if config.storage is not None:
            return Path(config.storage.path)
        raise DataError(f"{args.config}: storage.path is not set")
    env = os.environ.get("SSMD_DATA_PATH")
    if env:
        return Path(env)
    raise DataError("no archive path: pass --path, -c CONFIG, or set SSMD_DATA_PATH")


def _optional_root(args: argparse.Namespace) -> Path | None:
    try:
        return _root(args)
    except DataError:
        return None


def cmd_ls(args: argparse.Namespace) -> int:
    root = _root(args)
    rows: list[dict[str, Any]] = []
    for feed in [args.feed] if args.feed else feeds(root):
        for day in days(root, feed, args.from_, args.to):
            try:
                manifest = load_manifest(root / feed / day)
            except ManifestCorrupt as exc:
                print(f"ssmd: {exc}", file=sys.stderr)
                continue
            if manifest is None:
                continue
            rows.append(
                {
                    "feed": feed,
                    "date": day,
                    "files": len(manifest.files),
                    "records": sum(f.records for f in manifest.files),
                    "tickers": len(manifest.tickers),
                    "bytes": sum(f.compressed_bytes for f in manifest.files),
                    "gaps": len(manifest.gaps),
                    "missing": sum(g.missing_count for g in manifest.gaps),
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'feed':<12}{'date':<12}{'files':>6}{'records':>12}{'tickers':>9}{'size':>11}{'gaps':>6}"
    )
    for r in rows:
        print(
            f"{r['feed']:<12}{r['date']:<12}{r['files']:>6}{r['records']:>12}{r['tickers']:>9}"
            f"{_size(r['bytes']):>11}{r['gaps']:>6}"
        )
    if not rows:
        print(f"(no archived days under {root})", file=sys.stderr)
    return 0


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def cmd_manifest(args: argparse.Namespace) -> int:
    root = _root(args)
    manifest = read_manifest(root, args.feed, args.date)
    print(json.dumps(manifest.to_json(), indent=2))
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    root = _root(args)
    manifest = read_manifest(root, args.feed, args.date)
    flt = RecordFilter(
        type_token=args.type,
        ticker=args.ticker,
        start_ns=parse_time(args.start, args.date) if args.start else None,
        end_ns=parse_time(args.end, args.date) if args.end else None,
    )
    out = sys.stdout.buffer
    n = 0
    try:
        for line, late in range_lines(root, args.feed, args.date, manifest, flt, validate=True):
            if args.limit is not None and n >= args.limit:
                break
            line = mark_late(line) if late else line
            if args.strip_meta:
                value = strip_meta(json.loads(line))
                if isinstance(value, bytes):
                    value = value.decode("utf-8", "backslashreplace")
                out.write(
                    json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
                )
            else:
                out.write(line)
            n += 1
        out.flush()
    except BrokenPipeError:
        # The reader (e.g. `head`) has gone: not an error. Keep the exit flush quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    if reaches_day_end(flt, args.date) and next_day_pending(
        root, args.feed, args.date, time.time_ns()
    ):
        print(
            f"ssmd: note: {following_day(args.date)} has no finished file yet, so backfill "
            f"records written after midnight about {args.date} (if any) are not shown",
            file=sys.stderr,
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    root = _root(args)
    targets = [args.feed] if args.feed else feeds(root)
    bad = 0
    checked = 0
    for feed in targets:
        selected = [args.date] if args.date else days(root, feed)
        if args.date and not (root / feed / args.date).is_dir():
            print(f"FAIL {feed} {args.date}: no such day under {root}")
            bad += 1
            continue
        last_seq: int | None = None
        for day in selected:
            report = verify_day(root, feed, day, last_seq)
            last_seq = report.last_seq
            checked += 1
            status = "ok  " if report.ok else "FAIL"
            print(f"{status} {feed} {day}: {report.files} files, {report.records} records")
            for problem in report.problems:
                print(f"     problem: {problem}")
            for gap in report.gaps:
                print(f"     gap: {gap}")
            if report.discontinuities:
                kinds = ", ".join(f"{k} {v}" for k, v in sorted(report.discontinuities.items()))
                print(f"     discontinuities: {kinds}")
            for name in report.in_progress:
                print(f"     in progress: {name}")
            bad += 0 if report.ok else 1
    if checked == 0 and bad == 0:
        print(f"nothing to verify under {root}")
        return EXIT_INCONSISTENT
    print(f"{checked} day(s) checked, {bad} inconsistent")
    return 0 if bad == 0 else EXIT_INCONSISTENT


def cmd_stats(args: argparse.Namespace) -> int:
    root = _root(args)
    manifest = read_manifest(root, args.feed, args.date)
    by_type: Counter[str] = Counter()
    by_ticker: Counter[str] = Counter()
    first_ns: int | None = None
    last_ns: int | None = None
    total = 0
    for line in iter_lines(root / args.feed / args.date, manifest):
        prefix = read_prefix(line)
        if prefix is None:
            continue
        total += 1
        type_token, ticker = split_subject(prefix[1])
        by_type[type_token] += 1
        if ticker is not None:
            by_ticker[ticker] += 1
        recv = prefix[2]
        if recv is not None:
            first_ns = recv if first_ns is None else min(first_ns, recv)
            last_ns = recv if last_ns is None else max(last_ns, recv)
    print(f"{args.feed} {args.date}: {total} messages, {len(by_ticker)} tickers")
    if first_ns is not None and last_ns is not None:
        print(f"received {iso_ms(first_ns)} .. {iso_ms(last_ns)}")
    print("by type:")
    for kind, n in by_type.most_common():
        print(f"  {kind:<24}{n:>12}")
    print(f"top {args.top} tickers:")
    for ticker, n in by_ticker.most_common(args.top):
        print(f"  {ticker:<40}{n:>12}")
    return 0


def add_data_commands(sub: Any) -> None:
    data = sub.add_parser(
        "data",
        help="list, read and verify the local archive",
        description="Read the archive under --path (default: storage.path of -c CONFIG, or $SSMD_DATA_PATH).",
    )
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--path", help="archive root (the config's storage.path)")
        p.add_argument("-c", "--config", help="take the archive root from this config")

    ls = data_sub.add_parser(
        "ls", help="one row per feed and day: files, records, tickers, size, gaps"
    )
    common(ls)
    ls.add_argument("--feed")
    ls.add_argument("--from", dest="from_", metavar="DATE", help="first day, YYYY-MM-DD")
    ls.add_argument("--to", metavar="DATE", help="last day, YYYY-MM-DD")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_ls)

    manifest = data_sub.add_parser("manifest", help="print a day's manifest.json")
    common(manifest)
    manifest.add_argument("feed", help="feed name, e.g. kalshi")
    manifest.add_argument("date", help="day, YYYY-MM-DD (UTC)")
    manifest.set_defaults(func=cmd_manifest)

    cat = data_sub.add_parser(
        "cat",
        help="stream a day's records as JSONL, in archive order",
        description="Filters read each line's prefix only; the payload is not parsed. "
        "Times filter on the connector's receive time (_recv_ns). A range reaching the "
        "day's end is followed by the trade backfill records written early the next day "
        'whose window overlaps it, marked "_late":true.',
    )
    common(cat)
    cat.add_argument("feed", help="feed name, e.g. kalshi")
    cat.add_argument("date", help="day, YYYY-MM-DD (UTC)")
    cat.add_argument("--ticker", help="market ticker, as the exchange spells it (dots and all)")
    cat.add_argument(
        "--type", help="type token: ticker, trade, orderbook, lifecycle, ssmd, unrouted, ..."
    )
    cat.add_argument("--start", metavar="TIME", help="HH:MM[:SS], ISO 8601 UTC or epoch seconds")
    cat.add_argument("--end", metavar="TIME", help="exclusive end, same forms as --start")
    cat.add_argument("--limit", type=int, metavar="N", help="stop after N records")
    cat.add_argument("--strip-meta", action="store_true", help="print the original payloads")
    cat.set_defaults(func=cmd_cat)

    verify = data_sub.add_parser(
        "verify",
        help="check files against manifests (exit 1 with a report when inconsistent)",
        description="Every file decompresses completely; records and sequence ranges match the "
        "manifest; no sequence appears twice; every file on disk is in the manifest. Lists gaps "
        "and discontinuity records.",
    )
    common(verify)
    verify.add_argument("feed", nargs="?", help="only this feed (default: all)")
    verify.add_argument("date", nargs="?", help="only this day, YYYY-MM-DD")
    verify.set_defaults(func=cmd_verify)

    stats = data_sub.add_parser(
        "stats", help="messages per type and per ticker, and the time range"
    )
    common(stats)
    stats.add_argument("feed", help="feed name, e.g. kalshi")
    stats.add_argument("date", help="day, YYYY-MM-DD (UTC)")
    stats.add_argument("--top", type=int, default=10, metavar="N", help="tickers to list (10)")
    stats.set_defaults(func=cmd_stats)

    add_research_commands(data_sub, common)


def run_data_command(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "research", None) is not None:
            root = _optional_root(args) if getattr(args, "optional_root", False) else _root(args)
            code: int = args.research(args, root)
        else:
            code = args.func(args)
        return code
    except DataError as exc:
        print(f"ssmd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ArchiveCorrupt as exc:
        sys.stdout.flush()
        print(f"ssmd: corrupt archive: {exc}", file=sys.stderr)
        return EXIT_INCONSISTENT
    except ArchiveError as exc:
        print(f"ssmd: {exc}", file=sys.stderr)
        return EXIT_USAGE
