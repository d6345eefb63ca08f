"""Books as of given times: the last snapshot before each, plus what followed it.

Records are applied in stream order (`_seq`) up to the last one whose `_recv_ns` is at
or before the time asked, so a retried message stored late still lands where the stream
put it. A record whose `_recv_ns` is later than the time waits until a record at or
before the time follows it, or until one `horizon` past the time shows none will.
ssmd's discontinuity records and the manifests' stream gaps are applied in the same
order: each makes the books it touches invalid until their next snapshot. An overflow
record is written only once the publisher's buffer drains, long after the drops: it
takes effect at its `first_recv_ns`, and no snapshot received before its `last_recv_ns`
makes a book valid again.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from ssmd.archive.books.base import MarketBooks, Venue
from ssmd.archive.books.kraken import KrakenVenue
from ssmd.archive.books.registry import venue_for
from ssmd.archive.integrity import (
    ConnectionTracker,
    Interruption,
    interruption,
    overflow_span,
    stream_gaps,
)
from ssmd.archive.records import Record
from ssmd.archive.store import day_manifest, days, file_lines, read_manifest
from ssmd.archive.times import utc_text
from ssmd.archiver.lines import read_prefix
from ssmd.subjects import DISCONTINUITY_TYPE, encode_token, split_subject

NS = 1_000_000_000
_SSMD = b".json.ssmd."
_OVERFLOW = b".json.ssmd.overflow"
DEFAULT_HORIZON_NS = 300 * NS
MAX_LOOKBACK_DAYS = 31


def day_of(ns: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ns // NS))


@attrs.frozen
class BookView:
    """A book as of `at_ns`, ready to print; `levels` is the venue's sides."""

    feed: str
    market: str
    asset: str | None
    at_ns: int
    valid: bool
    reason: str | None
    seq: int | None
    levels: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"feed": self.feed, "market": self.market}
        if self.asset is not None:
            out["asset_id"] = self.asset
        out.update(
            at=utc_text(self.at_ns),
            at_ns=self.at_ns,
            valid=self.valid,
            reason=self.reason,
            seq=self.seq,
        )
        out.update(self.levels)
        return out


Event = Record | Interruption


class _Walk:
    """Applies events to one market's books, holding back those received too late."""

    def __init__(self, venue: Venue, market: str) -> None:
        self.venue = venue
        self.books = MarketBooks(market)
        self.tracker = ConnectionTracker()
        self.pending: list[tuple[int | None, Event]] = []
        self.last_seq: int | None = None
        self.dropping: tuple[int, str] | None = None  # (last_recv_ns, reason) of an overflow

    def apply(self, event: Event) -> None:
        if isinstance(event, Interruption):
            span = overflow_span(event)
            if span is not None:
                self.dropping = (span[1], event.describe())
            if event.touches(self.books.market):
                self.books.invalidate(event.describe())
            return
        if event.type_token == DISCONTINUITY_TYPE:
            found = interruption(event, self.tracker)
            if found is not None and found.touches(self.books.market) and not found.trades_only:
                self.books.invalidate(found.describe())
            return
        self.venue.apply(self.books, event)
        self.last_seq = event.seq
        if self.dropping is not None and event.recv_ns is not None:
            if event.recv_ns <= self.dropping[0]:
                self.books.invalidate(self.dropping[1])
            else:
                self.dropping = None

    def offer(self, recv_ns: int | None, event: Event, target: int) -> None:
        if recv_ns is not None and recv_ns > target:
            self.pending.append((recv_ns, event))
            return
        self.flush()
        self.apply(event)

    def flush(self, upto: int | None = None) -> None:
        """Apply held-back events up to the last one received at or before `upto`
        (all of them when None)."""
        if upto is None:
            cut = len(self.pending)
        else:
            cut = 0
            for i, (recv, _event) in enumerate(self.pending):
                if recv is None or recv <= upto:
                    cut = i + 1
        for _recv, event in self.pending[:cut]:
            self.apply(event)
        del self.pending[:cut]


def _overflows(root: Path, feed: str, day: str) -> list[Interruption]:
    """The day's overflow records (only files holding ssmd records are read); none
    before the day's first file is finished."""
    manifest = day_manifest(root, feed, day)
    out: list[Interruption] = []
    for entry in manifest.files if manifest is not None else []:
        if not entry.records_by_type.get(DISCONTINUITY_TYPE):
            continue
        for line in file_lines(root / feed / day / entry.name):
            if _OVERFLOW not in line:
                continue
            record = Record.from_line(line, str(root / feed / day / entry.name))
            if record.subject.endswith(".overflow"):
                found = interruption(record, ConnectionTracker())
                if found is not None and overflow_span(found) is not None:
                    out.append(found)
    return out


def _events(
    root: Path, feed: str, day: str, market: str, venue: Venue, placed: set[float]
) -> Iterator[tuple[int | None, Event]]:
    """The day's events for `market` in stream order; each overflow (of this day or
    the next) is placed where its drops began, once (`placed` holds those placed)."""
    manifest = read_manifest(root, feed, day)
    gaps = sorted(stream_gaps(manifest.gaps), key=lambda g: g.seq)
    overflows: list[Interruption] = []
    for d in days(root, feed, start=day)[:2]:
        overflows += [o for o in _overflows(root, feed, d) if o.seq not in placed]
    overflows.sort(key=lambda o: o.at_ns or 0)
    day_end = _day_start(day) + 86400 * NS
    day_dir = root / feed / day
    last_recv: int | None = None
    token = encode_token(market).encode()
    for entry in manifest.files:
        for line in file_lines(day_dir / entry.name):
            if token not in line and _SSMD not in line:
                continue
            prefix = read_prefix(line)
            if prefix is None:
                continue
            seq, subject, recv = prefix
            type_token, key = split_subject(subject)
            if type_token != DISCONTINUITY_TYPE and not (
                key == market and type_token in venue.book_types
            ):
                continue
            if type_token == DISCONTINUITY_TYPE and subject.endswith(".overflow"):
                continue  # placed at its first_recv_ns
            while gaps and gaps[0].seq < seq:
                gap = gaps.pop(0)
                yield gap.at_ns, gap
            while overflows and recv is not None and (overflows[0].at_ns or 0) <= recv:
                placed.add(overflows[0].seq)
                yield overflows[0].at_ns, overflows.pop(0)
            last_recv = recv if recv is not None else last_recv
            yield recv, Record(seq, subject, recv, line, str(day_dir / entry.name))
    for gap in gaps:
        yield gap.at_ns if gap.at_ns is not None else last_recv, gap
    for overflow in overflows:
        if (overflow.at_ns or 0) < day_end:
            placed.add(overflow.seq)
            yield overflow.at_ns, overflow


def _day_start(day: str) -> int:
    return calendar.timegm(time.strptime(day, "%Y-%m-%d")) * NS


def _start_day(root: Path, feed: str, market: str, venue: Venue, first: int) -> str | None:
    """The latest day at or before `first` holding a snapshot of the market before it.
    Days whose manifest does not list the market are not read, and the search reads at
    most MAX_LOOKBACK_DAYS days holding it (beyond: the book has no snapshot)."""
    candidates = days(root, feed, end=day_of(first))
    searched = 0
    for day in reversed(candidates):
        manifest = read_manifest(root, feed, day)
        if manifest.tickers and market not in manifest.tickers:
            continue
        searched += 1
        if searched > MAX_LOOKBACK_DAYS:
            break
        for entry in manifest.files:
            for line in file_lines(root / feed / day / entry.name):
                if not venue.is_snapshot_line(line):
                    continue
                prefix = read_prefix(line)
                if prefix is None or (prefix[2] is not None and prefix[2] > first):
                    continue
                type_token, key = split_subject(prefix[1])
                if (
                    key == market
                    and type_token in venue.book_types
                    and venue.is_snapshot_line(line)
                ):
                    return day
    return candidates[-1] if candidates else None


def books_at(
    root: Path,
    feed: str,
    market: str,
    times: list[int],
    *,
    depth: int | None = None,
    asset: str | None = None,
    horizon_ns: int = DEFAULT_HORIZON_NS,
    subscribed_depth: int | None = None,
) -> Iterator[BookView]:
    """One view per book of `market` (per token on Polymarket) at each of `times`.
    `subscribed_depth`: Kraken's `connector.depth`, without which only the 10
    checksummed levels are shown."""
    venue = venue_for(feed)
    if isinstance(venue, KrakenVenue):
        venue = KrakenVenue(subscribed_depth)
    targets = sorted(times)
    if not targets:
        return
    start = _start_day(root, feed, market, venue, targets[0])
    walk = _Walk(venue, market)
    placed: set[float] = set()
    if start is not None:
        for day in days(root, feed, start=start, end=day_of(targets[-1] + horizon_ns)):
            for recv, event in _events(root, feed, day, market, venue, placed):
                while targets and recv is not None and recv > targets[0] + horizon_ns:
                    yield from _views(walk, feed, targets.pop(0), depth, asset)
                    if targets:
                        walk.flush(targets[0])
                if not targets:
                    return
                walk.offer(recv, event, targets[0])
    while targets:
        walk.flush(targets[0])
        yield from _views(walk, feed, targets.pop(0), depth, asset)


def _views(
    walk: _Walk, feed: str, at: int, depth: int | None, asset: str | None
) -> Iterator[BookView]:
    books = walk.books.books
    if not books:
        books = {asset: walk.books.book(asset)} if asset is not None else {None: walk.books.book()}
    for key, book in sorted(books.items(), key=lambda kv: kv[0] or ""):
        if asset is not None and key != asset:
            continue
        yield BookView(
            feed,
            walk.books.market,
            key,
            at,
            book.valid,
            book.reason,
            book.seq,
            walk.venue.levels_json(book, depth),
        )
