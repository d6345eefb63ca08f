"""`ssmd data verify`: a day's files against its manifest."""

from __future__ import annotations

from pathlib import Path

import attrs

from ssmd.archiver.files import FINAL_SUFFIX, PARTIAL_SUFFIX, GzipLines, parse_final_name
from ssmd.archiver.lines import read_prefix
from ssmd.archiver.manifest import ManifestCorrupt, load_manifest
from ssmd.subjects import DISCONTINUITY_TYPE, split_subject


@attrs.define
class DayReport:
    feed: str
    day: str
    problems: list[str] = attrs.field(factory=list)
    files: int = 0
    records: int = 0
    in_progress: list[str] = attrs.field(factory=list)
    gaps: list[str] = attrs.field(factory=list)
    discontinuities: dict[str, int] = attrs.field(factory=dict)
    last_seq: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_day(root: Path, feed: str, day: str, after_seq: int | None = None) -> DayReport:
    """Check a day against its manifest; `after_seq` continues the order check across days."""
    report = DayReport(feed, day, last_seq=after_seq)
    day_dir = root / feed / day
    try:
        manifest = load_manifest(day_dir)
    except ManifestCorrupt as exc:
        report.problems.append(str(exc))
        return report
    if manifest is None:
        report.problems.append(f"{day_dir}: manifest.json is missing")
        return report
    listed = {f.name for f in manifest.files}
    for path in sorted(day_dir.iterdir()):
        if path.name.endswith(PARTIAL_SUFFIX):
            report.in_progress.append(path.name)
        elif path.name.endswith(FINAL_SUFFIX) and path.name not in listed:
            report.problems.append(f"{day}/{path.name}: on disk but not in the manifest")
        elif (
            path.name.endswith(FINAL_SUFFIX)
            and parse_final_name(path.name) is None
            and not path.name.startswith(".")
        ):
            report.problems.append(f"{day}/{path.name}: not a slot file name")
    for gap in manifest.gaps:
        bound = "" if gap.exact else " (upper bound)"
        report.gaps.append(
            f"{gap.missing_count} message(s) missing after seq {gap.after_seq}{bound}, detected {gap.detected_at}"
        )
    for entry in manifest.files:
        path = day_dir / entry.name
        where = f"{day}/{entry.name}"
        if not path.exists():
            report.problems.append(f"{where}: listed in the manifest but missing on disk")
            continue
        report.files += 1
        size = path.stat().st_size
        if size != entry.compressed_bytes:
            report.problems.append(
                f"{where}: {size} bytes on disk, manifest says {entry.compressed_bytes}"
            )
        reader = GzipLines(path)
        count = 0
        first: int | None = None
        last: int | None = None
        for line in reader:
            prefix = read_prefix(line)
            if prefix is None:
                report.problems.append(f"{where}: line {count + 1} is not an ssmd archive line")
                break
            seq, subject, _recv = prefix
            if report.last_seq is not None and seq <= report.last_seq:
                report.problems.append(
                    f"{where}: seq {seq} after seq {report.last_seq} (duplicate or out of order)"
                )
                break
            report.last_seq = seq
            first = seq if first is None else first
            last = seq
            count += 1
            type_token, _ticker = split_subject(subject)
            if type_token == DISCONTINUITY_TYPE:
                kind = subject.rsplit(".", 1)[-1]
                report.discontinuities[kind] = report.discontinuities.get(kind, 0) + 1
        if not reader.complete:
            report.problems.append(
                f"{where}: {reader.error or 'does not decompress completely'} after {count} records"
            )
            continue
        report.records += count
        if count != entry.records:
            report.problems.append(f"{where}: {count} records, manifest says {entry.records}")
        if (first, last) != (entry.nats_start_seq, entry.nats_end_seq):
            report.problems.append(
                f"{where}: seqs {first}..{last}, manifest says {entry.nats_start_seq}..{entry.nats_end_seq}"
            )
    return report
