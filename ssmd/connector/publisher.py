"""The publisher sink: from the WebSocket readers to JetStream, acknowledged.

    readers ─ [Inbound] ─> intake ─> bounded buffer ─> sender ─ publish_batch ─> JetStream

The intake task only moves messages from the channel into the buffer, so a reader
never waits on NATS. The sender publishes whatever is buffered (up to `batch_max`) in
one bridge crossing and removes a message only once JetStream has acknowledged it;
failed messages stay at the front and are retried, with the same `Nats-Msg-Id`, until
acknowledged, so the stream's duplicate window drops any retry that was in fact stored.
Retries start with the oldest message alone, so a stream that comes back part-way
through a batch does not store that batch's tail before its head. (A batch in which only
some acks time out can still land out of order; `_recv_ns` keeps the true order.)

When the buffer is full (NATS unreachable for long), *new* messages are dropped and
counted. What was buffered stays intact, and an overflow record with the count is
queued right behind it, so the archive shows the hole exactly where it is.
"""

from __future__ import annotations

import collections
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio

from ssmd.backoff import Backoff
from ssmd.clock import WallClock
from ssmd.connector.records import (
    DiscontinuityRecord,
    OverflowRecord,
    RejectedRecord,
    record_json,
)
from ssmd.metrics import LatencyHistogram
from ssmd.nats.linger import stretch
from ssmd.nats.types import NatsUnavailable, OutgoingMessage, PublishOutcome
from ssmd.subjects import discontinuity_subject, split_subject

log = logging.getLogger("ssmd.connector.publisher")

# Tickers come and go (new markets are listed every hour), so per-subject ack counts are
# folded into per-type totals once this many subjects have piled up.
SUBJECT_COUNT_LIMIT = 10_000

# Between attempts to publish what JetStream did not acknowledge.
PUBLISH_RETRY = Backoff(initial=0.05, maximum=2.0)

PublishBatch = Callable[[Sequence[OutgoingMessage], float], Awaitable[list[PublishOutcome]]]


def is_permanent(error: str) -> bool:
    """Errors that retrying cannot fix; such a message would block the pipeline forever."""
    text = error.lower()
    return error.startswith("MaxPayloadError") or (
        error.startswith("APIError") and ("exceeds maximum" in text or "maximum payload" in text)
    )


@attrs.frozen(slots=True)
class Inbound:
    """One message for the stream, as received: subject, exact bytes, receive time."""

    subject: str
    payload: bytes
    recv_ns: int
    # Fetched from the venue's REST API after a loss, not received live (trade backfill).
    backfilled: bool = False
    # A content-derived `Nats-Msg-Id` for a message every connection receives a copy of
    # (the stream's duplicate window keeps one); None: a fresh id.
    msg_id: str | None = None


def record_message(env: str, feed: str, record: DiscontinuityRecord) -> Inbound:
    return Inbound(discontinuity_subject(env, feed, record.kind), record_json(record), record.ts_ns)


@attrs.define
class PublisherStats:
    received: int = 0
    acked: int = 0
    duplicates: int = 0
    retried: int = 0
    failed_batches: int = 0
    dropped: int = 0
    dropped_bytes: int = 0
    rejected: int = 0
    overflow_records: int = 0
    # Messages marked backfilled the intake took, and of those the ones it dropped (the
    # trade backfill checks its own were all accepted before it says `repaired`).
    backfilled: int = 0
    backfilled_dropped: int = 0
    last_ack_at: float = 0.0
    # Per subject, so the per-message cost is one increment; types are derived on scrape.
    acked_subjects: collections.Counter[str] = attrs.field(factory=collections.Counter)
    # What was folded out of `acked_subjects` when it reached SUBJECT_COUNT_LIMIT.
    acked_types: collections.Counter[str] = attrs.field(factory=collections.Counter)
    ack_seconds: LatencyHistogram = attrs.field(factory=LatencyHistogram)

    def acked_by_type(self) -> collections.Counter[str]:
        """Acknowledged messages by subject type."""
        out = collections.Counter(self.acked_types)
        for subject, n in list(self.acked_subjects.items()):
            out[split_subject(subject)[0]] += n
        return out

    def fold_subjects(self) -> None:
        self.acked_types = self.acked_by_type()
        self.acked_subjects.clear()


@attrs.define
class _Overflow:
    dropped: int = 0
    dropped_bytes: int = 0
    first_recv_ns: int = 0
    last_recv_ns: int = 0


class Publisher:
    def __init__(
        self,
        publish_batch: PublishBatch,
        *,
        env: str,
        feed: str,
        clock: WallClock,
        buffer_messages: int,
        buffer_bytes: int,
        batch_max: int,
        timeout: float,
        linger: float = 0.0,
        retry: Backoff = PUBLISH_RETRY,
        run_id: str | None = None,
    ) -> None:
        self._publish_batch = publish_batch
        self._env = env
        self._feed = feed
        self._clock = clock
        self._buffer_messages = buffer_messages
        self._buffer_bytes = buffer_bytes
        self._batch_max = batch_max
        self._timeout = timeout
        self._linger = linger
        self._retry = retry
        self.run_id = run_id or secrets.token_hex(8)
        self._counter = 0
        self._buffer: collections.deque[OutgoingMessage] = collections.deque()
        self._buffered_bytes = 0
        self._has_work = trio.Event()
        self._input_closed = False
        self._overflow: _Overflow | None = None
        self.stats = PublisherStats()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def room(self) -> tuple[int, int]:
        """Messages and bytes the buffer can still take."""
        return (
            self._buffer_messages - len(self._buffer),
            self._buffer_bytes - self._buffered_bytes,
        )

    async def run(self, receive: trio.MemoryReceiveChannel[list[Inbound]]) -> None:
        """Publish until `receive` is closed and everything buffered is acknowledged."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._intake, receive)
                await self._send_loop()
        except trio.Cancelled:
            if self._buffer:
                log.error(
                    "stopped before NATS acknowledged %d buffered messages; they are lost "
                    "(raise service.shutdown_timeout to give the drain longer)",
                    len(self._buffer),
                )
            raise
        log.info(
            "publisher finished: %d acknowledged, %d dropped", self.stats.acked, self.stats.dropped
        )

    async def _intake(self, receive: trio.MemoryReceiveChannel[list[Inbound]]) -> None:
        async with receive:
            async for batch in receive:
                for item in batch:
                    self._accept(item)
        self._close_overflow()
        self._input_closed = True
        self._has_work.set()

    def _next_id(self) -> str:
        self._counter += 1
        return f"{self.run_id}-{self._counter}"

    def _append(self, item: Inbound) -> None:
        self._buffer.append(
            OutgoingMessage(
                item.subject,
                item.payload,
                item.msg_id or self._next_id(),
                item.recv_ns,
                item.backfilled,
            )
        )
        self._buffered_bytes += len(item.payload)
        self._has_work.set()

    def _accept(self, item: Inbound) -> None:
        self.stats.received += 1
        if item.backfilled:
            self.stats.backfilled += 1
        size = len(item.payload)
        if (
            len(self._buffer) >= self._buffer_messages
            or self._buffered_bytes + size > self._buffer_bytes
        ):
            if item.backfilled:
                self.stats.backfilled_dropped += 1
            if self._overflow is None:
                self._overflow = _Overflow(first_recv_ns=item.recv_ns)
                log.warning(
                    "publish buffer full (%d messages, %d bytes): dropping new messages "
                    "until NATS catches up",
                    len(self._buffer),
                    self._buffered_bytes,
                )
            self._overflow.dropped += 1
            self._overflow.dropped_bytes += size
            self._overflow.last_recv_ns = item.recv_ns
            self.stats.dropped += 1
            self.stats.dropped_bytes += size
            return
        self._close_overflow()
        self._append(item)

    def _close_overflow(self) -> None:
        """Queue the overflow record for the drops so far, behind what was buffered."""
        overflow = self._overflow
        if overflow is None:
            return
        self._overflow = None
        record = OverflowRecord(
            dropped=overflow.dropped,
            dropped_bytes=overflow.dropped_bytes,
            first_recv_ns=overflow.first_recv_ns,
            last_recv_ns=overflow.last_recv_ns,
            ts_ns=self._clock.now_ns(),
        )
        log.error("publish buffer overflowed: %d messages dropped", overflow.dropped)
        self.stats.overflow_records += 1
        self._append(record_message(self._env, self._feed, record))

    async def _send_loop(self) -> None:
        failures = 0
        while True:
            if not self._buffer:
                if self._input_closed:
                    return
                self._has_work = trio.Event()
                await self._has_work.wait()
                continue
            if self._linger and len(self._buffer) < self._batch_max and not self._input_closed:
                # Let a trickle build into a batch: one bridge crossing per few
                # milliseconds instead of one per message at low rates.
                await trio.sleep(self._linger)
                more = stretch(self._linger, len(self._buffer))
                if more > 0 and len(self._buffer) < self._batch_max and not self._input_closed:
                    await trio.sleep(more)
            # After a failure a single message probes the stream. A full batch could be
            # in flight when the stream comes back (a new leader elected): its refused
            # head would then be stored after its tail, out of order.
            count = min(len(self._buffer), self._batch_max if failures == 0 else 1)
            batch = [self._buffer[i] for i in range(count)]
            outcomes = await self._publish(batch)
            for _ in range(count):
                self._buffer.popleft()
            retry: list[OutgoingMessage] = []
            for message, outcome in zip(batch, outcomes, strict=True):
                if outcome.ok:
                    self.stats.acked += 1
                    self.stats.acked_subjects[message.subject] += 1
                    self.stats.duplicates += outcome.duplicate
                    self._buffered_bytes -= len(message.payload)
                elif outcome.error and is_permanent(outcome.error):
                    self.stats.rejected += 1
                    self._buffered_bytes -= len(message.payload)
                    log.error(
                        "JetStream refused %s (%d bytes) for good: %s",
                        message.subject,
                        len(message.payload),
                        outcome.error,
                    )
                    record = RejectedRecord(
                        message.subject,
                        len(message.payload),
                        outcome.error,
                        message.recv_ns,
                        self._clock.now_ns(),
                    )
                    self._append(record_message(self._env, self._feed, record))
                else:
                    retry.append(message)
            if len(self.stats.acked_subjects) >= SUBJECT_COUNT_LIMIT:
                self.stats.fold_subjects()
            if not retry:
                failures = 0
                continue
            self._buffer.extendleft(reversed(retry))
            self.stats.retried += len(retry)
            self.stats.failed_batches += 1
            first_error = next(o.error for o in outcomes if not o.ok)
            delay = self._retry.delay(failures)
            failures += 1
            log_fn = log.warning if failures in (1, 10) or failures % 100 == 0 else log.debug
            log_fn(
                "%d of %d messages not acknowledged (%s); retrying in %.2fs (attempt %d, %d buffered)",
                len(retry),
                count,
                first_error,
                delay,
                failures,
                len(self._buffer),
            )
            await trio.sleep(delay)

    async def _publish(self, batch: list[OutgoingMessage]) -> list[PublishOutcome]:
        error = "timed out waiting for the bridge"
        with trio.move_on_after(self._timeout * 2 + 1):
            try:
                started = trio.current_time()
                outcomes = await self._publish_batch(batch, self._timeout)
                self.stats.ack_seconds.observe(trio.current_time() - started)
                if any(o.ok for o in outcomes):
                    self.stats.last_ack_at = trio.current_time()
            except NatsUnavailable as exc:
                error = f"NATS unavailable: {exc}"
            else:
                if len(outcomes) == len(batch):
                    return outcomes
                error = f"bridge returned {len(outcomes)} outcomes for {len(batch)} messages"
        return [PublishOutcome(error=error)] * len(batch)
