"""The JetStream fetcher: a durable pull consumer that follows the archive's cursor.

The archive on disk is the position; the consumer is recreated to start right after it
whenever the stream of deliveries cannot be trusted (start-up, a reconnect, a delivery
that never arrived), so a message delivered-but-lost can never be acknowledged by a
later AckAll. "Right after it" means after what the writer has fsynced, not after what
was forwarded: nats-server sets a new consumer's ack floor just below its start at once,
so creating it acts as an ack, and batches still queued for the writer would be lost to
a crash that follows. What was forwarded already is redelivered, skipped by sequence and
acked (in order, behind the batches that carry it).

Gaps: a jump in stream sequence is a gap only for messages that really left the stream.
With a filter that covers the whole stream every skipped sequence is this feed's loss
(deliveries are contiguous, so none was lost in transit). With a narrower filter:
- after a delivery that had nothing matching pending behind it, the archiver was caught
  up, so a jump only skips other subjects: never a gap (a quiet feed on a busy stream);
- right after (re)opening the consumer, or while behind, skipped sequences that have left
  the stream (below its first sequence) may have been this feed's: they are recorded as
  an upper bound (`exact: false`); those still in the stream belong to other subjects.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs
import trio

from ssmd.backoff import Backoff
from ssmd.clock import WallClock
from ssmd.nats.types import ConsumerPosition, FetchedMessage, NatsUnavailable

log = logging.getLogger("ssmd.archiver.fetcher")

# Re-opening the consumer while NATS is unavailable.
REOPEN_BACKOFF = Backoff(initial=0.1, maximum=5.0)
# Reading the stream's first sequence to classify a gap.
FIRST_SEQ_BACKOFF = Backoff(initial=0.5, maximum=1.5)
FIRST_SEQ_ATTEMPTS = 3
# While draining, a fetch waits no longer than this for what is still on its way.
DRAIN_FETCH_TIMEOUT_S = 0.2


@attrs.frozen
class GapEvent:
    after_seq: int
    missing_count: int
    detected_ns: int
    exact: bool


@attrs.frozen
class Batch:
    """Messages to archive, in stream order, and the reply subject that acks them.

    `ack_reply` may belong to a redelivered message that is not in `messages`; acking it
    after this batch is on disk is still safe, since everything before it is too.
    """

    messages: list[FetchedMessage]
    ack_reply: str | None
    gaps: list[GapEvent] = attrs.field(factory=list)


@attrs.frozen
class RotateTick:
    slot_start_ns: int


class Consumer(Protocol):
    async def fetch(self, batch: int, timeout: float) -> list[FetchedMessage]: ...
    async def close(self) -> None: ...


class ConsumerSource(Protocol):
    """What the fetcher needs from NATS: a consumer at a position, and stream facts."""

    @property
    def reconnects(self) -> int: ...
    async def open_at(self, start_seq: int | None) -> Consumer: ...
    async def first_seq(self) -> int: ...


@attrs.define
class Drain:
    """A stop that asks the fetcher to finish rather than be cancelled: it ends once it
    has taken every message the stream held for its filter when the drain began, closing
    its channel behind them.

    That end is read once from the consumer: the last delivery made to it (its consumer
    sequence), and how many matching messages lay beyond. It is counted in deliveries,
    not stream sequences: a consumer opened below the stream's first sequence reports a
    delivered stream sequence that no message of a narrow filter may ever reach. A
    reopened consumer numbers its deliveries afresh, so the end is read again. Messages
    published later (by another connector) are left for the next start rather than
    chased until the deadline."""

    position: Callable[[], Awaitable[ConsumerPosition | None]]
    requested: trio.Event = attrs.field(factory=trio.Event)
    target: ConsumerPosition | None = None
    # Messages forwarded beyond `target.consumer_seq` since the target was read.
    beyond: int = 0

    def reopened(self) -> None:
        self.target = None
        self.beyond = 0

    def count(self, consumer_seq: int) -> None:
        if self.target is not None and consumer_seq > self.target.consumer_seq:
            self.beyond += 1

    async def done(self, delivered: int) -> bool:
        """Whether everything up to the drain's end has been forwarded; `delivered` is
        the last delivery (consumer sequence) the fetcher has taken."""
        if self.target is None:
            self.target = await self.position()
            if self.target is None:
                return False  # the consumer is gone: the next fetch reports it and reopens
            log.info(
                "draining: taking through delivery %d (stream seq %d) and %d more matching "
                "message(s)",
                self.target.consumer_seq,
                self.target.delivered_seq,
                self.target.pending,
            )
        if delivered >= self.target.consumer_seq and self.beyond >= self.target.pending:
            log.info("drained: everything the stream held for the filter is taken")
            return True
        return False


@attrs.define
class FetcherStats:
    fetched: int = 0
    redelivered_skipped: int = 0
    consumer_resets: int = 0
    gaps: int = 0
    missing: int = 0
    nats_errors: int = 0
    # Messages matching the filter that the stream held beyond the last delivery, as its
    # ack subject reported: the archiver's backlog in the stream.
    pending: int = 0
    # Trio time of the loop's last turn: a health check sees a stuck fetcher.
    last_beat: float = 0.0


async def run_fetcher(
    source: ConsumerSource,
    cursor: int | None,
    send: trio.MemorySendChannel[Batch | RotateTick],
    *,
    batch_size: int,
    fetch_timeout: float,
    covers_stream: bool,
    clock: WallClock,
    stats: FetcherStats,
    durable: Callable[[], int | None],
    drain: Drain | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Forward batches from the stream, in order, after `cursor`; reports started once
    the consumer is first positioned. `durable` is the highest stream sequence the
    writer has fsynced since the start (None before its first fsync): a consumer is
    always (re)opened right after it (or after `cursor`, whichever is later)."""

    def archived() -> int | None:
        done = durable()
        if done is None or (cursor is not None and cursor > done):
            return cursor
        return done

    last = cursor
    started = False
    consumer: Consumer | None = None
    # A consumer is always freshly created, so its deliveries are numbered from 1.
    expected_delivery = 1
    # A jump right after (re)opening, or while behind, may be a loss; one after a
    # delivery with nothing pending behind it only skips other subjects.
    caught_up = False
    reconnects = source.reconnects
    retry = REOPEN_BACKOFF.retry()
    async with send:
        while True:
            stats.last_beat = trio.current_time()
            draining = drain is not None and drain.requested.is_set()
            try:
                if (
                    drain is not None
                    and draining
                    and consumer is not None
                    and await drain.done(expected_delivery - 1)
                ):
                    return
                if consumer is None:
                    reconnects = source.reconnects
                    after = archived()
                    consumer = await source.open_at(None if after is None else after + 1)
                    expected_delivery = 1
                    caught_up = False
                    if drain is not None:
                        drain.reopened()
                    stats.consumer_resets += 1
                    log.info(
                        "consumer positioned after stream seq %s (the archive's fsynced end)%s",
                        after,
                        ""
                        if last == after
                        else f"; seqs through {last} are still on their way to disk",
                    )
                    if not started:
                        started = True
                        task_status.started()
                timeout = min(fetch_timeout, DRAIN_FETCH_TIMEOUT_S) if draining else fetch_timeout
                msgs = await consumer.fetch(batch_size, timeout)
            except NatsUnavailable as exc:
                stats.nats_errors += 1
                delay = retry.next_delay()
                log.warning("NATS unavailable (%s); retrying in %.1fs", exc, delay)
                await _close_quietly(consumer)
                consumer = None
                await trio.sleep(delay)
                continue
            retry.reset()
            if msgs:
                stats.pending = msgs[-1].pending
            lost_delivery = False
            forwarded: list[FetchedMessage] = []
            ack_reply: str | None = None
            jumps: list[tuple[int, int]] = []
            for m in msgs:
                if m.consumer_seq != expected_delivery:
                    lost_delivery = True
                    log.warning(
                        "delivery %d never arrived (got %d); rewinding the consumer to the archive",
                        expected_delivery,
                        m.consumer_seq,
                    )
                    break
                expected_delivery = m.consumer_seq + 1
                ack_reply = m.reply
                if last is not None and m.stream_seq <= last:
                    stats.redelivered_skipped += 1
                    continue
                if (
                    last is not None
                    and m.stream_seq > last + 1
                    and (covers_stream or not caught_up)
                ):
                    jumps.append((last, m.stream_seq))
                forwarded.append(m)
                last = m.stream_seq
                if drain is not None:
                    drain.count(m.consumer_seq)
                caught_up = m.pending == 0
            stats.fetched += len(forwarded)
            gaps = await _classify(jumps, source, covers_stream, clock) if jumps else []
            for gap in gaps:
                stats.gaps += 1
                stats.missing += gap.missing_count
                log.warning(
                    "gap: %d message(s) after stream seq %d left the stream before they were archived%s",
                    gap.missing_count,
                    gap.after_seq,
                    "" if gap.exact else " (upper bound: filter covers part of the stream)",
                )
            if forwarded or ack_reply is not None or gaps:
                await send.send(Batch(forwarded, ack_reply, gaps))
            if lost_delivery or source.reconnects != reconnects:
                await _close_quietly(consumer)
                consumer = None


async def _close_quietly(consumer: Consumer | None) -> None:
    if consumer is not None:
        with contextlib.suppress(NatsUnavailable):
            await consumer.close()


async def _classify(
    jumps: list[tuple[int, int]], source: ConsumerSource, covers_stream: bool, clock: WallClock
) -> list[GapEvent]:
    now = clock.now_ns()
    if covers_stream:
        return [GapEvent(a, b - a - 1, now, True) for a, b in jumps]
    first: int | None = None
    retry = FIRST_SEQ_BACKOFF.retry()
    for _ in range(FIRST_SEQ_ATTEMPTS):
        try:
            first = await source.first_seq()
            break
        except NatsUnavailable:
            await retry.wait()
    if first is None:
        log.warning("cannot read the stream's first sequence; counting whole jumps as gaps")
        return [GapEvent(a, b - a - 1, now, False) for a, b in jumps]
    gaps = []
    for a, b in jumps:
        gone = min(b, first) - (a + 1)
        if gone > 0:
            gaps.append(GapEvent(a, gone, now, False))
    return gaps
