"""The writer and the manifest writer: the archiver's two sinks.

The writer appends each batch to the current slot's file, fsyncs, and only then hands the
batch's ack to the acker, so a slow or hung NATS never holds up writing or shutdown.
It finishes a file when its slot ends (a rotation tick, or the first batch of a later
slot) and when its input channel closes at shutdown. Finished files go to the manifest
writer, which merges them into the day's manifest on disk.

A full disk pauses the writer: the same block is retried until it fits, nothing is
acknowledged meanwhile, and the fetcher is held back by the bounded channel.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio
from trio_util import AsyncBool

from ssmd.archiver.fetcher import Batch, GapEvent, RotateTick
from ssmd.archiver.files import DiskFull, FileOps, FileStats, SlotFile
from ssmd.archiver.manifest import FileEntry, Gap, Manifest, load_or_new, write_manifest
from ssmd.archiver.slots import NS, day_of, iso, slot_label, slot_start
from ssmd.backoff import Backoff
from ssmd.clock import WallClock
from ssmd.metrics import LatencyHistogram
from ssmd.nats.types import NatsUnavailable

log = logging.getLogger("ssmd.archiver.writer")

T = TypeVar("T")
RunSync = Callable[..., Awaitable[Any]]


@attrs.frozen
class FileFinished:
    day: str
    entry: FileEntry
    tickers: frozenset[str]


@attrs.frozen
class GapFound:
    day: str
    gap: Gap
    persisted: trio.Event


ManifestUpdate = FileFinished | GapFound


@attrs.define
class WriterStatus:
    records: int = 0
    bytes: int = 0
    files: int = 0
    acks: int = 0
    ack_failures: int = 0
    acks_dropped: int = 0
    # Observable, so health checks and tests can wait for the transition itself.
    disk_full: AsyncBool = attrs.field(factory=AsyncBool)
    disk_full_events: int = 0
    last_write_ns: int = 0
    # The highest stream sequence fsynced since the start: the fetcher reopens its
    # consumer right after it, never after what is still on its way to disk.
    durable_seq: int | None = None
    open_file: str = ""
    compressed_bytes: int = 0
    records_by_type: Counter[str] = attrs.field(factory=Counter)
    fsync_seconds: LatencyHistogram = attrs.field(factory=LatencyHistogram)


# Queued batches are merged into one write until it holds at least this many messages
# (so at most GROUP_MAX_MESSAGES - 1 + one batch).
GROUP_MAX_MESSAGES = 1000

# Retrying a file operation while the disk is full.
DISK_FULL_RETRY = Backoff(initial=1.0, maximum=30.0)


async def retry_disk_full(
    run_sync: RunSync, status: WriterStatus, what: str, fn: Callable[..., T], *args: Any
) -> T:
    """Run a blocking file operation, pausing and retrying while the disk is full."""
    retry = None  # made on the first failure: a retry's Random costs more than a write
    while True:
        try:
            result: T = await run_sync(fn, *args)
        except DiskFull as exc:
            retry = retry or DISK_FULL_RETRY.retry()
            if not status.disk_full.value:
                status.disk_full_events += 1
                log.error(
                    "disk full while %s (%s): pausing; nothing is acknowledged until it fits",
                    what,
                    exc,
                )
            status.disk_full.value = True
            await retry.wait()
            continue
        if status.disk_full.value:
            log.info("disk has room again: %s resumed", what)
            status.disk_full.value = False
        return result


class ArchiveWriter:
    def __init__(
        self,
        feed_dir: Path,
        interval_s: int,
        level: int,
        clock: WallClock,
        ack_send: trio.MemorySendChannel[str],
        manifest_send: trio.MemorySendChannel[ManifestUpdate],
        status: WriterStatus,
        *,
        ops: FileOps | None = None,
        run_sync: RunSync = trio.to_thread.run_sync,
    ) -> None:
        self._feed_dir = feed_dir
        self._interval_s = interval_s
        self._level = level
        self._clock = clock
        self._ack_send = ack_send
        self._manifest_send = manifest_send
        self._ops = ops or FileOps()
        self._run_sync = run_sync
        self.status = status
        self._current: SlotFile | None = None

    async def run(self, receive: trio.MemoryReceiveChannel[Batch | RotateTick]) -> None:
        async with self._manifest_send, self._ack_send, receive:
            async for item in receive:
                if isinstance(item, RotateTick):
                    await self._rotate_if_due()
                    continue
                # Batches that queued up while the last write was fsyncing go to disk
                # together: one block, one fsync, one ack (the newest, AckAll). So the
                # fsync cadence follows the disk and the arrival rate, not the batch
                # count, and a slow fsync does not make each batch behind it wait for
                # one of its own. A rotation tick ends the group, and so does its size:
                # a backlog (catching up after a restart) is still written in blocks of
                # about a fetch each, so the first fsync after a start comes as soon.
                group = [item]
                size = len(item.messages)
                tick: RotateTick | None = None
                while tick is None and size < GROUP_MAX_MESSAGES:
                    try:
                        more = receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    if isinstance(more, RotateTick):
                        tick = more
                    else:
                        group.append(more)
                        size += len(more.messages)
                await self._write(group[0] if len(group) == 1 else _merge(group))
                if tick is not None:
                    await self._rotate_if_due()
            await self._finish_current()

    async def _rotate_if_due(self) -> None:
        if self._current is not None:
            now_slot = slot_start(self._clock.now_ns(), self._interval_s)
            if now_slot != self._current.start_ns:
                await self._finish_current()

    async def _write(self, batch: Batch) -> None:
        for gap in batch.gaps:
            await self._persist_gap(gap)
        if batch.messages:
            await self._rotate_if_due()
            if self._current is None:
                self._current = await self._open()
            current = self._current
            before = current.compressed_bytes
            added: FileStats = await retry_disk_full(
                self._run_sync,
                self.status,
                f"writing {current.name}",
                current.append,
                batch.messages,
            )
            status = self.status
            status.records += len(batch.messages)
            status.bytes += added.bytes
            status.compressed_bytes += current.compressed_bytes - before
            status.records_by_type.update(added.records_by_type)
            status.fsync_seconds.observe(current.last_fsync_s)
            status.last_write_ns = self._clock.now_ns()
            status.durable_seq = batch.messages[-1].stream_seq
        if batch.ack_reply is not None:
            try:
                self._ack_send.send_nowait(batch.ack_reply)
            except trio.WouldBlock:
                # A later ack covers this one (AckAll); at worst the batch is redelivered
                # and skipped by sequence.
                self.status.acks_dropped += 1

    async def _open(self) -> SlotFile:
        start = slot_start(self._clock.now_ns(), self._interval_s)
        day_dir = self._feed_dir / day_of(start)
        label = slot_label(start, self._interval_s)
        end = start + self._interval_s * NS
        slot_file: SlotFile = await retry_disk_full(
            self._run_sync,
            self.status,
            f"opening {day_dir.name}/{label}",
            SlotFile,
            day_dir,
            label,
            start,
            end,
            self._level,
            self._ops,
        )
        self.status.open_file = f"{day_dir.name}/{slot_file.name}"
        log.info("opened %s/%s.partial", day_dir.name, slot_file.name)
        return slot_file

    async def _finish_current(self) -> None:
        current = self._current
        if current is None:
            return
        final: Path = await retry_disk_full(
            self._run_sync, self.status, f"finishing {current.name}", current.finish
        )
        compressed_bytes = current.compressed_bytes
        self._current = None
        self.status.open_file = ""
        self.status.files += 1
        entry = FileEntry.from_stats(
            current.name, current.start_ns, current.end_ns, current.stats, compressed_bytes
        )
        log.info(
            "finished %s/%s: %d records, %d bytes compressed",
            final.parent.name,
            final.name,
            entry.records,
            entry.compressed_bytes,
        )
        await self._manifest_send.send(
            FileFinished(final.parent.name, entry, frozenset(current.stats.tickers))
        )

    async def _persist_gap(self, event: GapEvent) -> None:
        persisted = trio.Event()
        gap = Gap(event.after_seq, event.missing_count, iso(event.detected_ns), event.exact)
        await self._manifest_send.send(GapFound(day_of(event.detected_ns), gap, persisted))
        await persisted.wait()


def _merge(batches: list[Batch]) -> Batch:
    """Consecutive batches as one: their messages and gaps in order, the newest ack."""
    replies = [b.ack_reply for b in batches if b.ack_reply is not None]
    return Batch(
        [m for b in batches for m in b.messages],
        replies[-1] if replies else None,
        [g for b in batches for g in b.gaps],
    )


ACK_TIMEOUT_S = 2.0


async def run_acker(
    receive: trio.MemoryReceiveChannel[str],
    ack: Callable[[str], Awaitable[None]],
    status: WriterStatus,
) -> None:
    """Acknowledge fsynced batches. With AckAll only the newest reply matters, so
    whatever queued up behind a slow ack is coalesced into one."""
    async with receive:
        ended = False
        while not ended:
            try:
                reply = await receive.receive()
            except trio.EndOfChannel:
                return
            while True:
                try:
                    reply = receive.receive_nowait()
                except trio.WouldBlock:
                    break
                except trio.EndOfChannel:
                    ended = True
                    break
            try:
                with trio.fail_after(ACK_TIMEOUT_S):
                    await ack(reply)
                status.acks += 1
            except (NatsUnavailable, trio.TooSlowError) as exc:
                # Harmless: the messages are on disk; a redelivery is skipped by sequence.
                status.ack_failures += 1
                log.debug("ack failed (%s); a redelivery will be skipped", exc)


async def run_manifest_writer(
    feed_dir: Path,
    feed: str,
    interval_text: str,
    receive: trio.MemoryReceiveChannel[ManifestUpdate],
    status: WriterStatus,
    *,
    ops: FileOps | None = None,
    run_sync: RunSync = trio.to_thread.run_sync,
) -> None:
    ops = ops or FileOps()
    current: Manifest | None = None
    async with receive:
        async for update in receive:
            day_dir = feed_dir / update.day
            if current is None or current.date != update.day:
                current = await run_sync(load_or_new, day_dir, feed, interval_text)
            assert current is not None
            if isinstance(update, FileFinished):
                current.add_file(update.entry, update.tickers)
            else:
                current.add_gap(update.gap)
            await retry_disk_full(
                run_sync,
                status,
                f"writing {update.day}/manifest.json",
                write_manifest,
                day_dir,
                current,
                ops,
            )
            if isinstance(update, GapFound):
                update.persisted.set()
