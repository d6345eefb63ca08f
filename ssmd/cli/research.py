"""`ssmd data book|export|query|replay|coverage`: the archive as a researcher reads it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssmd.archive.books.rebuild import books_at
from ssmd.archive.errors import ArchiveError
from ssmd.archive.times import parse_interval, parse_time

RootOf = Callable[[argparse.Namespace], Path]
MAX_STEPS = 1_000_000


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
    for view in books_at(root, args.feed, args.market, times, depth=args.depth, asset=args.asset):
        data = view.to_json()
        if as_lines:
            print(json.dumps(data, separators=(",", ":")), flush=False)
        else:
            _print_book(data)
    sys.stdout.flush()
    return 0


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
    book.add_argument("--at", metavar="TIME", help="ISO 8601 UTC or integer nanoseconds")
    book.add_argument("--depth", type=int, metavar="N", help="best N levels per side")
    book.add_argument("--asset", metavar="TOKEN_ID", help="Polymarket: only this outcome token")
    book.add_argument("--every", metavar="INTERVAL", help="one book per step (e.g. 1s, 5m)")
    book.add_argument("--start", metavar="TIME", help="first step, with --every")
    book.add_argument("--end", metavar="TIME", help="last step (inclusive), with --every")
    book.add_argument("--json", action="store_true", help="one JSON object per book")
    book.set_defaults(research=cmd_book)
