"""Archiver behaviour in virtual time: rotation, rollover, shutdown, merge, full disk."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ssmd.archiver.files import FileOps
from ssmd.clock import WallClock
from tests.archive_harness import Harness, RecordingOps, batch, utc_ns

pytestmark = pytest.mark.trio


def names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if not p.name.startswith("."))


async def test_files_cover_aligned_slots(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    h = Harness(tmp_path)
    async with trio.open_nursery() as nursery:
        await h.start(nursery, WallClock(utc_ns(2026, 1, 5, 11, 58)))
        await h.send.send(batch(1, 10))  # 11:58 -> slot 1145
        await trio.sleep(150)  # 12:00:30
        await h.send.send(batch(11, 20))  # slot 1200
        await trio.sleep(900)  # 12:15:30
        await h.send.send(batch(21, 30))  # slot 1215
        assert await h.stop() == 0
    day = h.day_dir("2026-01-05")
    assert names(day) == ["1145.jsonl.gz", "1200.jsonl.gz", "1215.jsonl.gz", "manifest.json"]
    manifest = h.manifest("2026-01-05")
    files = {f["name"]: f for f in manifest["files"]}
    assert files["1200.jsonl.gz"]["start"] == "2026-01-05T12:00:00Z"
    assert files["1200.jsonl.gz"]["end"] == "2026-01-05T12:15:00Z"
    assert [(f["nats_start_seq"], f["nats_end_seq"], f["records"]) for f in manifest["files"]] == [
        (1, 10, 10),
        (11, 20, 10),
        (21, 30, 10),
    ]
    assert [r["_seq"] for r in h.lines("2026-01-05")] == list(range(1, 31))


async def test_quiet_feed_closes_the_file_on_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    h = Harness(tmp_path)
    async with trio.open_nursery() as nursery:
        await h.start(nursery, WallClock(utc_ns(2026, 1, 5, 12, 1)))
        await h.send.send(batch(1, 5))
        day = h.day_dir("2026-01-05")
        await trio.sleep(13 * 60)  # 12:14, slot still open
        assert names(day) == ["1200.jsonl.gz.partial"]
        await trio.sleep(61 + 1)  # 12:15:02, no message arrived
        assert names(day) == ["1200.jsonl.gz", "manifest.json"]
        assert h.manifest("2026-01-05")["files"][0]["records"] == 5
        # An hour of silence opens no empty files.
        await trio.sleep(3600)
        assert names(day) == ["1200.jsonl.gz", "manifest.json"]
        assert await h.stop() == 0


async def test_day_rollover_starts_a_new_directory_and_manifest(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    h = Harness(tmp_path)
    async with trio.open_nursery() as nursery:
        await h.start(nursery, WallClock(utc_ns(2026, 1, 5, 23, 50)))
        await h.send.send(batch(1, 3, ticker="A"))
        await trio.sleep(15 * 60)  # 00:05 next day
        await h.send.send(batch(4, 6, ticker="B"))
        assert await h.stop() == 0
    first, second = h.manifest("2026-01-05"), h.manifest("2026-01-06")
    assert [f["name"] for f in first["files"]] == ["2345.jsonl.gz"]
    assert first["tickers"] == ["A"] and first["date"] == "2026-01-05"
    assert [f["name"] for f in second["files"]] == ["0000.jsonl.gz"]
    assert second["tickers"] == ["B"] and second["files"][0]["nats_start_seq"] == 4


async def test_shutdown_finishes_the_file_and_writes_the_manifest(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    h = Harness(tmp_path)
    async with trio.open_nursery() as nursery:
        await h.start(nursery, WallClock(utc_ns(2026, 1, 5, 12, 3)))
        await h.send.send(batch(1, 100))
        await h.send.send(batch(101, 150, ticker="KXBTCD-26MAR1213-T69499.99"))
        assert await h.stop() == 0
    day = h.day_dir("2026-01-05")
    assert names(day) == ["1200.jsonl.gz", "manifest.json"]
    manifest = h.manifest("2026-01-05")
    assert manifest["files"][0]["records"] == 150
    assert manifest["files"][0]["records_by_type"] == {"trade": 150}
    assert manifest["files"][0]["compressed_bytes"] == (day / "1200.jsonl.gz").stat().st_size
    assert manifest["tickers"] == ["KXBTCD-26FEB14-T100000", "KXBTCD-26MAR1213-T69499.99"]
    assert manifest["has_gaps"] is False
    assert h.acked == ["ack.100", "ack.150"]


async def test_restart_merges_the_manifest_and_never_overwrites(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    first = Harness(tmp_path)
    async with trio.open_nursery() as nursery:
        await first.start(nursery, WallClock(utc_ns(2026, 1, 5, 11, 50)))
        await first.send.send(batch(1, 10, ticker="A"))
        await trio.sleep(11 * 60)  # 12:01
        await first.send.send(batch(11, 20, ticker="B"))
        assert await first.stop() == 0
    second = Harness(tmp_path)
    async with trio.open_nursery() as nursery:
        # Same slot (12:00) as the file the first run finished.
        await second.start(nursery, WallClock(utc_ns(2026, 1, 5, 12, 7)))
        assert second.status.cursor == 20
        await second.send.send(batch(21, 30, ticker="C"))
        assert await second.stop() == 0
    manifest = second.manifest("2026-01-05")
    assert [f["name"] for f in manifest["files"]] == [
        "1145.jsonl.gz",
        "1200.jsonl.gz",
        "1200.1.jsonl.gz",
    ]
    assert manifest["tickers"] == ["A", "B", "C"]
    assert [r["_seq"] for r in second.lines("2026-01-05")] == list(range(1, 31))


async def test_acknowledged_only_after_fsync(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ops = RecordingOps()
    h = Harness(tmp_path, ops=ops)

    def check(reply: str) -> None:
        seq = int(reply.split(".")[1])
        assert seq in ops.durable_seqs(), f"seq {seq} acknowledged before it was fsynced"

    h.ack_check = check
    async with trio.open_nursery() as nursery:
        await h.start(nursery, WallClock(utc_ns(2026, 1, 5, 12, 3)))
        for first in range(1, 500, 50):
            await h.send.send(batch(first, first + 49))
        assert await h.stop() == 0
    assert len(h.acked) == 10


async def test_full_disk_pauses_then_resumes_without_loss(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ops = RecordingOps()
    h = Harness(tmp_path, ops=ops)
    async with trio.open_nursery() as nursery:
        await h.start(nursery, WallClock(utc_ns(2026, 1, 5, 12, 3)))
        await h.send.send(batch(1, 10))
        await trio.sleep(1)
        ops.full_writes = 3
        await h.send.send(batch(11, 20))
        await h.status.writer.disk_full.wait_value(True)
        await trio.sleep(5)
        assert h.acked == ["ack.10"], "nothing may be acknowledged while the disk is full"
        await h.status.writer.disk_full.wait_value(False)
        await trio.sleep(1)
        assert h.acked == ["ack.10", "ack.20"]
        await h.send.send(batch(21, 30))
        assert await h.stop() == 0
    assert [r["_seq"] for r in h.lines("2026-01-05")] == list(range(1, 31))
    assert h.status.writer.disk_full_events == 1


class FullWhenCreating(FileOps):
    """The disk is full for the next `full_creates` file creations: a full disk (or an
    exhausted inode quota) can refuse the manifest's temp file, not only a write."""

    def __init__(self) -> None:
        self.full_creates = 0

    def create(self, path: Path) -> int:
        if self.full_creates > 0:
            self.full_creates -= 1
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return super().create(path)


async def test_full_disk_when_creating_the_manifest_pauses_instead_of_crashing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ops = FullWhenCreating()
    h = Harness(tmp_path, ops=ops)
    async with trio.open_nursery() as nursery:
        await h.start(nursery, WallClock(utc_ns(2026, 1, 5, 12, 14, 50)))
        await h.send.send(batch(1, 10))
        await trio.sleep(1)
        assert h.acked == ["ack.10"]
        ops.full_creates = 2  # the manifest written when the slot closes at 12:15
        with trio.fail_after(60):
            await h.status.writer.disk_full.wait_value(True)
            await h.status.writer.disk_full.wait_value(False)
        await h.send.send(batch(11, 20))
        assert await h.stop() == 0
    assert [f["name"] for f in h.manifest("2026-01-05")["files"]] == [
        "1200.jsonl.gz",
        "1215.jsonl.gz",
    ]
    assert [r["_seq"] for r in h.lines("2026-01-05")] == list(range(1, 21))
    assert h.status.writer.disk_full_events == 1


async def test_full_disk_when_creating_the_day_directory_pauses_instead_of_crashing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = [0]
    mkdir = Path.mkdir

    def full_mkdir(path: Path, *args: Any, **kwargs: Any) -> None:
        if full[0] > 0 and not path.exists():
            full[0] -= 1
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", full_mkdir)
    h = Harness(tmp_path)
    async with trio.open_nursery() as nursery:
        await h.start(nursery, WallClock(utc_ns(2026, 1, 5, 23, 59)))
        await h.send.send(batch(1, 10))
        await trio.sleep(120)  # 00:01 on the next day: a new day directory
        full[0] = 2
        await h.send.send(batch(11, 20))
        with trio.fail_after(60):
            await h.status.writer.disk_full.wait_value(True)
            await h.status.writer.disk_full.wait_value(False)
        assert await h.stop() == 0
    assert [r["_seq"] for r in h.lines("2026-01-05")] == list(range(1, 11))
    assert [r["_seq"] for r in h.lines("2026-01-06")] == list(range(11, 21))
    assert h.status.writer.disk_full_events == 1


async def test_gap_is_in_the_manifest_before_the_batch_is_acked(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    from ssmd.archiver.fetcher import Batch, GapEvent

    h = Harness(tmp_path)

    def check(reply: str) -> None:
        if reply == "ack.20":
            gaps = h.manifest("2026-01-05")["gaps"]
            assert gaps == [
                {
                    "after_seq": 10,
                    "missing_count": 5,
                    "detected_at": "2026-01-05T12:03:00Z",
                    "exact": True,
                }
            ]

    h.ack_check = check
    async with trio.open_nursery() as nursery:
        clock = WallClock(utc_ns(2026, 1, 5, 12, 3))
        await h.start(nursery, clock)
        await h.send.send(batch(1, 10))
        later = batch(16, 20)
        await h.send.send(
            Batch(later.messages, later.ack_reply, [GapEvent(10, 5, clock.now_ns(), True)])
        )
        assert await h.stop() == 0
    manifest = h.manifest("2026-01-05")
    assert manifest["has_gaps"] is True
    assert h.acked == ["ack.10", "ack.20"]


async def test_shutdown_deadline_bounds_a_stuck_sink(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ops = RecordingOps()
    h = Harness(tmp_path, ops=ops)
    async with trio.open_nursery() as nursery:
        await h.start(nursery, WallClock(utc_ns(2026, 1, 5, 12, 3)), shutdown_timeout=5)
        ops.full_writes = 10**9  # the disk never recovers
        await h.send.send(batch(1, 10))
        start = trio.current_time()
        assert await h.stop() == 1
        assert trio.current_time() - start == pytest.approx(5, abs=0.01)
    # The unacknowledged partial stays for the next start to salvage.
    assert h.acked == []
    assert os.path.exists(h.day_dir("2026-01-05") / "1200.jsonl.gz.partial")
