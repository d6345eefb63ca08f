"""Opening an archive: feeds, days, manifests and the lines of finished files.

Filters on ticker, type and receive time use each line's fixed prefix (`_seq`,
`_subject`, `_recv_ns`), so they never parse the payload. A truncated or corrupt file
raises `ArchiveCorrupt` naming it, after the complete lines before the damage.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import attrs
import msgspec

from ssmd.archive.errors import ArchiveCorrupt, ArchiveError
from ssmd.archive.integrity import ConnectionTracker, interruption
from ssmd.archive.records import Record
from ssmd.archiver.files import GzipLines
from ssmd.archiver.lines import read_prefix
from ssmd.archiver.manifest import FileEntry, Manifest, ManifestCorrupt, load_manifest
from ssmd.archiver.recovery import day_dirs
from ssmd.subjects import DISCONTINUITY_TYPE, split_subject


def feeds(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def days(root: Path, feed: str, start: str | None = None, end: str | None = None) -> list[str]:
    names = [p.name for p in day_dirs(root / feed)]
    return [d for d in names if (start is None or d >= start) and (end is None or d <= end)]


@attrs.frozen
class RecordFilter:
    """What `ssmd data cat` filters on: type token, ticker, receive time [start, end).

    ssmd's discontinuity records pass the type and ticker filters whenever they touch
    the ticker (or name no market): a filtered stream still shows its interruptions."""

    type_token: str | None = None
    ticker: str | None = None
    start_ns: int | None = None
    end_ns: int | None = None

    def matches(self, subject: str, recv_ns: int | None, line: bytes | None = None) -> bool:
        if self.type_token is not None or self.ticker is not None:
            type_token, ticker = split_subject(subject)
            if type_token == DISCONTINUITY_TYPE:
                if not self._touches(subject, recv_ns, line):
                    return False
            elif (self.type_token is not None and type_token != self.type_token) or (
                self.ticker is not None and ticker != self.ticker
            ):
                return False
        if self.start_ns is not None and (recv_ns is None or recv_ns < self.start_ns):
            return False
        return not (self.end_ns is not None and (recv_ns is None or recv_ns >= self.end_ns))

    def _touches(self, subject: str, recv_ns: int | None, line: bytes | None) -> bool:
        if self.ticker is None or line is None:
            return True
        found = interruption(Record(0, subject, recv_ns, line), ConnectionTracker())
        return found is None or found.touches(self.ticker)


def day_manifest(root: Path, feed: str, day: str) -> Manifest | None:
    """The day's manifest, None before its first file is finished; ArchiveError when
    it is unreadable."""
    try:
        return load_manifest(root / feed / day)
    except ManifestCorrupt as exc:
        raise ArchiveError(str(exc)) from None


def read_manifest(root: Path, feed: str, day: str) -> Manifest:
    """The day's manifest; ArchiveError when it is missing or unreadable."""
    manifest = day_manifest(root, feed, day)
    if manifest is None:
        raise ArchiveError(f"no manifest for {feed} {day} under {root}")
    return manifest


def file_lines(path: Path, validate: bool = False) -> Iterator[bytes]:
    """Every line of one finished file; ArchiveCorrupt (naming it) if it does not end
    cleanly or holds a line ssmd did not write. `validate`: every line must be JSON too
    (for readers that pass lines on unparsed: replay, cat, coverage)."""
    reader = GzipLines(path)
    count = 0
    try:
        for line in reader:
            if not line.startswith(b'{"_seq":'):
                raise ArchiveCorrupt(f"{path}: line {count + 1} is not an ssmd archive line")
            if not line.endswith(b"}\n"):
                raise ArchiveCorrupt(f"{path}: line {count + 1} is cut short (no closing brace)")
            if validate:
                try:
                    msgspec.json.decode(line, type=msgspec.Raw)
                except msgspec.DecodeError as exc:
                    raise ArchiveCorrupt(f"{path}: line {count + 1} is not JSON: {exc}") from None
            count += 1
            yield line
    except FileNotFoundError:
        raise ArchiveCorrupt(f"{path}: listed in the manifest but missing on disk") from None
    except OSError as exc:
        raise ArchiveCorrupt(f"{path}: cannot read: {exc}") from None
    if not reader.complete:
        raise ArchiveCorrupt(
            f"{path}: {reader.error or 'does not decompress completely'} after {count} records"
        )


def iter_entry_lines(
    day_dir: Path, entry: FileEntry, flt: RecordFilter | None = None, validate: bool = False
) -> Iterator[bytes]:
    for line in file_lines(day_dir / entry.name, validate):
        if flt is None:
            yield line
            continue
        prefix = read_prefix(line)
        if prefix is not None and flt.matches(prefix[1], prefix[2], line):
            yield line


def iter_lines(
    day_dir: Path, manifest: Manifest, flt: RecordFilter | None = None, validate: bool = False
) -> Iterator[bytes]:
    """Lines of a day's finished files, in archive (stream) order."""
    for entry in manifest.files:
        yield from iter_entry_lines(day_dir, entry, flt, validate)
