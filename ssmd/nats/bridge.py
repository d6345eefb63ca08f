"""The NATS connection: its lifecycle, and the Trio face of everything nats-py does.

nats-py is asyncio-only and stays behind this module and its helpers:

- `loop.py`     the asyncio loop on its own thread, and cancellation of a call
- `types.py`    the values that cross, and the one map of nats-py errors
- `publish.py`  pipelined JetStream publishing
- `pull.py`     the credit-based pull consumer
- `admin.py`    streams and consumers

Trio code crosses once per *batch* (a fetch of up to N messages, an ack, a publish of N
messages), never per message: a crossing costs about 0.2 ms, so a per-message crossing
would cap throughput near 4k msg/s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import nats

from ssmd.deadline import shielded, time_left
from ssmd.nats import admin
from ssmd.nats.loop import AsyncioThread
from ssmd.nats.publish import AckInbox
from ssmd.nats.pull import PendingAck, PullConsumer, ack_reply_consumer, send_pending_ack
from ssmd.nats.types import (
    BACKFILLED_HEADER,
    RECV_NS_HEADER,
    ConsumerPosition,
    CoreMessage,
    NatsUnavailable,
    OutgoingMessage,
    PublishOutcome,
    StreamSpec,
    StreamState,
    as_unavailable,
)

log = logging.getLogger("ssmd.nats")

T = TypeVar("T")

CLOSE_TIMEOUT_S = 5.0
# Errors nats-py reports (an exception in a subscription callback, a slow consumer that
# dropped messages) are logged at most once per this many seconds per kind; all counted.
CLIENT_ERROR_LOG_INTERVAL_S = 60.0


class ClientErrors:
    """Counts nats-py's asynchronous errors by kind and logs them, rate-limited."""

    def __init__(self, interval_s: float = CLIENT_ERROR_LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.counts: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def record(self, exc: BaseException) -> None:
        kind = type(exc).__name__
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = time.monotonic()
        last = self._logged_at.get(kind)
        if last is not None and now - last < self.interval_s:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            return
        self._logged_at[kind] = now
        more = self._unlogged.pop(kind, 0)
        log.warning(
            "NATS client error: %s: %s%s",
            kind,
            exc,
            f" (and {more} more since the last report)" if more else "",
        )


class NatsBridge:
    """A nats-py connection hosted on an `AsyncioThread`, driven from Trio."""

    def __init__(self, thread: AsyncioThread, nc: Any, request_timeout: float) -> None:
        self._thread = thread
        self._nc = nc
        self._js = nc.jetstream(timeout=request_timeout)
        self._request_timeout = request_timeout
        self.reconnects = 0
        self.disconnects = 0
        self.closing = False
        self.client_errors = ClientErrors()
        self._acks: AckInbox | None = None
        # Each pull consumer's newest AckAll reply, sent with its next pull traffic.
        self._pending_acks: dict[tuple[str, str], PendingAck] = {}

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await self._thread.call(fn, *args)
        except Exception as exc:
            unavailable = as_unavailable(exc)
            if unavailable is None or unavailable is exc:
                raise
            raise unavailable from exc

    async def ack(self, reply: str) -> None:
        """Acknowledge a fetched message by its reply subject.

        The archiver's consumers use AckPolicy.ALL, so this acknowledges every message
        delivered before it too. For a consumer opened by `reset_consumer` the ack does
        not cross to the asyncio thread by itself: it waits (`PendingAck`) for that
        consumer's next pull traffic, which the fetcher makes at once, and replaces a
        waiting older ack. It is never confirmed: an ack that never arrives only means a
        redelivery, which the fetcher skips by sequence. A closed connection raises.
        """
        if self._nc.is_closed:
            raise NatsUnavailable("the NATS connection is closed")
        try:
            pending = self._pending_acks.get(ack_reply_consumer(reply))
        except ValueError:
            pending = None
        if pending is not None:
            pending.put(reply)
            return
        await self._call(self._nc.publish, reply, b"+ACK")

    def pending_ack(self, stream: str, durable: str) -> PendingAck:
        """Where `ack` leaves a consumer's newest AckAll; it counts the acks sent."""
        return self._pending_acks.setdefault((stream, durable), PendingAck())

    async def stream_state(self, stream: str) -> StreamState | None:
        return await self._call(admin.stream_state, self._js, stream)

    async def ensure_stream(self, spec: StreamSpec) -> tuple[StreamState, bool]:
        """The stream's state, creating it from `spec` if missing. True when created."""
        return await self._call(admin.ensure_stream, self._js, spec)

    async def delete_consumer(self, stream: str, durable: str) -> bool:
        """Delete a consumer; False when it did not exist."""
        return await self._call(admin.delete_consumer, self._js, stream, durable)

    async def consumer_ack_floor(self, stream: str, durable: str) -> int | None:
        return await self._call(admin.consumer_ack_floor, self._js, stream, durable)

    async def consumer_position(self, stream: str, durable: str) -> ConsumerPosition | None:
        """How far the consumer has been delivered, and what matches beyond; None if gone."""
        return await self._call(admin.consumer_position, self._js, stream, durable)

    async def reset_consumer(
        self,
        stream: str,
        durable: str,
        filter_subject: str,
        start_seq: int | None,
        ack_wait_s: float,
        max_ack_pending: int,
        linger_s: float = 0.0,
    ) -> PullConsumer:
        """(Re)create the durable consumer to start at `start_seq` and bind to it.

        The archive on disk is the cursor; the consumer only follows it. None starts at
        the beginning of the stream.
        """
        state = await self._call(
            admin.reset_pull_consumer,
            self._nc,
            self._js,
            stream,
            durable,
            filter_subject,
            start_seq,
            ack_wait_s,
            max_ack_pending,
            linger_s,
            self.pending_ack(stream, durable),
        )
        return PullConsumer(self._call, state)

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], timeout: float
    ) -> list[PublishOutcome]:
        """Publish with JetStream acks, pipelined; one outcome per message, in order."""
        return await self._call(self._publish_batch, messages, timeout)

    async def _publish_batch(
        self, messages: Sequence[OutgoingMessage], timeout: float
    ) -> list[PublishOutcome]:
        if self._acks is None:
            self._acks = AckInbox(self._nc)
            await self._acks.subscribe()
        return await self._acks.publish(messages, timeout)

    async def publish_core(self, messages: Sequence[CoreMessage]) -> None:
        """Core NATS publishes, then a flush: for replaying the archive to live
        subscribers (a JetStream stream on those subjects stores them too). Each carries
        its original receive time in `Ssmd-Recv-Ns`, when it has one."""
        await self._call(self._publish_core, messages)

    async def _publish_core(self, messages: Sequence[CoreMessage]) -> None:
        for m in messages:
            headers = None if m.recv_ns is None else {RECV_NS_HEADER: str(m.recv_ns)}
            if m.backfilled:
                headers = (headers or {}) | {BACKFILLED_HEADER: "1"}
            await self._nc.publish(m.subject, m.payload, headers=headers)
        await self._nc.flush(timeout=self._request_timeout)

    async def close(self) -> None:
        self.closing = True
        await self._thread.call(self._close)

    async def _close(self) -> None:
        for pending in list(self._pending_acks.values()):
            await send_pending_ack(self._nc, pending)  # written by close()
        with suppress(Exception):
            await self._nc.close()


async def _connect(
    servers: list[str],
    name: str,
    connect_timeout: float,
    on_event: Callable[[str], None],
    on_error: Callable[[Exception], None],
) -> Any:
    async def disconnected() -> None:
        on_event("disconnected")

    async def reconnected() -> None:
        on_event("reconnected")

    async def error(exc: Exception) -> None:
        on_error(exc)

    return await nats.connect(
        servers=servers,
        name=name,
        connect_timeout=connect_timeout,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=error,
        pending_size=64 * 1024 * 1024,
        ping_interval=5,
        max_outstanding_pings=3,
    )


@asynccontextmanager
async def open_bridge(
    servers: list[str],
    *,
    name: str = "ssmd",
    connect_timeout: float = 5.0,
    request_timeout: float = 5.0,
) -> AsyncIterator[NatsBridge]:
    """Connect to NATS on a fresh asyncio thread; close both on exit.

    Closing waits at most `CLOSE_TIMEOUT_S`, and never past the shutdown deadline.
    Raises NatsUnavailable when no server answers; callers that must wait for NATS
    retry around this.
    """
    thread = AsyncioThread()
    bridge: NatsBridge | None = None

    def on_event(event: str) -> None:
        if bridge is None or bridge.closing:
            return
        if event == "disconnected":
            bridge.disconnects += 1
            log.warning("NATS connection lost; nats-py is reconnecting")
        elif event == "reconnected":
            bridge.reconnects += 1
            log.info("NATS connection re-established")

    def on_error(exc: Exception) -> None:
        if bridge is not None and not bridge.closing:
            bridge.client_errors.record(exc)

    try:
        try:
            nc = await thread.call(_connect, servers, name, connect_timeout, on_event, on_error)
        except Exception as exc:
            unavailable = as_unavailable(exc)
            if unavailable is None:
                raise
            raise NatsUnavailable(f"cannot connect to NATS at {', '.join(servers)}: {exc}") from exc
        bridge = NatsBridge(thread, nc, request_timeout)
        try:
            yield bridge
        finally:
            with shielded(CLOSE_TIMEOUT_S):
                await bridge.close()
    finally:
        thread.stop(timeout=time_left(CLOSE_TIMEOUT_S))
