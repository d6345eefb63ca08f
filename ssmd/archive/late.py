"""Trade backfill records written after the day they describe.

A backfill record is published when its window is done (settled, and REST answered), so
a window just before midnight is recorded early the next day. The first
LATE_BACKFILL_FILES of the next day are where such a record can be: coverage reads them
for the day's hours, and `cat` / `Archive.records` for a range reaching the day's end.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from ssmd.archive.errors import ArchiveCorrupt, ArchiveError
from ssmd.archive.integrity import backfill_fields
from ssmd.archive.records import Record
from ssmd.archive.store import RecordFilter, day_manifest, file_lines, iter_lines
from ssmd.archiver.lines import PREFIX, read_prefix
from ssmd.archiver.manifest import Manifest
from ssmd.subjects import DISCONTINUITY_TYPE, split_subject

NS = 1_000_000_000
DAY_NS = 86400 * NS
# The next day's files (`HHMM` names) read for backfill records of this day's windows:
# one is written after its window settles and REST answers (at most 5 minutes), behind
# the windows queued before it.
LATE_BACKFILL_FILES = "0100"
# How `cat` marks a line it adds from the next day's files.
LATE_MARK = b',"_late":true'


def day_bounds(day: str) -> tuple[int, int]:
    """[start, end) of a UTC day, in ns."""
    start = calendar.timegm(time.strptime(day, "%Y-%m-%d")) * NS
    return start, start + DAY_NS


def following_day(day: str) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day_bounds(day)[1] // NS))


def next_day_pending(root: Path, feed: str, day: str, now_ns: int) -> bool:
    """Whether `day` is over but the next day has no finished file yet, so backfill
    records written after midnight about `day` cannot be looked for."""
    if now_ns < day_bounds(day)[1]:
        return False
    return not (root / feed / following_day(day) / "manifest.json").exists()


def _lines_for(path: Path, day: str) -> Iterator[bytes]:
    try:
        yield from file_lines(path, validate=True)
    except ArchiveCorrupt as exc:
        raise ArchiveCorrupt(
            f"read for {day}'s late backfill records ({day}'s own lines are complete): {exc}"
        ) from None


def late_backfills(root: Path, feed: str, day: str) -> Iterator[Record]:
    """The backfill records in the next day's first files (before LATE_BACKFILL_FILES),
    in stream order; whether their windows touch `day` is the caller's to judge."""
    next_day = following_day(day)
    try:
        manifest = day_manifest(root, feed, next_day)
    except ArchiveError as exc:
        raise ArchiveCorrupt(
            f"{next_day}, read for {day}'s late backfill records ({day}'s own lines are "
            f"complete): {exc}"
        ) from None
    if manifest is None:
        return
    for entry in manifest.files:
        # The manifest counts each file's backfill records: most files need no reading.
        if entry.name[:4] >= LATE_BACKFILL_FILES or not entry.discontinuities.get("backfill"):
            continue
        path = root / feed / next_day / entry.name
        for line in _lines_for(path, day):
            prefix = read_prefix(line)
            if prefix is None or not prefix[1].endswith(".backfill"):
                continue
            if split_subject(prefix[1])[0] != DISCONTINUITY_TYPE:
                continue
            yield Record(*prefix, line, str(path))


def _asked_window(body: Any) -> tuple[int, int] | None:
    """[start, end) in ns of what a backfill record's window asked for (from
    `requested_min_ts` when the ledger's horizon cut it), None if malformed."""
    fields = backfill_fields(body) if isinstance(body, dict) else None
    if fields is None:
        return None
    requested, low, high = fields
    start = min(low, requested)
    return start * NS, (max(start, high) + 1) * NS


def reaches_day_end(flt: RecordFilter, day: str) -> bool:
    """Whether `flt`'s range runs to the end of `day` (no end, or one at or after midnight):
    only such a range shows the backfill records written after it."""
    return flt.end_ns is None or flt.end_ns >= day_bounds(day)[1]


def late_backfills_in_range(root: Path, feed: str, day: str, flt: RecordFilter) -> Iterator[Record]:
    """Backfill records recorded after the day whose window overlaps `flt`'s range, when
    that range reaches the day's end (no end, or one at or after midnight). They pass
    `flt`'s type and ticker filters as the day's own discontinuity records do."""
    if not reaches_day_end(flt, day):
        return
    day_start, day_end = day_bounds(day)
    start = max(day_start, flt.start_ns) if flt.start_ns is not None else day_start
    kinds = attrs.evolve(flt, start_ns=None, end_ns=None)
    for record in late_backfills(root, feed, day):
        window = _asked_window(record.payload())
        if window is None or not (window[0] < day_end and window[1] > start):
            continue
        if kinds.matches(record.subject, record.recv_ns, record.line):
            yield record


def range_lines(
    root: Path,
    feed: str,
    day: str,
    manifest: Manifest,
    flt: RecordFilter | None = None,
    validate: bool = False,
) -> Iterator[tuple[bytes, bool]]:
    """(line, late) for what a range of `day` shows: its lines matching `flt`, in stream
    order, then (late=True) the backfill records written after it about it."""
    for line in iter_lines(root / feed / day, manifest, flt, validate):
        yield line, False
    for record in late_backfills_in_range(root, feed, day, flt or RecordFilter()):
        yield record.line, True


def mark_late(line: bytes) -> bytes:
    """The archive line with `"_late":true` after its prefix (`_seq`, `_subject`,
    `_recv_ns`, `_backfilled`): how `cat` shows a record added from the next day."""
    match = PREFIX.match(line)
    if match is None:
        return line
    return line[: match.end()] + LATE_MARK + line[match.end() :]
