"""Per-day `manifest.json`: every finished file of the day exactly once, gaps, tickers.

The manifest on disk is the base: updates merge into it (files by name, gaps by
position, tickers by union), so a restart in the middle of a day forgets nothing. Writes
are atomic: temp file, fsync, rename, fsync of the directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import cattrs

from ssmd.archiver.files import FileOps, FileStats, make_dir
from ssmd.archiver.slots import iso

MANIFEST_NAME = "manifest.json"
FORMAT = "jsonl"


@attrs.frozen
class FileEntry:
    name: str
    start: str
    end: str
    records: int
    bytes: int
    compressed_bytes: int
    nats_start_seq: int
    nats_end_seq: int
    records_by_type: dict[str, int] = attrs.field(factory=dict)
    discontinuities: dict[str, int] = attrs.field(factory=dict)

    @classmethod
    def from_stats(
        cls, name: str, start_ns: int, end_ns: int, stats: FileStats, compressed_bytes: int
    ) -> FileEntry:
        return cls(
            name=name,
            start=iso(start_ns),
            end=iso(end_ns),
            records=stats.records,
            bytes=stats.bytes,
            compressed_bytes=compressed_bytes,
            nats_start_seq=stats.first_seq or 0,
            nats_end_seq=stats.last_seq or 0,
            records_by_type=dict(sorted(stats.records_by_type.items())),
            discontinuities=dict(sorted(stats.discontinuities.items())),
        )


@attrs.frozen
class Gap:
    """`missing_count` stream messages after `after_seq` left the stream unarchived.

    `exact` is false when the consumer's filter covers only part of the stream: then
    the count is of all messages that left that range, an upper bound for this feed.
    """

    after_seq: int
    missing_count: int
    detected_at: str
    exact: bool = True


@attrs.define
class Manifest:
    feed: str
    date: str
    rotation_interval: str
    format: str = FORMAT
    files: list[FileEntry] = attrs.field(factory=list)
    gaps: list[Gap] = attrs.field(factory=list)
    tickers: set[str] = attrs.field(factory=set)
    message_types: set[str] = attrs.field(factory=set)

    def add_file(self, entry: FileEntry, tickers: Iterable[str]) -> None:
        self.files = [f for f in self.files if f.name != entry.name]
        self.files.append(entry)
        self.files.sort(key=lambda f: (f.nats_start_seq, f.name))
        self.tickers.update(tickers)
        self.message_types.update(entry.records_by_type)

    def add_gap(self, gap: Gap) -> None:
        """Add a gap; one detected again after a restart keeps the larger count."""
        same = [g for g in self.gaps if g.after_seq == gap.after_seq]
        if same and same[0].missing_count >= gap.missing_count:
            return
        self.gaps = [g for g in self.gaps if g.after_seq != gap.after_seq]
        self.gaps.append(gap)
        self.gaps.sort(key=lambda g: g.after_seq)

    def has_file(self, name: str) -> bool:
        return any(f.name == name for f in self.files)

    def to_json(self) -> dict[str, Any]:
        discontinuities: dict[str, int] = {}
        for f in self.files:
            for kind, n in f.discontinuities.items():
                discontinuities[kind] = discontinuities.get(kind, 0) + n
        return {
            "feed": self.feed,
            "date": self.date,
            "format": self.format,
            "rotation_interval": self.rotation_interval,
            "files": [_converter.unstructure(f) for f in self.files],
            "gaps": [_converter.unstructure(g) for g in self.gaps],
            "tickers": sorted(self.tickers),
            "message_types": sorted(self.message_types),
            "has_gaps": bool(self.gaps),
            "records": sum(f.records for f in self.files),
            "discontinuities": dict(sorted(discontinuities.items())),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            feed=data["feed"],
            date=data["date"],
            rotation_interval=data.get("rotation_interval", ""),
            format=data.get("format", FORMAT),
            files=[_converter.structure(f, FileEntry) for f in data.get("files", [])],
            gaps=[_converter.structure(g, Gap) for g in data.get("gaps", [])],
            tickers=set(data.get("tickers", [])),
            message_types=set(data.get("message_types", [])),
        )

    def encode(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2) + "\n").encode()


_converter = cattrs.Converter()


class ManifestCorrupt(Exception):
    pass


def load_manifest(day_dir: Path) -> Manifest | None:
    path = day_dir / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return Manifest.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError, cattrs.BaseValidationError) as exc:
        raise ManifestCorrupt(f"{path}: unreadable manifest: {exc}") from exc


def load_or_new(day_dir: Path, feed: str, rotation_interval: str) -> Manifest:
    return load_manifest(day_dir) or Manifest(
        feed=feed, date=day_dir.name, rotation_interval=rotation_interval
    )


def write_manifest(day_dir: Path, manifest: Manifest, ops: FileOps) -> None:
    make_dir(day_dir, ops)
    ops.write_atomic(day_dir / MANIFEST_NAME, manifest.encode())
