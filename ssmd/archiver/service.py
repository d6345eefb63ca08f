"""Wiring of the archiver role: checks, recovery, then five tasks on the supervisor.

    fetcher ──┐
              ├─ batches/ticks ─> writer ─ finished files/gaps ─> manifest writer
    rotation ─┘

The fetcher and the rotation timer are producers; the writer and manifest writer are
sinks that drain and finish the open file when the producers stop. Beside a connector
the fetcher is drained rather than cancelled: it first takes what the stream holds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from ssmd.archiver.fetcher import (
    Batch,
    Consumer,
    Drain,
    FetcherStats,
    RotateTick,
    run_fetcher,
)
from ssmd.archiver.files import FileOps
from ssmd.archiver.recovery import ArchiveLocked, lock_feed_dir, recover_feed, resume_cursor
from ssmd.archiver.slots import NS, slot_start
from ssmd.archiver.writer import (
    ArchiveWriter,
    ManifestUpdate,
    WriterStatus,
    run_acker,
    run_manifest_writer,
)
from ssmd.clock import WallClock
from ssmd.config import ArchiverConfig, Config
from ssmd.metrics import FunctionCollector, merge_families
from ssmd.nats.bridge import NatsBridge
from ssmd.nats.pull import PendingAck
from ssmd.subjects import pattern_covers, patterns_intersect
from ssmd.supervisor import StartupRefused, Supervisor

log = logging.getLogger("ssmd.archiver")

BatchSource = Callable[[trio.MemorySendChannel[Batch | RotateTick]], Awaitable[None]]


@attrs.frozen
class PipelineSettings:
    feed_dir: Path
    feed: str
    interval_s: int
    interval_text: str
    compression_level: int = 6
    queue_batches: int = 4
    # Task names start with it: `archiver`, or `archiver.{feed}` beside other archivers.
    name: str = "archiver"


@attrs.define
class ArchiverStatus:
    writer: WriterStatus = attrs.field(factory=WriterStatus)
    fetcher: FetcherStats = attrs.field(factory=FetcherStats)
    cursor: int | None = None
    # The acks the bridge really sent (the writer counts those handed over).
    wire_acks: PendingAck | None = None


async def run_rotation_timer(
    clock: WallClock, interval_s: int, send: trio.MemorySendChannel[Batch | RotateTick]
) -> None:
    """Tick at every slot boundary so a slot closes on time even with no traffic."""
    async with send:
        while True:
            boundary = slot_start(clock.now_ns(), interval_s) + interval_s * NS
            await clock.sleep_until(boundary)
            await send.send(RotateTick(boundary))


def start_pipeline(
    sup: Supervisor,
    settings: PipelineSettings,
    clock: WallClock,
    source: BatchSource,
    ack: Callable[[str], Awaitable[None]],
    status: ArchiverStatus,
    *,
    ops: FileOps | None = None,
    run_sync: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync,
    on_exit: Callable[[], None] | None = None,
    drain: Callable[[], None] | None = None,
    source_reports_ready: bool = False,
) -> None:
    """Start the archiver's tasks; `source` feeds batches (the fetcher, or a test).

    A stop cancels `source`, or calls `drain` when given: `source` then ends by itself
    once it has taken what there is. With `source_reports_ready`, `source` takes
    `task_status` and the archiver is up once it has called `started()`."""
    batch_send, batch_receive = trio.open_memory_channel[Batch | RotateTick](settings.queue_batches)
    manifest_send, manifest_receive = trio.open_memory_channel[ManifestUpdate](16)
    ack_send, ack_receive = trio.open_memory_channel[str](1024)
    writer = ArchiveWriter(
        settings.feed_dir,
        settings.interval_s,
        settings.compression_level,
        clock,
        ack_send,
        manifest_send,
        status.writer,
        ops=ops,
        run_sync=run_sync,
    )

    async def manifest_task() -> None:
        try:
            await run_manifest_writer(
                settings.feed_dir,
                settings.feed,
                settings.interval_text,
                manifest_receive,
                status.writer,
                ops=ops,
                run_sync=run_sync,
            )
        finally:
            if on_exit is not None:
                on_exit()

    name = settings.name
    sup.start_sink(f"{name}.manifest", manifest_task)
    sup.start_sink(f"{name}.writer", writer.run, batch_receive)
    sup.start_sink(f"{name}.acker", run_acker, ack_receive, ack, status.writer)
    sup.start_producer(
        f"{name}.rotation", run_rotation_timer, clock, settings.interval_s, batch_send.clone()
    )
    sup.start_producer(
        f"{name}.fetcher", source, batch_send, drain=drain, reports_ready=source_reports_ready
    )


class StreamChanged(Exception):
    """The stream was deleted or recreated under the archiver: a stop, not a retry."""


class JetStreamConsumers:
    """Opens the durable pull consumer at a position (the `ConsumerSource` for NATS)."""

    def __init__(
        self, bridge: NatsBridge, config: Config, archiver: ArchiverConfig | None = None
    ) -> None:
        archiver = archiver or config.archiver
        assert archiver is not None
        self._bridge = bridge
        self._stream = config.nats.stream
        self._archiver = archiver

    @property
    def reconnects(self) -> int:
        return self._bridge.reconnects

    async def open_at(self, start_seq: int | None) -> Consumer:
        state = await self._bridge.stream_state(self._stream)
        if state is None:
            raise StreamChanged(
                f"stream {self._stream!r} no longer exists; not archiving into the void"
            )
        if start_seq is not None and state.last_seq < start_seq - 1:
            raise StreamChanged(
                f"stream {self._stream!r} now ends at seq {state.last_seq}, before the archive's "
                f"{start_seq - 1}: it was recreated. Move the archive aside to start a new one"
            )
        a = self._archiver
        return await self._bridge.reset_consumer(
            self._stream,
            a.consumer,
            a.filter,
            start_seq,
            a.ack_wait.seconds,
            max_ack_pending=a.batch_size * (a.queue_batches + 4),
            linger_s=a.linger.seconds,
        )

    async def first_seq(self) -> int:
        state = await self._bridge.stream_state(self._stream)
        return state.first_seq if state is not None else 0


async def start_archiver(
    sup: Supervisor,
    config: Config,
    bridge: NatsBridge,
    clock: WallClock,
    *,
    status: ArchiverStatus | None = None,
    ops: FileOps | None = None,
    drain_on_stop: bool = False,
    archiver: ArchiverConfig | None = None,
    name: str = "archiver",
    register_metrics: bool = True,
) -> ArchiverStatus:
    """Check, recover, and start one archiver's tasks: `archiver` (default: the config's
    first), its tasks, health and readiness checks named `name`.

    With `drain_on_stop` (a connector runs in the same process and stops first), a stop
    lets the fetcher take what the stream holds before it ends; without, it is cancelled
    at once and what is left waits in the stream for the next start. Without
    `register_metrics` the caller collects `archiver_metrics` itself (several archivers
    share one collector, so each metric is one family)."""
    archiver = archiver or config.archiver
    storage = config.storage
    assert archiver is not None and storage is not None
    status = status or ArchiverStatus()
    stream = config.nats.stream

    state = await bridge.stream_state(stream)
    if state is None:
        raise StartupRefused(
            f"stream {stream!r} does not exist on {', '.join(config.nats.servers)}; "
            "the archiver never creates or changes streams (the connector creates it)"
        )
    if not any(patterns_intersect(archiver.filter, s) for s in state.subjects):
        raise StartupRefused(
            f"archiver.filter {archiver.filter!r} cannot match any subject of stream {stream!r} "
            f"(its subjects: {', '.join(state.subjects) or 'none'}); nothing would be archived"
        )
    covers = all(pattern_covers(archiver.filter, s) for s in state.subjects)

    feed = archiver.feed
    feed_dir = Path(storage.path) / feed
    interval_s = int(config.rotation.interval.seconds)
    file_ops = ops or FileOps()
    try:
        lock_fd = lock_feed_dir(feed_dir)
    except ArchiveLocked as exc:
        raise StartupRefused(str(exc)) from None
    except OSError as exc:
        raise StartupRefused(f"cannot use storage.path {storage.path!r}: {exc.strerror}") from None

    def unlock() -> None:
        os.close(lock_fd)

    try:
        report = await trio.to_thread.run_sync(
            recover_feed,
            feed_dir,
            feed,
            interval_s,
            config.rotation.interval.text,
            archiver.compression_level,
            file_ops,
        )
        floor = await bridge.consumer_ack_floor(stream, archiver.consumer)
    except BaseException:
        unlock()
        raise
    cursor = resume_cursor(report.cursor, floor)
    if cursor is not None and state.last_seq < cursor:
        unlock()
        raise StartupRefused(
            f"stream {stream!r} ends at seq {state.last_seq} but the archive in {feed_dir} "
            f"already holds up to seq {cursor}: the stream was recreated. Move the archive "
            "aside (or point storage.path elsewhere) to start a new one"
        )
    status.cursor = cursor
    status.wire_acks = bridge.pending_ack(stream, archiver.consumer)
    log.info(
        "archiving %s from stream %s (filter %s) into %s; resuming after seq %s%s",
        feed,
        stream,
        archiver.filter,
        feed_dir,
        cursor,
        f"; salvaged {len(report.salvaged)} leftover file(s)" if report.salvaged else "",
    )

    source = JetStreamConsumers(bridge, config, archiver)
    drain = Drain(partial(bridge.consumer_position, stream, archiver.consumer))

    async def fetcher(
        send: trio.MemorySendChannel[Batch | RotateTick],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await run_fetcher(
            source,
            cursor,
            send,
            batch_size=archiver.batch_size,
            fetch_timeout=archiver.fetch_timeout.seconds,
            covers_stream=covers,
            clock=clock,
            stats=status.fetcher,
            durable=lambda: status.writer.durable_seq,
            drain=drain if drain_on_stop else None,
            task_status=task_status,
        )

    settings = PipelineSettings(
        feed_dir=feed_dir,
        feed=feed,
        interval_s=interval_s,
        interval_text=config.rotation.interval.text,
        compression_level=archiver.compression_level,
        queue_batches=archiver.queue_batches,
        name=name,
    )
    stall_after = max(30.0, 5 * archiver.fetch_timeout.seconds)

    def health() -> str | None:
        if status.writer.disk_full.value:
            return "disk full: archiving paused"
        silent = trio.current_time() - status.fetcher.last_beat
        if silent > stall_after:
            return f"fetcher made no progress for {silent:.0f}s"
        return None

    def readiness() -> str | None:
        # Until its consumer is first positioned the fetcher reports itself starting.
        return "disk full" if status.writer.disk_full.value else None

    status.fetcher.last_beat = trio.current_time()
    sup.add_health_check(name, health)
    sup.add_readiness_check(name, readiness)
    if register_metrics:
        from ssmd.archiver.metrics import archiver_metrics

        sup.metrics.register(FunctionCollector(lambda: archiver_metrics(feed, status)))
    start_pipeline(
        sup,
        settings,
        clock,
        fetcher,
        bridge.ack,
        status,
        ops=file_ops,
        on_exit=unlock,
        drain=drain.requested.set if drain_on_stop else None,
        source_reports_ready=True,
    )
    return status


async def start_archivers(
    sup: Supervisor,
    config: Config,
    bridge: NatsBridge,
    clock: WallClock,
    *,
    drain_on_stop: bool = False,
) -> dict[str, ArchiverStatus]:
    """Start every configured archiver (`[archiver]` or each `[[archiver]]`): its own
    durable consumer, fetcher, writer and manifest; their status by feed.

    One archiver keeps the task and check names `archiver.*`; beside others each is
    `archiver.{feed}.*`. Their metrics are one collector: one family per metric, one
    sample per feed."""
    from ssmd.archiver.metrics import archiver_metrics

    several = len(config.archivers) > 1
    statuses: dict[str, ArchiverStatus] = {}
    for archiver in config.archivers:
        statuses[archiver.feed] = await start_archiver(
            sup,
            config,
            bridge,
            clock,
            drain_on_stop=drain_on_stop,
            archiver=archiver,
            name=f"archiver.{archiver.feed}" if several else "archiver",
            register_metrics=False,
        )

    def collect() -> Iterator[object]:
        return merge_families(
            family for feed, status in statuses.items() for family in archiver_metrics(feed, status)
        )

    sup.metrics.register(FunctionCollector(collect))
    return statuses
