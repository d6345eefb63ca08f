"""Start-up recovery of a feed directory after any stop, clean or kill -9.

- every leftover `.partial` file is salvaged into a finished file with all its complete
  lines and listed in the manifest;
- every finished file the manifest does not list (a crash between rename and manifest
  write) is scanned and listed;
- stale temp files are removed;
- the archive's cursor, the highest stream sequence on disk, is returned so the consumer
  restarts right after it and nothing is archived twice; `resume_cursor` keeps it
  over a higher ack floor of the consumer, which is no proof of anything on disk.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from pathlib import Path

import attrs

from ssmd.archiver.files import (
    PARTIAL_SUFFIX,
    FileOps,
    parse_final_name,
    salvage,
    scan_stats,
)
from ssmd.archiver.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    ManifestCorrupt,
    load_manifest,
    write_manifest,
)
from ssmd.archiver.slots import label_to_start

log = logging.getLogger("ssmd.archiver.recovery")

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ArchiveLocked(Exception):
    pass


@attrs.frozen
class RecoveryReport:
    cursor: int | None
    salvaged: list[str]
    relisted: list[str]


def lock_feed_dir(feed_dir: Path) -> int:
    """Hold an exclusive lock so two archivers never write one feed directory."""
    feed_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(feed_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ArchiveLocked(f"{feed_dir} is in use by another archiver") from None
    return fd


def day_dirs(feed_dir: Path) -> list[Path]:
    if not feed_dir.is_dir():
        return []
    return sorted(p for p in feed_dir.iterdir() if p.is_dir() and _DAY.match(p.name))


def recover_feed(
    feed_dir: Path, feed: str, interval_s: int, interval_text: str, level: int, ops: FileOps
) -> RecoveryReport:
    salvaged: list[str] = []
    relisted: list[str] = []
    cursor: int | None = None
    for day_dir in day_dirs(feed_dir):
        for stale in day_dir.glob(".*.salvage"):
            ops.unlink(stale)
        for stale in day_dir.glob(".*.tmp"):
            ops.unlink(stale)
        try:
            manifest = load_manifest(day_dir)
        except ManifestCorrupt as exc:
            aside = day_dir / f"{MANIFEST_NAME}.corrupt-{int(time.time())}"
            log.error("%s; moved aside to %s and rebuilding from the files", exc, aside.name)
            ops.rename(day_dir / MANIFEST_NAME, aside)
            manifest = None
        if manifest is None:
            manifest = Manifest(feed=feed, date=day_dir.name, rotation_interval=interval_text)
        changed = False

        for partial in sorted(day_dir.glob("*" + PARTIAL_SUFFIX)):
            result = salvage(partial, level, ops)
            if result is None:
                log.info("removed empty leftover %s/%s", day_dir.name, partial.name)
                continue
            final, _stats = result
            salvaged.append(f"{day_dir.name}/{final.name}")
            log.warning(
                "salvaged %s/%s: %d complete records kept", day_dir.name, final.name, _stats.records
            )

        for final in sorted(day_dir.glob("*.jsonl.gz")):
            label = parse_final_name(final.name)
            if label is None or manifest.has_file(final.name):
                continue
            stats, reader = scan_stats(final)
            if not reader.complete:
                log.error(
                    "%s/%s is damaged (%s); listing its %d readable records",
                    day_dir.name,
                    final.name,
                    reader.error,
                    stats.records,
                )
            if stats.records == 0:
                continue
            start_ns = label_to_start(day_dir.name, label)
            entry = FileEntry.from_stats(
                final.name,
                start_ns,
                start_ns + interval_s * 1_000_000_000,
                stats,
                final.stat().st_size,
            )
            manifest.add_file(entry, stats.tickers)
            if f"{day_dir.name}/{final.name}" not in salvaged:
                relisted.append(f"{day_dir.name}/{final.name}")
            changed = True

        if changed:
            write_manifest(day_dir, manifest, ops)
        for f in manifest.files:
            if f.records and (cursor is None or f.nats_end_seq > cursor):
                cursor = f.nats_end_seq
    return RecoveryReport(cursor=cursor, salvaged=salvaged, relisted=relisted)


def resume_cursor(archived: int | None, ack_floor: int | None) -> int | None:
    """Where to resume: right after the archive's own cursor whenever there is one.

    The consumer's ack floor is not a durable position of the archive: nats-server sets
    a new consumer's floor just below its start sequence (or the stream's first) at
    once, and moves a narrow filter's floor past other subjects' messages. Skipping to
    a floor above the cursor could skip messages that never reached the disk, with no
    gap. Resuming at cursor + 1 instead re-takes only what is missing (other subjects
    are not delivered), and if the stream no longer holds cursor + 1 the fetcher records
    the jump as a gap, as for any purge. Only a feed directory with nothing archived
    (new, or moved aside) starts at the floor: the consumer is then the only position."""
    if archived is None:
        return ack_floor
    if ack_floor is not None and ack_floor > archived:
        log.info(
            "the consumer's ack floor (%d) is past the archive's end (%d): resuming after "
            "the archive, so nothing that missed the disk is skipped",
            ack_floor,
            archived,
        )
    return archived
