"""The only place that touches nats-py.

nats-py is asyncio-only. It runs on an asyncio loop in a thread of its own, and Trio
code calls across with `await bridge.<method>()`: one crossing per *batch* (a fetch of
up to N messages, an ack, a publish of N messages), never per message. A crossing costs
about 0.2 ms, so a per-message crossing would cap throughput near 4k msg/s.

Cancelling the Trio side cancels the asyncio task and waits for it to finish, so no
asyncio work outlives the Trio scope that started it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import attrs
import nats
import nats.errors
import nats.js.errors
import trio
from nats.js import api

log = logging.getLogger("ssmd.nats")

T = TypeVar("T")

_ACK_FLUSH_TIMEOUT_S = 1.0
# Pull requests ask for an idle heartbeat this often; a consumer that sends neither a
# message nor a heartbeat for `_PULL_SILENCE_HEARTBEATS` of them has lost its leader.
_PULL_HEARTBEAT_S = 1.0
_PULL_SILENCE_HEARTBEATS = 3
_CANCEL_WAIT_S = 10.0

MSG_ID_HEADER = "Nats-Msg-Id"
RECV_NS_HEADER = "Ssmd-Recv-Ns"


class NatsUnavailable(Exception):
    """NATS cannot be reached or did not answer in time; the caller retries."""


class StreamMissing(Exception):
    pass


@attrs.frozen(slots=True)
class FetchedMessage:
    subject: str
    data: bytes
    stream_seq: int
    consumer_seq: int
    delivered: int
    recv_ns: int | None
    reply: str
    # Messages matching the consumer's filter still in the stream after this one.
    pending: int = 0


@attrs.frozen
class StreamState:
    name: str
    subjects: list[str]
    first_seq: int
    last_seq: int
    messages: int
    retention: str


@attrs.frozen(slots=True)
class OutgoingMessage:
    subject: str
    payload: bytes
    msg_id: str
    recv_ns: int


@attrs.frozen(slots=True)
class PublishOutcome:
    """Result of one JetStream publish: stored (maybe as a duplicate) or failed."""

    stream_seq: int | None = None
    duplicate: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@attrs.frozen
class StreamSpec:
    name: str
    subjects: list[str]
    max_age_s: float
    max_bytes: int
    max_msgs: int
    duplicate_window_s: float
    replicas: int


def _outcome(f: asyncio.Future[api.PubAck] | PublishOutcome) -> PublishOutcome:
    if isinstance(f, PublishOutcome):
        return f
    if f.cancelled():
        return PublishOutcome(error="timed out waiting for the JetStream ack")
    error = f.exception()
    if error is not None:
        return PublishOutcome(error=f"{type(error).__name__}: {error}")
    ack = f.result()
    return PublishOutcome(stream_seq=ack.seq, duplicate=bool(ack.duplicate))


class AsyncioThread:
    """An asyncio event loop running on its own daemon thread."""

    def __init__(self) -> None:
        # A selector loop works even where a Trio-hosted asyncio policy is installed.
        self._loop = asyncio.SelectorEventLoop()
        self._thread = threading.Thread(target=self._run, name="ssmd-asyncio", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(*args)` on the asyncio loop and wait for it from Trio."""
        token = trio.lowlevel.current_trio_token()
        finished = trio.Event()
        holder: list[asyncio.Task[T]] = []

        def wake(_task: object) -> None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(finished.set)

        def start() -> None:
            task: asyncio.Task[T] = self._loop.create_task(fn(*args))  # type: ignore[arg-type]
            task.add_done_callback(wake)
            holder.append(task)

        self._loop.call_soon_threadsafe(start)
        try:
            await finished.wait()
        except BaseException:
            self._loop.call_soon_threadsafe(lambda: holder[0].cancel())
            with trio.CancelScope(shield=True), trio.move_on_after(_CANCEL_WAIT_S) as waited:
                await finished.wait()
            if waited.cancelled_caught:
                log.error(
                    "asyncio task did not finish within %.0fs of cancellation", _CANCEL_WAIT_S
                )
            raise
        return holder[0].result()

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def _stream_state(info: api.StreamInfo) -> StreamState:
    config = info.config
    state = info.state
    retention = getattr(config.retention, "value", config.retention) or "limits"
    return StreamState(
        name=config.name or "",
        subjects=list(config.subjects or []),
        first_seq=state.first_seq,
        last_seq=state.last_seq,
        messages=state.messages,
        retention=str(retention),
    )


def _parse_ack_reply(reply: str) -> tuple[int, int, int, int]:
    """(stream seq, consumer seq, delivery count, pending) from a JetStream ack subject.

    `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`, or the
    newer form with domain and account hash after `$JS.ACK` and a trailing token.
    """
    tokens = reply.split(".")
    base = 2 if len(tokens) == 9 else 4
    return (
        int(tokens[base + 3]),
        int(tokens[base + 4]),
        int(tokens[base + 2]),
        int(tokens[base + 6]),
    )


class ConsumerLost(NatsUnavailable):
    """The pull consumer is gone: deleted, no responders, or silent past its heartbeats."""


class _PullState:
    """Credit-based pulling on the asyncio side.

    nats-py's `fetch` spends two asyncio tasks per message, which caps it near 30k
    msg/s here. Instead, pull requests for `2 x batch` messages are kept outstanding on
    one inbox subscription, deliveries collect in a buffer, and each `fetch` hands over
    what has arrived. Credit is topped up as it is used; expired requests (status 408
    with a pending count) give theirs back.

    Pending pull requests live only on the consumer's leader. When that server dies
    (a clustered consumer moves to a new leader) they vanish without an answer, so the
    requests ask for idle heartbeats, and silence while credit is out means the
    consumer is lost.
    """

    def __init__(
        self, nc: Any, stream: str, durable: str, expires_s: float, linger_s: float
    ) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._expires_s = expires_s
        self._linger_s = linger_s
        self.inbox = nc.new_inbox()
        self.sub: Any = None
        self._buffer: deque[FetchedMessage] = deque()
        self._arrived = asyncio.Event()
        self._credit = 0
        self._credit_deadline = 0.0
        self._heard_at = 0.0
        self.lost = ""

    async def on_message(self, msg: Any) -> None:
        self._heard_at = asyncio.get_running_loop().time()
        headers = msg.headers
        if headers and not msg.data and "Status" in headers:
            status = headers["Status"]
            if status == "100":  # heartbeat / flow control
                return
            description = headers.get("Description", "")
            if status == "503" or (status == "409" and "deleted" in description.lower()):
                self.lost = f"{status} {description}".strip()
            pending = headers.get("Nats-Pending-Messages")
            if pending is not None and pending.isdigit():
                self._credit = max(0, self._credit - int(pending))
            else:
                self._credit = 0
            self._arrived.set()
            return
        self._credit -= 1
        stream_seq, consumer_seq, delivered, left = _parse_ack_reply(msg.reply)
        recv_ns: int | None = None
        if headers:
            raw = headers.get(RECV_NS_HEADER)
            if raw is not None and raw.isdigit():
                recv_ns = int(raw)
        self._buffer.append(
            FetchedMessage(
                msg.subject, msg.data, stream_seq, consumer_seq, delivered, recv_ns, msg.reply, left
            )
        )
        self._arrived.set()

    async def _top_up(self, batch: int) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() >= self._credit_deadline:
            self._credit = 0
        want = 2 * batch - self._credit - len(self._buffer)
        if want >= batch // 2 and want > 0:
            request = {
                "batch": want,
                "expires": int(self._expires_s * 1e9),
                "idle_heartbeat": int(_PULL_HEARTBEAT_S * 1e9),
            }
            await self._nc.publish(
                self._next_subject, json.dumps(request).encode(), reply=self.inbox
            )
            if self._credit <= 0:
                self._heard_at = loop.time()
            self._credit += want
            self._credit_deadline = loop.time() + self._expires_s - 0.05

    async def fetch(self, batch: int, timeout: float) -> list[FetchedMessage]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._top_up(batch)
        while not self._buffer:
            if self.lost:
                raise ConsumerLost(f"pull consumer lost: {self.lost}")
            silent = loop.time() - self._heard_at
            if self._credit > 0 and silent > _PULL_SILENCE_HEARTBEATS * _PULL_HEARTBEAT_S:
                raise ConsumerLost(
                    f"pull consumer silent for {silent:.1f}s (no message or heartbeat)"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return []
            await self._top_up(batch)
        if len(self._buffer) < batch and self._linger_s > 0:
            # Let a trickle build into a batch: at low rates this turns one fsync and
            # two thread crossings per message into one per few milliseconds.
            await asyncio.sleep(min(self._linger_s, max(deadline - loop.time(), 0)))
        n = min(batch, len(self._buffer))
        out = [self._buffer.popleft() for _ in range(n)]
        await self._top_up(batch)
        return out


_ACK_SEQ = re.compile(rb'"seq":(\d+)')


class _BatchAcks:
    def __init__(self, size: int) -> None:
        self.outcomes: list[PublishOutcome | None] = [None] * size
        self.remaining = size
        self.done = asyncio.Event()


class _AckInbox:
    """Pipelined JetStream publishing on one wildcard inbox.

    Each message is a core publish whose reply subject names its batch and position;
    the stream's acks come back on the inbox and fill the batch's outcomes. This is
    what `js.publish_async` does, without its per-message Future, semaphore, random
    token and PubAck object, which made it the connector's bottleneck.
    """

    def __init__(self, nc: Any) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._batches: dict[str, _BatchAcks] = {}
        self._next_batch = 0

    async def subscribe(self) -> None:
        await self._nc.subscribe(self._prefix + ".*.*", cb=self._on_ack, pending_msgs_limit=1 << 20)

    async def _on_ack(self, msg: Any) -> None:
        _, batch_id, index = msg.subject.rsplit(".", 2)
        batch = self._batches.get(batch_id)
        if batch is None:
            return  # a late ack for a batch that already timed out: it will be retried
        i = int(index)
        if batch.outcomes[i] is not None:
            return
        batch.outcomes[i] = _parse_pub_ack(msg)
        batch.remaining -= 1
        if batch.remaining == 0:
            batch.done.set()

    async def publish(
        self, messages: Sequence[OutgoingMessage], timeout: float
    ) -> list[PublishOutcome]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        batch_id = str(self._next_batch)
        self._next_batch += 1
        batch = _BatchAcks(len(messages))
        self._batches[batch_id] = batch
        reply_prefix = f"{self._prefix}.{batch_id}."
        publish = self._nc.publish
        try:
            for i, m in enumerate(messages):
                try:
                    await publish(
                        m.subject,
                        m.payload,
                        reply=reply_prefix + str(i),
                        headers={MSG_ID_HEADER: m.msg_id, RECV_NS_HEADER: str(m.recv_ns)},
                    )
                except Exception as exc:
                    if batch.outcomes[i] is None:
                        batch.outcomes[i] = PublishOutcome(error=f"{type(exc).__name__}: {exc}")
                        batch.remaining -= 1
                if loop.time() > deadline:
                    break
            if batch.remaining > 0:
                with suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await batch.done.wait()
        finally:
            del self._batches[batch_id]
        missing = PublishOutcome(error="timed out waiting for the JetStream ack")
        return [o if o is not None else missing for o in batch.outcomes]


def _parse_pub_ack(msg: Any) -> PublishOutcome:
    data: bytes = msg.data
    if not data:
        status = (msg.headers or {}).get("Status", "")
        if status == "503":
            return PublishOutcome(error="NoRespondersError: no stream for this subject")
        return PublishOutcome(error=f"empty JetStream reply (status {status or 'none'})")
    if b'"error"' in data:
        try:
            description = json.loads(data)["error"].get("description", "")
        except (ValueError, KeyError, AttributeError):
            description = data[:200].decode("utf-8", "replace")
        return PublishOutcome(error=f"APIError: {description}")
    match = _ACK_SEQ.search(data)
    if match is None:
        return PublishOutcome(error=f"unreadable JetStream ack: {data[:200]!r}")
    return PublishOutcome(stream_seq=int(match.group(1)), duplicate=b'"duplicate":true' in data)


class PullConsumer:
    """A durable pull consumer; `fetch` crosses the bridge once per batch."""

    def __init__(self, bridge: NatsBridge, state: _PullState) -> None:
        self._bridge = bridge
        self._state = state

    async def fetch(self, batch: int, timeout: float) -> list[FetchedMessage]:
        """Up to `batch` messages, in delivery order; empty when none came within `timeout`."""
        return await self._bridge._call(self._state.fetch, batch, timeout)

    async def close(self) -> None:
        await self._bridge._call(self._close)

    async def _close(self) -> None:
        with suppress(Exception):
            await self._state.sub.unsubscribe()


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
        self._acks: _AckInbox | None = None

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await self._thread.call(fn, *args)
        except (
            TimeoutError,
            nats.errors.TimeoutError,
            nats.errors.ConnectionClosedError,
            nats.errors.NoServersError,
            nats.errors.OutboundBufferLimitError,
            nats.errors.StaleConnectionError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.FlushTimeoutError,
            nats.js.errors.ServiceUnavailableError,
            nats.errors.NoRespondersError,
            ConnectionError,
            OSError,
        ) as exc:
            raise NatsUnavailable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        except nats.js.errors.APIError as exc:
            if exc.code in (503,):
                raise NatsUnavailable(f"JetStream unavailable: {exc.description}") from exc
            raise

    async def ack(self, reply: str) -> None:
        """Acknowledge a fetched message by its reply subject.

        The archiver's consumers use AckPolicy.ALL, so this acknowledges every message
        delivered before it too.
        """
        await self._call(self._ack, reply)

    async def _ack(self, reply: str) -> None:
        await self._nc.publish(reply, b"+ACK")
        await self._nc.flush(timeout=min(self._request_timeout, _ACK_FLUSH_TIMEOUT_S))

    async def stream_state(self, stream: str) -> StreamState | None:
        return await self._call(self._stream_state, stream)

    async def _stream_state(self, stream: str) -> StreamState | None:
        try:
            info = await self._js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return None
        return _stream_state(info)

    async def ensure_stream(self, spec: StreamSpec) -> tuple[StreamState, bool]:
        """The stream's state, creating it from `spec` if missing. True when created."""
        return await self._call(self._ensure_stream, spec)

    async def _ensure_stream(self, spec: StreamSpec) -> tuple[StreamState, bool]:
        try:
            return _stream_state(await self._js.stream_info(spec.name)), False
        except nats.js.errors.NotFoundError:
            pass
        config = api.StreamConfig(
            name=spec.name,
            subjects=spec.subjects,
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            max_age=spec.max_age_s or None,
            max_bytes=spec.max_bytes or None,
            max_msgs=spec.max_msgs,
            duplicate_window=spec.duplicate_window_s,
            num_replicas=spec.replicas,
        )
        try:
            info = await self._js.add_stream(config)
        except nats.js.errors.BadRequestError:
            # Another process created it between our look and our add.
            info = await self._js.stream_info(spec.name)
            return _stream_state(info), False
        return _stream_state(info), True

    async def delete_consumer(self, stream: str, durable: str) -> bool:
        """Delete a consumer; False when it did not exist."""
        return await self._call(self._delete_consumer, stream, durable)

    async def _delete_consumer(self, stream: str, durable: str) -> bool:
        try:
            await self._js.delete_consumer(stream, durable)
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def consumer_ack_floor(self, stream: str, durable: str) -> int | None:
        return await self._call(self._consumer_ack_floor, stream, durable)

    async def _consumer_ack_floor(self, stream: str, durable: str) -> int | None:
        try:
            info = await self._js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            return None
        floor = info.ack_floor
        return int(floor.stream_seq) if floor is not None and floor.stream_seq else None

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
            self._reset_consumer,
            stream,
            durable,
            filter_subject,
            start_seq,
            ack_wait_s,
            max_ack_pending,
            linger_s,
        )
        return PullConsumer(self, state)

    async def _reset_consumer(
        self,
        stream: str,
        durable: str,
        filter_subject: str,
        start_seq: int | None,
        ack_wait_s: float,
        max_ack_pending: int,
        linger_s: float,
    ) -> _PullState:
        with suppress(nats.js.errors.NotFoundError):
            await self._js.delete_consumer(stream, durable)
        if start_seq is None:
            policy, opt_start = api.DeliverPolicy.ALL, None
        else:
            policy, opt_start = api.DeliverPolicy.BY_START_SEQUENCE, start_seq
        config = api.ConsumerConfig(
            durable_name=durable,
            deliver_policy=policy,
            opt_start_seq=opt_start,
            ack_policy=api.AckPolicy.ALL,
            ack_wait=ack_wait_s,
            max_ack_pending=max_ack_pending,
            filter_subject=filter_subject,
            max_deliver=-1,
        )
        await self._js.add_consumer(stream, config)
        state = _PullState(
            self._nc, stream, durable, expires_s=max(ack_wait_s / 2, 5.0), linger_s=linger_s
        )
        state.sub = await self._nc.subscribe(
            state.inbox,
            cb=state.on_message,
            pending_msgs_limit=max_ack_pending * 4,
            pending_bytes_limit=512 * 1024 * 1024,
        )
        return state

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], timeout: float
    ) -> list[PublishOutcome]:
        """Publish with JetStream acks, pipelined; one outcome per message, in order."""
        return await self._call(self._publish_batch, messages, timeout)

    async def _publish_batch(
        self, messages: Sequence[OutgoingMessage], timeout: float
    ) -> list[PublishOutcome]:
        if self._acks is None:
            self._acks = _AckInbox(self._nc)
            await self._acks.subscribe()
        return await self._acks.publish(messages, timeout)

    async def publish_core(self, messages: Sequence[OutgoingMessage]) -> None:
        """Core NATS publishes, then a flush: for replaying the archive to live
        subscribers (a JetStream stream on those subjects stores them too). Each carries
        its original receive time in `Ssmd-Recv-Ns`."""
        await self._call(self._publish_core, messages)

    async def _publish_core(self, messages: Sequence[OutgoingMessage]) -> None:
        for m in messages:
            await self._nc.publish(m.subject, m.payload, headers={RECV_NS_HEADER: str(m.recv_ns)})
        await self._nc.flush(timeout=self._request_timeout)

    async def close(self) -> None:
        self.closing = True
        await self._thread.call(self._close)

    async def _close(self) -> None:
        with suppress(Exception):
            await self._nc.close()


async def _connect(
    servers: list[str],
    name: str,
    connect_timeout: float,
    on_event: Callable[[str], None],
    publish_window: int,
) -> Any:
    async def disconnected() -> None:
        on_event("disconnected")

    async def reconnected() -> None:
        on_event("reconnected")

    async def error(exc: Exception) -> None:
        log.debug("nats client error: %s", exc)

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
    publish_window: int = 4000,
) -> AsyncIterator[NatsBridge]:
    """Connect to NATS on a fresh asyncio thread; close both on exit.

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

    try:
        try:
            nc = await thread.call(
                _connect, servers, name, connect_timeout, on_event, publish_window
            )
        except (TimeoutError, nats.errors.NoServersError, OSError) as exc:
            raise NatsUnavailable(f"cannot connect to NATS at {', '.join(servers)}: {exc}") from exc
        bridge = NatsBridge(thread, nc, request_timeout)
        bridge._js = nc.jetstream(timeout=request_timeout, publish_async_max_pending=publish_window)
        try:
            yield bridge
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await bridge.close()
    finally:
        thread.stop()
