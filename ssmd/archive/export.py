"""Parquet export: `{out}/{table}/feed={feed}/date={YYYY-MM-DD}/{HHMM}.parquet`.

One file per table per finished archive file (a slot; a restart's `1200.1.jsonl.gz`
gives `1200.1.parquet`). Incremental and idempotent: a slot whose `raw` file exists is
done, and `raw` is renamed into place last, so an interrupted export is redone whole
next time. Rows go to dot-named temp files in bounded batches (memory does not grow with
the slot); once the slot's record count agrees with its manifest entry, each file is
fsynced, renamed and its directory fsynced, `raw` last. A damaged slot leaves nothing
behind.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import attrs
import pyarrow as pa
import pyarrow.parquet as pq

from ssmd.archive.errors import ArchiveCorrupt
from ssmd.archive.integrity import stream_gaps
from ssmd.archive.records import Record
from ssmd.archive.store import day_manifest, days, feeds, file_lines, read_manifest
from ssmd.archive.tables import SCHEMAS, TABLES, Row, extractor_for, record_rows
from ssmd.archiver.files import FINAL_SUFFIX
from ssmd.archiver.manifest import FileEntry, Manifest

BATCH_ROWS = 50_000
BATCH_BYTES = 64 << 20  # text held per table before a row group is written


@attrs.define
class ExportReport:
    written: list[str] = attrs.field(factory=list)  # "feed/date/stem"
    already: int = 0
    rows: dict[str, int] = attrs.field(factory=dict)
    untyped: dict[str, dict[str, int]] = attrs.field(factory=dict)  # slot -> type -> n
    skipped: list[str] = attrs.field(factory=list)  # "feed/date": no manifest yet


def slot_path(out: Path, table: str, feed: str, day: str, stem: str) -> Path:
    return out / table / f"feed={feed}" / f"date={day}" / f"{stem}.parquet"


def _stem(entry: FileEntry) -> str:
    return entry.name[: -len(FINAL_SUFFIX)]


def _temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _SlotWriter:
    """Every table of one slot, written to temp files in batches of at most BATCH_ROWS
    rows or BATCH_BYTES of text (one Polymarket book can be megabytes)."""

    def __init__(self, out: Path, feed: str, day: str, stem: str) -> None:
        self.paths = {t: slot_path(out, t, feed, day, stem) for t in TABLES}
        self.rows: dict[str, list[Row]] = {t: [] for t in TABLES}
        self.counts = dict.fromkeys(TABLES, 0)
        self.held = dict.fromkeys(TABLES, 0)  # bytes of text in self.rows
        self.writers: dict[str, pq.ParquetWriter] = {}
        for table, path in self.paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writers[table] = pq.ParquetWriter(_temp(path), SCHEMAS[table], compression="zstd")

    def add(self, table: str, row: Row) -> None:
        rows = self.rows[table]
        rows.append(row)
        self.held[table] += sum(len(v) for v in row.values() if isinstance(v, str))
        if len(rows) >= BATCH_ROWS or self.held[table] >= BATCH_BYTES:
            self._flush(table)

    def _flush(self, table: str) -> None:
        rows = self.rows[table]
        if rows:
            self.writers[table].write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[table]))
            self.counts[table] += len(rows)
            self.held[table] = 0
            rows.clear()

    def flush_all(self) -> None:
        for table in TABLES:
            self._flush(table)

    def commit(self) -> None:
        """Finish every file, then fsync and rename each into place, `raw` last."""
        self.flush_all()
        for table in TABLES:
            self.writers[table].close()
        for table in [t for t in TABLES if t != "raw"] + ["raw"]:
            tmp = _temp(self.paths[table])
            _fsync(tmp)
            os.replace(tmp, self.paths[table])
            _fsync(self.paths[table].parent)  # the rename is durable before `raw` says done

    def abort(self) -> None:
        for table, writer in self.writers.items():
            with contextlib.suppress(Exception):  # the temp file goes anyway
                writer.close()
            _temp(self.paths[table]).unlink(missing_ok=True)


def _gap_rows(manifest: Manifest, entry: FileEntry) -> Iterator[Row]:
    """The manifest's stream gaps owned by this file: each goes to the first file (in
    stream order) that ends after it, the one holding the message after the gap."""
    for gap in stream_gaps(manifest.gaps):
        after = int(gap.seq)
        later = [e for e in manifest.files if e.nats_end_seq > after]
        if later and min(later, key=lambda e: (e.nats_start_seq, e.name)) is entry:
            yield {
                "recv_ns": None,
                "seq": after,
                "market": None,
                "kind": gap.kind,
                "ts": None if gap.at_ns is None else gap.at_ns // 1000,
                "reason": gap.reason,
                "count": gap.detail["missing_count"],
            }


def export_slot(
    root: Path, out: Path, feed: str, day: str, manifest: Manifest, entry: FileEntry
) -> tuple[dict[str, int], dict[str, int]]:
    """Export one archive file; its row count per table, and per type token the
    records kept in `raw` only because their typed rows could not be made."""
    extract = extractor_for(feed)
    path = root / feed / day / entry.name
    writer = _SlotWriter(out, feed, day, _stem(entry))
    by_type: Counter[str] = Counter()
    untyped: Counter[str] = Counter()
    try:
        for line in file_lines(path):
            record = Record.from_line(line, str(path))
            by_type[record.type_token] += 1
            for table, row in record_rows(record, extract, untyped):
                writer.add(table, row)
        for row in _gap_rows(manifest, entry):
            writer.add("discontinuities", row)
        writer.flush_all()
        if writer.counts["raw"] != entry.records:
            raise ArchiveCorrupt(
                f"{path}: {writer.counts['raw']} records, manifest says {entry.records}"
            )
        if entry.records_by_type and dict(by_type) != entry.records_by_type:
            raise ArchiveCorrupt(
                f"{path}: records by type {dict(sorted(by_type.items()))}, "
                f"manifest says {entry.records_by_type}"
            )
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return writer.counts, dict(untyped)


def _manifests(
    root: Path, feed: str | None, day: str | None, skipped: list[str]
) -> Iterator[tuple[str, str, Manifest]]:
    """Each day's manifest. A day with none yet (its first slot still being written)
    is skipped and noted, unless FEED and DATE name it."""
    for f in [feed] if feed else feeds(root):
        for d in [day] if day else days(root, f):
            if feed is not None and day is not None:
                yield f, d, read_manifest(root, f, d)
                continue
            manifest = day_manifest(root, f, d)
            if manifest is None:
                skipped.append(f"{f}/{d}")
                continue
            yield f, d, manifest


def export_parquet(
    root: Path, out: Path, feed: str | None = None, day: str | None = None
) -> ExportReport:
    report = ExportReport()
    for f, d, manifest in _manifests(root, feed, day, report.skipped):
        for entry in manifest.files:
            if slot_path(out, "raw", f, d, _stem(entry)).exists():
                report.already += 1
                continue
            counts, untyped = export_slot(root, out, f, d, manifest, entry)
            for table, n in counts.items():
                report.rows[table] = report.rows.get(table, 0) + n
            report.written.append(f"{f}/{d}/{_stem(entry)}")
            if untyped:
                report.untyped[report.written[-1]] = untyped
    return report
