"""Credit-based pulling from a durable JetStream consumer.

nats-py's `fetch` spends two asyncio tasks per message, which caps it near 30k msg/s
here. Instead, pull requests for `2 x batch` messages are kept outstanding on one inbox
subscription, deliveries collect in a buffer, and each `fetch` hands over what has
arrived. Credit is topped up as it is used; expired requests (status 408 with a pending
count) give theirs back.

Pending pull requests live only on the consumer's leader. When that server dies (a
clustered consumer moves to a new leader) they vanish without an answer, so the
requests ask for idle heartbeats, and silence while credit is out means the consumer
is lost.

`PullCredit` and `parse_ack_reply` are the protocol, free of I/O; `PullState` does the
asyncio side; `PullConsumer` is the Trio handle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from typing import Any, TypeVar

from ssmd.nats.linger import stretch
from ssmd.nats.types import BACKFILLED_HEADER, RECV_NS_HEADER, ConsumerLost, FetchedMessage

T = TypeVar("T")

log = logging.getLogger("ssmd.nats")

# Pull requests ask for an idle heartbeat this often; a consumer that sends neither a
# message nor a heartbeat for `SILENCE_HEARTBEATS` of them has lost its leader.
HEARTBEAT_S = 1.0
SILENCE_HEARTBEATS = 3
# A request is treated as expired this much before the server expires it.
_EXPIRY_MARGIN_S = 0.05


def parse_ack_reply(reply: str) -> tuple[int, int, int, int]:
    """(stream seq, consumer seq, delivery count, pending) from a JetStream ack subject.

    `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`, or the
    newer form with domain and account hash after `$JS.ACK` and a trailing token (as in
    nats-py, 11 tokens or more). Anything else is a ValueError naming the subject.
    """
    tokens = reply.split(".")
    if tokens[:2] != ["$JS", "ACK"] or not (len(tokens) == 9 or len(tokens) >= 11):
        raise ValueError(
            f"not a JetStream ack subject (expected $JS.ACK and 9 or 11+ tokens): {reply!r}"
        )
    base = 2 if len(tokens) == 9 else 4
    return (
        int(tokens[base + 3]),
        int(tokens[base + 4]),
        int(tokens[base + 2]),
        int(tokens[base + 6]),
    )


def ack_reply_consumer(reply: str) -> tuple[str, str]:
    """(stream, consumer) a JetStream ack subject belongs to; ValueError if it is none."""
    tokens = reply.split(".")
    if tokens[:2] != ["$JS", "ACK"] or not (len(tokens) == 9 or len(tokens) >= 11):
        raise ValueError(f"not a JetStream ack subject: {reply!r}")
    base = 2 if len(tokens) == 9 else 4
    return tokens[base], tokens[base + 1]


class PendingAck:
    """The newest AckAll reply of one consumer, waiting to ride along with its next
    pull traffic: put from Trio, taken on the asyncio side.

    With AckAll the newest reply acknowledges everything before it, so a reply that is
    replaced before it was sent is not needed. It goes out when the pull state next
    runs: a fetch call (the fetcher calls again as soon as it has handed over a batch,
    and a waiting fetch returns within `fetch_timeout`) or a delivery that wakes a
    waiting fetch; and at the latest when the bridge closes. So it costs no thread
    crossing of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reply: str | None = None
        # Acks really written to the connection, and those whose publish failed.
        self.sent = 0
        self.failed = 0

    def put(self, reply: str) -> None:
        with self._lock:
            self._reply = reply

    def take(self) -> str | None:
        with self._lock:
            reply, self._reply = self._reply, None
        return reply


async def send_pending_ack(nc: Any, acks: PendingAck) -> None:
    """Publish the waiting ack, if any (asyncio side; goes out with nats-py's next write)."""
    reply = acks.take()
    if reply is not None:
        try:
            await nc.publish(reply, b"+ACK")
        except Exception:
            # The messages are on disk; a redelivery is skipped by sequence.
            acks.failed += 1
            log.debug("ack %s not sent", reply, exc_info=True)
        else:
            acks.sent += 1


class PullCredit:
    """How many deliveries the outstanding pull requests may still bring, and when the
    consumer was last heard from. Times are the caller's monotonic clock."""

    def __init__(self, expires_s: float) -> None:
        self.expires_s = expires_s
        self.credit = 0
        self.expires_at = 0.0
        self.heard_at = 0.0

    def request_size(self, batch: int, buffered: int, now: float) -> int:
        """Messages to ask for now (0: none) to keep `2 x batch` on the way or buffered.

        Asks only for at least half a batch, so a steady trickle does not become one
        request per message."""
        if now >= self.expires_at:
            self.credit = 0
        want = 2 * batch - self.credit - buffered
        return want if want > 0 and want >= batch // 2 else 0

    def requested(self, n: int, now: float) -> None:
        if self.credit <= 0:
            # Silence is counted from the first request that has credit out.
            self.heard_at = now
        self.credit += n
        self.expires_at = now + self.expires_s - _EXPIRY_MARGIN_S

    def heard(self, now: float) -> None:
        self.heard_at = now

    def delivered(self) -> None:
        self.credit -= 1

    def request_ended(self, pending: int | None) -> None:
        """A request ended (expired, or refused) with `pending` of its messages undelivered;
        None when the server did not say (all credit is then given up)."""
        self.credit = 0 if pending is None else max(0, self.credit - pending)

    def silent_for(self, now: float) -> float:
        """Seconds of silence while credit is out; 0 when none is out."""
        return now - self.heard_at if self.credit > 0 else 0.0

    def lost(self, now: float) -> bool:
        return self.silent_for(now) > SILENCE_HEARTBEATS * HEARTBEAT_S


def status_lost(status: str, description: str) -> bool:
    """Whether a pull status reply means the consumer is gone."""
    return status == "503" or (status == "409" and "deleted" in description.lower())


def recv_ns_of(headers: Mapping[str, str] | None) -> int | None:
    if headers:
        raw = headers.get(RECV_NS_HEADER)
        if raw is not None and raw.isdigit():
            return int(raw)
    return None


class PullState:
    """The asyncio side of one pull consumer: requests, deliveries, buffer."""

    def __init__(
        self,
        nc: Any,
        stream: str,
        durable: str,
        expires_s: float,
        linger_s: float,
        acks: PendingAck | None = None,
    ) -> None:
        self._nc = nc
        self._acks = acks or PendingAck()
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._linger_s = linger_s
        self.inbox: str = nc.new_inbox()
        self.sub: Any = None
        self._buffer: deque[FetchedMessage] = deque()
        self._arrived = asyncio.Event()
        self.credit = PullCredit(expires_s)
        self.lost = ""

    def on_message(self, msg: Any) -> None:
        self.credit.heard(asyncio.get_running_loop().time())
        headers = msg.headers
        if headers and not msg.data and "Status" in headers:
            status = headers["Status"]
            if status == "100":  # heartbeat / flow control
                return
            description = headers.get("Description", "")
            if status_lost(status, description):
                self.lost = f"{status} {description}".strip()
            pending = headers.get("Nats-Pending-Messages")
            self.credit.request_ended(
                int(pending) if pending is not None and pending.isdigit() else None
            )
            self._arrived.set()
            return
        self.credit.delivered()
        stream_seq, consumer_seq, delivered, left = parse_ack_reply(msg.reply)
        self._buffer.append(
            FetchedMessage(
                msg.subject,
                msg.data,
                stream_seq,
                consumer_seq,
                delivered,
                recv_ns_of(headers),
                msg.reply,
                left,
                bool(headers and headers.get(BACKFILLED_HEADER)),
            )
        )
        self._arrived.set()

    async def _top_up(self, batch: int) -> None:
        await send_pending_ack(self._nc, self._acks)
        now = asyncio.get_running_loop().time()
        want = self.credit.request_size(batch, len(self._buffer), now)
        if want:
            request = {
                "batch": want,
                "expires": int(self.credit.expires_s * 1e9),
                "idle_heartbeat": int(HEARTBEAT_S * 1e9),
            }
            await self._nc.publish(
                self._next_subject, json.dumps(request).encode(), reply=self.inbox
            )
            self.credit.requested(want, now)

    async def fetch(self, batch: int, timeout: float) -> list[FetchedMessage]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._top_up(batch)
        while not self._buffer:
            if self.lost:
                raise ConsumerLost(f"pull consumer lost: {self.lost}")
            if self.credit.lost(loop.time()):
                raise ConsumerLost(
                    f"pull consumer silent for {self.credit.silent_for(loop.time()):.1f}s "
                    "(no message or heartbeat)"
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
            more = stretch(self._linger_s, len(self._buffer))
            if more > 0 and len(self._buffer) < batch:
                await asyncio.sleep(min(more, max(deadline - loop.time(), 0)))
        n = min(batch, len(self._buffer))
        out = [self._buffer.popleft() for _ in range(n)]
        await self._top_up(batch)
        return out

    async def close(self) -> None:
        with suppress(Exception):
            await self.sub.unsubscribe()


Call = Callable[..., Awaitable[Any]]


class PullConsumer:
    """A durable pull consumer; `fetch` crosses the bridge once per batch."""

    def __init__(self, call: Call, state: PullState) -> None:
        self._call = call
        self._state = state

    async def fetch(self, batch: int, timeout: float) -> list[FetchedMessage]:
        """Up to `batch` messages, in delivery order; empty when none came within `timeout`."""
        out: list[FetchedMessage] = await self._call(self._state.fetch, batch, timeout)
        return out

    async def close(self) -> None:
        await self._call(self._state.close)
