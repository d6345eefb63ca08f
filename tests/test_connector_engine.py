"""The generic engine drives any venue through the `Session` interface (ssmd.feeds.base),
under a fake clock with an in-memory socket and a toy venue that is not Kalshi: commands
without replies, a text keepalive, several messages in one frame, repairs the session
asks for, retries of refused subscriptions, and a clean stop."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import AsyncIterator, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from ssmd.clock import WallClock
from ssmd.config import ConnectorConfig
from ssmd.connector.connection import Connection, ConnectionSettings
from ssmd.connector.publisher import Inbound
from ssmd.connector.records import GapRecord
from ssmd.connector.shards import SubscriptionPlan
from ssmd.connector.websocket import WebSocket
from ssmd.feeds.base import Command, SessionContext, Venue, VenueLimits

SETTINGS = ConnectionSettings(
    liveness_timeout=15.0,
    ping_interval=5.0,
    command_timeout=10.0,
    backoff_initial=0.5,
    backoff_max=30.0,
)


class ToySession:
    """Text commands `sub CHANNEL` (answered `ack CHANNEL`, except channel `quiet`, which
    gets no answer), `PING`/`PONG`, frames `a|b|c` holding several messages, `break`
    asking for a repair, `refused CHANNEL` asking for a retry, `stopped` confirming a stop."""

    def __init__(self, context: SessionContext, plans: Sequence[SubscriptionPlan]) -> None:
        self.context = context
        self.plans = list(plans)
        self.starts = 0
        self.acked: set[str] = set()
        self.queued: list[Command] = []
        self.refused: list[str] = []
        self.confirmed = False

    def _sub(self, channel: str) -> Command:
        return Command(f"sub {channel}", None if channel == "quiet" else channel, channel)

    def start(self) -> list[Command]:
        self.starts += 1
        self.acked.clear()
        return [self._sub(plan.channel) for plan in self.plans]

    def on_frame(self, payload: bytes, recv_ns: int, out: list[Inbound]) -> bool:
        stats = self.context.stats
        subjects = self.context.subjects
        word, _, rest = payload.partition(b" ")
        if payload == b"PONG":
            stats.control["pong"] += 1
            return False
        if word in (b"ack", b"refused", b"stopped", b"break"):
            stats.control[word.decode()] += 1
            if word == b"ack":
                self.acked.add(rest.decode())
            elif word == b"refused":
                self.acked.add(rest.decode())
                self.refused.append(rest.decode())
            elif word == b"stopped":
                self.confirmed = True
            else:
                out.append(
                    subjects.record(GapRecord(self.context.conn, None, "x", 1, 3, [], 0, "toy"))
                )
                self.queued.append(Command("repair", None, "repair"))
            return True
        start = 0
        for part in payload.split(b"|"):  # several messages, each its exact bytes
            end = start + len(part)
            stats.messages += 1
            subject = subjects.data("toy", part.decode("utf-8", "replace")) or subjects.unrouted(
                None
            )
            out.append(Inbound(subject, payload[start:end], recv_ns))
            start = end + 1
        return False

    def replied(self, token: Hashable) -> bool:
        return token in self.acked

    def take_commands(self) -> list[Command]:
        queued, self.queued = self.queued, []
        return queued

    def retries_waiting(self) -> bool:
        return bool(self.refused)

    def take_retries(self) -> list[Command]:
        refused, self.refused = self.refused, []
        for channel in refused:
            self.acked.discard(channel)
        return [self._sub(channel) for channel in refused]

    def keepalive(self, count: int) -> str | None:
        return "PING"

    def stop(self) -> list[Command]:
        self.confirmed = False
        return [Command("stop")]

    def stop_confirmed(self) -> bool:
        return self.confirmed


class ToyVenue:
    kind = "toy"
    needs_credentials = False
    limits = VenueLimits(10, 10)

    def default_url(self, environ: Mapping[str, str]) -> str:
        return "ws://toy"

    def handshake_headers(self, url: str, credentials: Any) -> list[tuple[str, str]]:
        return []

    async def subscription_markets(self, config: ConnectorConfig) -> list[str]:
        return []

    def plan(self, config: ConnectorConfig, markets: Sequence[str]) -> list[list[SubscriptionPlan]]:
        return [[SubscriptionPlan(c) for c in config.channels]]

    def session(self, context: SessionContext, plans: Sequence[SubscriptionPlan]) -> ToySession:
        return ToySession(context, plans)


VENUE: Venue = ToyVenue()


class ToySocket:
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.sent: list[tuple[float, str]] = []
        self.pings = 0
        self._send, self._receive = trio.open_memory_channel[bytes | None](math.inf)

    def push(self, frame: bytes | None) -> None:
        self._send.send_nowait(frame)

    async def receive_batch(self, limit: int) -> list[str | bytes]:
        frame = await self._receive.receive()
        if frame is None:
            raise ConnectionError("dropped")
        return [frame]

    @property
    def backlogged(self) -> bool:
        return False

    async def send_message(self, message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode()
        self.sent.append((trio.current_time(), text))
        for answer in self.answers.get(text, []):
            self.push(answer.encode())

    async def ping(self, payload: bytes | None = None) -> None:
        self.pings += 1


class Toy:
    def __init__(self, channels: list[str], answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.sockets: list[ToySocket] = []
        self.out: list[Inbound] = []
        self.connection = Connection(
            0,
            "ws://toy",
            VENUE,
            VENUE.plan(ConnectorConfig(feed="toy", kind="kalshi", channels=channels), [])[0],
            config=ConnectorConfig(feed="toy", kind="kalshi", channels=channels),
            env="test",
            clock=WallClock(anchor_ns=1_700_000_000 * 10**9),
            settings=SETTINGS,
            headers=lambda url: [],
            connect=self.connect,
        )

    @property
    def session(self) -> ToySession:
        session = self.connection.session
        assert isinstance(session, ToySession)
        return session

    @asynccontextmanager
    async def connect(
        self, url: str, headers: list[tuple[str, str]], timeout: float
    ) -> AsyncIterator[WebSocket]:
        socket = ToySocket(self.answers)
        self.sockets.append(socket)
        yield socket

    def sent(self, index: int = 0) -> list[str]:
        return [text for _, text in self.sockets[index].sent]

    def kinds(self) -> list[str]:
        return [m.subject.split(".", 3)[3] for m in self.out]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        send, receive = trio.open_memory_channel[list[Inbound]](100)

        async def collect() -> None:
            async for batch in receive:
                self.out.extend(batch)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            async with trio.open_nursery() as producer:
                producer.start_soon(self.connection.run, send)
                yield
                producer.cancel_scope.cancel()


async def test_unanswered_commands_do_not_wait_and_a_text_keepalive_is_liveness(
    autojump_clock: trio.testing.MockClock,
) -> None:
    toy = Toy(["quiet", "loud"], {"sub loud": ["ack loud"], "PING": ["PONG"]})
    async with toy.running():
        await trio.sleep(1)
        assert toy.connection.up
        assert toy.sent() == ["sub quiet", "sub loud"]
        await trio.sleep(60)  # no data at all: only the PONGs keep the connection
    socket = toy.sockets[0]
    assert len(toy.sockets) == 1, "the answered keepalive kept the connection alive"
    pings = [t for t, text in socket.sent if text == "PING"]
    assert [round(b - a, 6) for a, b in itertools.pairwise(pings)] == [5.0] * 11
    assert socket.pings == 0, "a venue with a text keepalive gets no WebSocket ping"
    assert toy.connection.stats.control["pong"] == 12
    assert toy.kinds() == ["ssmd.connect", "ssmd.disconnect"], "PONG is never data"


async def test_an_unanswered_text_keepalive_ends_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    toy = Toy(["quiet"], {})
    async with toy.running():
        await trio.sleep(16)
    assert len(toy.sockets) == 2
    assert "no frame for 15s" in toy.out[1].payload.decode()


async def test_a_frame_of_several_messages_gives_each_its_exact_bytes_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    toy = Toy(["quiet"], {})
    async with toy.running():
        await trio.sleep(1)
        toy.sockets[0].push(b"a|bb|a.c")
        await trio.sleep(1)
    data = [m for m in toy.out if ".json.toy." in m.subject]
    assert [(m.subject, m.payload) for m in data] == [
        ("test.toy.json.toy.a", b"a"),
        ("test.toy.json.toy.bb", b"bb"),
        ("test.toy.json.toy.a%2Ec", b"a.c"),
    ]
    assert toy.connection.stats.messages == 3


async def test_repairs_follow_their_record_and_refusals_are_retried_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    toy = Toy(["loud"], {"sub loud": ["refused loud"], "PING": ["PONG"]})
    async with toy.running():
        await trio.sleep(1)
        socket = toy.sockets[0]
        socket.push(b"break")
        await trio.sleep(1)
        assert toy.sent()[-1] == "repair"
        assert toy.kinds()[1] == "ssmd.gap"
        await trio.sleep(20)
        toy.answers["sub loud"] = ["ack loud"]
        await trio.sleep(40)
    subscribes = [t for t, text in socket.sent if text == "sub loud"]
    # Refused at once, retried 5 s later (refused), then 10 s after that, then 20 s.
    assert [round(b - a, 3) for a, b in itertools.pairwise(subscribes)] == [
        5.0,
        10.0,
        20.0,
    ]
    assert not toy.session.refused and len(toy.sockets) == 1


async def test_a_clean_stop_reads_until_the_session_confirms_and_start_runs_per_socket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    toy = Toy(["quiet"], {"stop": ["late", "stopped", "after"]})
    async with toy.running():
        await trio.sleep(1)
        toy.sockets[0].push(None)  # dropped: reconnect, start again
        await trio.sleep(5)
        assert toy.session.starts == 2
    kinds = toy.kinds()
    assert kinds[-2:] == ["toy.late", "ssmd.disconnect"]
    assert toy.sent(1)[-1] == "stop"
    disconnect = toy.out[-1].payload.decode()
    assert "shutdown: unsubscribed, nothing in flight" in disconnect


class UnconfirmingToySession(ToySession):
    """A venue that never answers an unsubscribe (Polymarket): nothing to wait for."""

    confirms_stop = False

    def stop_confirmed(self) -> bool:
        return True


class UnconfirmingToyVenue(ToyVenue):
    def session(
        self, context: SessionContext, plans: Sequence[SubscriptionPlan]
    ) -> UnconfirmingToySession:
        return UnconfirmingToySession(context, plans)


async def test_a_venue_that_never_confirms_an_unsubscribe_does_not_claim_a_clean_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    toy = Toy(["quiet"], {})
    toy.connection.session = UnconfirmingToyVenue().session(toy.session.context, toy.session.plans)
    async with toy.running():
        await trio.sleep(1)
        assert toy.connection.up
    assert toy.sent()[-1] == "stop"
    disconnect = json.loads(toy.out[-1].payload)
    assert disconnect["reason"] == "shutdown: venue does not confirm unsubscribe"
