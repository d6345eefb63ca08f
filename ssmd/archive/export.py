"""Parquet export: `{out}/{table}/feed={feed}/date={YYYY-MM-DD}/{HHMM}.parquet`.

One file per table per finished archive file (a slot; a restart's `1200.1.jsonl.gz`
gives `1200.1.parquet`). Incremental and idempotent: a slot whose `raw` file exists is
done, and `raw` is written last, so an interrupted export is redone whole next time.
Each file is written to a dot-named temp file, fsynced and renamed. Every slot's `raw`
row count is checked against the manifest before anything of it is written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import attrs
import pyarrow as pa
import pyarrow.parquet as pq

from ssmd.archive.errors import ArchiveCorrupt
from ssmd.archive.integrity import stream_gaps
from ssmd.archive.records import Record
from ssmd.archive.store import days, feeds, file_lines, read_manifest
from ssmd.archive.tables import SCHEMAS, TABLES, Row, extractor_for, record_rows
from ssmd.archiver.files import FINAL_SUFFIX
from ssmd.archiver.manifest import FileEntry, Manifest


@attrs.define
class ExportReport:
    written: list[str] = attrs.field(factory=list)  # "feed/date/stem"
    already: int = 0
    rows: dict[str, int] = attrs.field(factory=dict)


def slot_path(out: Path, table: str, feed: str, day: str, stem: str) -> Path:
    return out / table / f"feed={feed}" / f"date={day}" / f"{stem}.parquet"


def _stem(entry: FileEntry) -> str:
    return entry.name[: -len(FINAL_SUFFIX)]


def slot_rows(
    root: Path, feed: str, day: str, manifest: Manifest, entry: FileEntry
) -> dict[str, list[Row]]:
    """Every table's rows for one archive file, checked against the manifest."""
    extract = extractor_for(feed)
    tables: dict[str, list[Row]] = {t: [] for t in TABLES}
    path = root / feed / day / entry.name
    for line in file_lines(path):
        record = Record.from_line(line, str(path))
        for table, row in record_rows(record, extract):
            tables[table].append(row)
    if len(tables["raw"]) != entry.records:
        raise ArchiveCorrupt(f"{path}: {len(tables['raw'])} records, manifest says {entry.records}")
    for gap in stream_gaps(manifest.gaps):
        after = int(gap.seq)
        if entry.nats_start_seq - 1 <= after < entry.nats_end_seq:
            tables["discontinuities"].append(
                {
                    "recv_ns": None,
                    "seq": after,
                    "market": None,
                    "kind": gap.kind,
                    "ts": None if gap.at_ns is None else gap.at_ns // 1000,
                    "reason": gap.reason,
                    "count": gap.detail["missing_count"],
                }
            )
    return tables


def _write_atomic(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def pending_slots(
    root: Path, out: Path, feed: str | None = None, day: str | None = None
) -> Iterator[tuple[str, str, Manifest, FileEntry]]:
    for f in [feed] if feed else feeds(root):
        for d in [day] if day else days(root, f):
            manifest = read_manifest(root, f, d)
            for entry in manifest.files:
                if not slot_path(out, "raw", f, d, _stem(entry)).exists():
                    yield f, d, manifest, entry


def export_parquet(
    root: Path, out: Path, feed: str | None = None, day: str | None = None
) -> ExportReport:
    report = ExportReport()
    for f in [feed] if feed else feeds(root):
        for d in [day] if day else days(root, f):
            report.already += len(read_manifest(root, f, d).files)
    for f, d, manifest, entry in pending_slots(root, out, feed, day):
        report.already -= 1
        tables = slot_rows(root, f, d, manifest, entry)
        for name in [t for t in TABLES if t != "raw"] + ["raw"]:
            rows = tables[name]
            _write_atomic(
                slot_path(out, name, f, d, _stem(entry)),
                pa.Table.from_pylist(rows, schema=SCHEMAS[name]),
            )
            report.rows[name] = report.rows.get(name, 0) + len(rows)
        report.written.append(f"{f}/{d}/{_stem(entry)}")
    return report
