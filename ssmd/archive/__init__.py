"""Reading the archive back, for notebooks and for `ssmd data`.

import ssmd.archive
archive = ssmd.archive.open("/var/lib/ssmd/archive")
for record in archive.records("kalshi", "2026-01-05", ticker="KXBTCD-26MAR1213-T69499.99"):
    print(record.seq, record.recv_ns, record.payload())
book = archive.book("kalshi", "KXBTCD-26MAR1213-T69499.99", at="2026-01-05T12:00:00Z")
archive.export_parquet("/tmp/ssmd-parquet")
con = archive.duckdb("/tmp/ssmd-parquet")     # views: trades, ..., raw, jsonl
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssmd.archive.books.rebuild import BookView, books_at
from ssmd.archive.coverage import coverage
from ssmd.archive.errors import ArchiveCorrupt, ArchiveError
from ssmd.archive.late import range_lines
from ssmd.archive.records import Record
from ssmd.archive.store import RecordFilter, days, feeds, iter_lines, read_manifest
from ssmd.archive.times import parse_time
from ssmd.archiver.manifest import Manifest

if TYPE_CHECKING:  # pyarrow and duckdb load only when exporting or querying
    import duckdb

    from ssmd.archive.export import ExportReport

__all__ = [
    "Archive",
    "ArchiveCorrupt",
    "ArchiveError",
    "BookView",
    "Record",
    "RecordFilter",
    "open",
]

Time = int | str | dt.datetime


def to_ns(value: Time, day: str | None = None) -> int:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp()) * 1_000_000_000 + value.microsecond * 1000
    if isinstance(value, int):
        return value
    return parse_time(value, day)


class Archive:
    """One archive root (`storage.path`): `{root}/{feed}/{YYYY-MM-DD}/`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def feeds(self) -> list[str]:
        return feeds(self.root)

    def days(self, feed: str) -> list[str]:
        return days(self.root, feed)

    def manifest(self, feed: str, day: str) -> Manifest:
        return read_manifest(self.root, feed, day)

    def records(
        self,
        feed: str,
        day: str | None = None,
        *,
        ticker: str | None = None,
        type: str | None = None,
        start: Time | None = None,
        end: Time | None = None,
    ) -> Iterator[Record]:
        """Records in stream order, filtered as `ssmd data cat` filters (all days when
        `day` is None); raises ArchiveCorrupt naming a damaged file. With `day`, a range
        reaching the day's end is followed, as in `cat`, by the trade backfill records
        written early the next day whose window overlaps it (`record.late` True)."""
        flt = RecordFilter(
            type_token=type,
            ticker=ticker,
            start_ns=to_ns(start, day) if start is not None else None,
            end_ns=to_ns(end, day) if end is not None else None,
        )
        if day:
            for line, late in range_lines(self.root, feed, day, self.manifest(feed, day), flt):
                yield Record.from_line(line, late=late)
            return
        for d in self.days(feed):
            for line in iter_lines(self.root / feed / d, self.manifest(feed, d), flt):
                yield Record.from_line(line)

    def book(
        self,
        feed: str,
        market: str,
        at: Time,
        *,
        depth: int | None = None,
        asset: str | None = None,
        subscribed_depth: int | None = None,
    ) -> BookView:
        """The book as of `at` (the first token's on Polymarket unless `asset`).
        `subscribed_depth`: Kraken's connector.depth (else 10 checksummed levels)."""
        return next(
            books_at(
                self.root,
                feed,
                market,
                [to_ns(at)],
                depth=depth,
                asset=asset,
                subscribed_depth=subscribed_depth,
            )
        )

    def books(
        self,
        feed: str,
        market: str,
        times: list[Time],
        *,
        depth: int | None = None,
        asset: str | None = None,
        subscribed_depth: int | None = None,
    ) -> Iterator[BookView]:
        return books_at(
            self.root,
            feed,
            market,
            [to_ns(t) for t in times],
            depth=depth,
            asset=asset,
            subscribed_depth=subscribed_depth,
        )

    def coverage(self, feed: str, day: str, by_market: bool = False) -> dict[str, Any]:
        return coverage(self.root, feed, day, by_market)

    def export_parquet(
        self, out: str | Path, feed: str | None = None, day: str | None = None
    ) -> ExportReport:
        from ssmd.archive.export import export_parquet

        return export_parquet(self.root, Path(out), feed, day)

    def duckdb(self, parquet: str | Path | None = None) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with the exported tables and `jsonl` as views."""
        from ssmd.archive.query import connect

        return connect(Path(parquet) if parquet is not None else None, self.root)


def open(root: str | Path) -> Archive:
    return Archive(root)
