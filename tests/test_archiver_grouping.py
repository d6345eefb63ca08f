"""Batches that queue up while the writer is fsyncing go to disk as one block with one
fsync and one ack (the newest: AckAll); a rotation tick ends such a group."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

from ssmd.archiver.fetcher import Batch, GapEvent, RotateTick
from ssmd.archiver.files import SlotFile
from ssmd.archiver.writer import ArchiveWriter, ManifestUpdate, WriterStatus
from ssmd.clock import WallClock
from tests.archive_harness import RecordingOps, batch, utc_ns


class SlowFirstAppend:
    """Runs file operations inline; the first append waits for `release` (a slow fsync)."""

    def __init__(self) -> None:
        self.appended: list[int] = []
        self.release = trio.Event()
        self.blocked = trio.Event()

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        if getattr(fn, "__func__", None) is SlotFile.append:
            self.appended.append(len(args[0]))
            if len(self.appended) == 1:
                self.blocked.set()
                await self.release.wait()
        return fn(*args)


async def _run(
    tmp_path: Path,
    items: list[Batch | RotateTick],
    *,
    stalled_s: float = 0,
    settled: Callable[[list[ManifestUpdate]], None] | None = None,
) -> tuple[SlowFirstAppend, RecordingOps, list[str], list[ManifestUpdate]]:
    """Write batch 1..10, with `items` queued behind its slow fsync (which lasts
    `stalled_s` of fake time); `settled` checks the updates once the writer has taken
    everything, before its input ends."""
    ops = RecordingOps()
    run_sync = SlowFirstAppend()
    clock = WallClock(utc_ns(2026, 1, 5, 12, 3))
    ack_send, ack_receive = trio.open_memory_channel[str](100)
    manifest_send, manifest_receive = trio.open_memory_channel[ManifestUpdate](100)
    writer = ArchiveWriter(
        tmp_path / "kalshi", 900, 6, clock, ack_send, manifest_send, WriterStatus(),
        ops=ops, run_sync=run_sync,
    )  # fmt: skip
    send, receive = trio.open_memory_channel[Batch | RotateTick](10)
    acks: list[str] = []
    updates: list[ManifestUpdate] = []

    async def collect_acks() -> None:
        async for reply in ack_receive:
            acks.append(reply)
            assert int(reply.split(".")[1]) in ops.durable_seqs(), f"{reply} before its fsync"

    async def persist() -> None:
        async for update in manifest_receive:
            updates.append(update)
            if hasattr(update, "persisted"):
                update.persisted.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run, receive)
        nursery.start_soon(collect_acks)
        nursery.start_soon(persist)
        await send.send(batch(1, 10))
        await run_sync.blocked.wait()
        for item in items:
            await send.send(item)
        await trio.sleep(stalled_s)
        run_sync.release.set()
        if settled is not None:
            await trio.testing.wait_all_tasks_blocked()
            settled(updates)
        await send.aclose()
    return run_sync, ops, acks, updates


async def test_batches_queued_behind_a_slow_fsync_share_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    gap = GapEvent(25, 3, utc_ns(2026, 1, 5, 12, 3), True)
    later = batch(29, 40)
    run_sync, ops, acks, updates = await _run(
        tmp_path, [batch(11, 20), batch(21, 25), Batch(later.messages, later.ack_reply, [gap])]
    )
    assert run_sync.appended == [10, 27]
    assert acks == ["ack.10", "ack.40"]
    assert ops.durable_seqs() == set(range(1, 26)) | set(range(29, 41))
    assert [type(u).__name__ for u in updates] == ["GapFound", "FileFinished"]


async def test_a_rotation_tick_ends_a_group(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    tick = RotateTick(utc_ns(2026, 1, 5, 12, 15))
    run_sync, _, acks, _ = await _run(tmp_path, [batch(11, 20), tick, batch(21, 30), batch(31, 40)])
    assert run_sync.appended == [10, 10, 20]
    assert acks == ["ack.10", "ack.20", "ack.40"]


async def test_a_tick_that_ends_a_group_still_finishes_the_slot(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The slot ends (12:15) while an fsync stalls; an ack-only batch then queues before
    the boundary's tick. The tick ends that group, and the file is finished then, not
    at the next message or tick (up to a whole interval late)."""

    def finished(updates: list[ManifestUpdate]) -> None:
        assert [type(u).__name__ for u in updates] == ["FileFinished"]

    _, _, acks, _ = await _run(
        tmp_path,
        [Batch([], "ack.10"), RotateTick(utc_ns(2026, 1, 5, 12, 15))],
        stalled_s=13 * 60,
        settled=finished,
    )
    assert acks == ["ack.10", "ack.10"]


async def test_a_backlog_is_still_written_a_fetch_at_a_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Catching up, batches of a full fetch each are not merged into one huge first
    block: the first fsync after a start comes as soon as before."""
    run_sync, _, acks, _ = await _run(
        tmp_path, [batch(11, 1010), batch(1011, 2010), batch(2011, 2020), batch(2021, 2030)]
    )
    assert run_sync.appended == [10, 1000, 1000, 20]
    assert acks == ["ack.10", "ack.1010", "ack.2010", "ack.2030"]
