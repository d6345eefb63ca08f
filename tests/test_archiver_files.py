"""Line format, slot files, salvage and recovery, without NATS."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmd.archiver.files import FileOps, GzipLines, SlotFile, salvage
from ssmd.archiver.lines import format_line, read_prefix, strip_meta
from ssmd.archiver.manifest import load_manifest
from ssmd.archiver.recovery import recover_feed
from tests.archive_harness import message, utc_ns

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)


@given(value=json_values, indent=st.sampled_from([None, 0, 2]))
def test_a_json_payload_round_trips_through_a_line(value: object, indent: int | None) -> None:
    payload = json.dumps(value, indent=indent).encode()
    line = format_line(7, "prod.kalshi.json.trade.X", payload, 123)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = json.loads(line)
    assert record["_seq"] == 7 and record["_recv_ns"] == 123
    assert strip_meta(record) == json.loads(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"type":"trade","note":"\xff"}',  # invalid UTF-8 where msgspec skips
        b'{"type":"trade","x":NaN}',  # JSON to json.loads, not to msgspec
        b'{"type":"\\ud800"}',  # a lone surrogate escape
        b'{"a":1,"a":2}',
        b'{"a":1,"_a":2}',  # a top-level "_" key: kept whole under _raw
        b' { "a" : 1 } ',
        b"{}",
        b"{ }",
        b'{"a":1',
        b"[1,2]",
        b"7",
    ],
)
def test_payloads_msgspec_reads_differently_are_kept(payload: bytes) -> None:
    test_any_bytes_are_kept.hypothesis.inner_test(payload)  # type: ignore[attr-defined]


@given(payload=st.binary(max_size=200))
def test_any_bytes_are_kept(payload: bytes) -> None:
    line = format_line(1, "prod.kalshi.json.unrouted.invalid", payload, None)
    assert line.count(b"\n") == 1
    record = json.loads(line)
    kept = strip_meta(record)
    try:
        expected: object = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        try:
            expected = payload.decode("utf-8")
        except UnicodeDecodeError:
            expected = payload
    assert kept == expected


@given(subject=st.text(min_size=1), recv=st.none() | st.integers(min_value=0, max_value=2**63))
def test_the_line_prefix_reads_back_any_subject(subject: str, recv: int | None) -> None:
    line = format_line(42, subject, b'{"a":1}', recv)
    assert read_prefix(line) == (42, subject, recv)
    assert json.loads(line)["_subject"] == subject


def test_payload_bytes_are_spliced_untouched() -> None:
    payload = b'{"type":"trade","msg":{"yes_price_dollars":"0.8900","count_fp":"3.00"}}'
    line = format_line(9, "prod.kalshi.json.trade.A", payload, 1)
    assert line.endswith(payload[1:] + b"\n")


def write_slot(directory: Path, batches: int, per_batch: int = 50) -> tuple[SlotFile, list[int]]:
    slot = SlotFile(
        directory, "1200", utc_ns(2026, 1, 5, 12, 0), utc_ns(2026, 1, 5, 12, 15), 6, FileOps()
    )
    offsets = []
    for b in range(batches):
        first = b * per_batch + 1
        slot.append([message(s) for s in range(first, first + per_batch)])
        offsets.append(slot.compressed_bytes)
    return slot, offsets


@settings(max_examples=25, deadline=None)
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_salvage_keeps_every_fsynced_batch(
    tmp_path_factory: pytest.TempPathFactory, cut: int
) -> None:
    root = tmp_path_factory.mktemp("salvage")
    day = root / "kalshi" / "2026-01-05"
    slot, offsets = write_slot(day, batches=8)
    data = slot.partial_path.read_bytes()
    cut = cut % (len(data) + 1)
    slot.partial_path.write_bytes(data[:cut])
    durable_batches = sum(1 for off in offsets if off <= cut)
    result = salvage(slot.partial_path, 6, FileOps())
    assert not slot.partial_path.exists()
    if result is None:
        assert durable_batches == 0
        return
    final, stats = result
    seqs = [json.loads(line)["_seq"] for line in GzipLines(final)]
    assert seqs == list(range(1, len(seqs) + 1)), "salvage must keep a prefix, in order, once"
    assert len(seqs) >= durable_batches * 50
    assert stats.records == len(seqs)


def test_recovery_lists_salvaged_and_unlisted_files_once(tmp_path: Path) -> None:
    feed = tmp_path / "kalshi"
    day = feed / "2026-01-05"
    finished, _ = write_slot(day, batches=2)
    finished.finish()  # 1200.jsonl.gz, but the manifest write never happened (crash)
    leftover = SlotFile(
        day, "1215", utc_ns(2026, 1, 5, 12, 15), utc_ns(2026, 1, 5, 12, 30), 6, FileOps()
    )
    leftover.append([message(s) for s in range(101, 131)])  # killed mid-slot
    report = recover_feed(feed, "kalshi", 900, "15m", 6, FileOps())
    assert report.cursor == 130
    assert report.salvaged == ["2026-01-05/1215.jsonl.gz"]
    assert report.relisted == ["2026-01-05/1200.jsonl.gz"]
    manifest = load_manifest(day)
    assert manifest is not None
    assert [(f.name, f.records, f.nats_start_seq, f.nats_end_seq) for f in manifest.files] == [
        ("1200.jsonl.gz", 100, 1, 100),
        ("1215.jsonl.gz", 30, 101, 130),
    ]
    assert manifest.files[1].start == "2026-01-05T12:15:00Z"
    # Running recovery again changes nothing: no file is listed twice.
    again = recover_feed(feed, "kalshi", 900, "15m", 6, FileOps())
    assert again.salvaged == [] and again.relisted == [] and again.cursor == 130
    assert load_manifest(day) == manifest


def test_salvage_is_idempotent_after_a_crash_between_rename_and_unlink(tmp_path: Path) -> None:
    day = tmp_path / "kalshi" / "2026-01-05"
    slot, _ = write_slot(day, batches=3)
    partial = slot.partial_path
    backup = tmp_path / "partial.bak"
    shutil.copy(partial, backup)
    salvage(partial, 6, FileOps())
    shutil.copy(backup, partial)  # as if the unlink never happened
    report = recover_feed(tmp_path / "kalshi", "kalshi", 900, "15m", 6, FileOps())
    manifest = load_manifest(day)
    assert manifest is not None
    assert [f.name for f in manifest.files] == ["1200.jsonl.gz"]
    assert manifest.files[0].records == 150 and report.cursor == 150
    assert sorted(p.name for p in day.iterdir()) == ["1200.jsonl.gz", "manifest.json"]
