"""A connection's time-driven behaviour under a fake clock, with in-memory sockets.

Covers reconnect backoff, liveness (silent sockets, quiet-but-alive sockets), command
timeouts, `seq` gaps and resubscription, and the order of records in the output.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from ssmd.clock import WallClock
from ssmd.config import ConnectorConfig
from ssmd.connector.connection import Connection, ConnectionSettings
from ssmd.connector.publisher import Inbound
from ssmd.connector.shards import SubscriptionPlan
from ssmd.connector.websocket import WebSocket
from ssmd.feeds.kalshi import VENUE as KALSHI
from ssmd.feeds.kalshi.session import subscribe_params

CLEAN_STOP = "shutdown: unsubscribed, nothing in flight"
SETTINGS = ConnectionSettings(
    liveness_timeout=30.0,
    ping_interval=10.0,
    command_timeout=30.0,
    backoff_initial=0.5,
    backoff_max=30.0,
)


class SocketClosed(Exception):
    pass


class FakeSocket:
    """An in-memory exchange connection that answers commands like Kalshi."""

    def __init__(self, exchange: FakeExchange) -> None:
        self.exchange = exchange
        self._send, self._receive = trio.open_memory_channel[str | bytes | None](math.inf)
        self.commands: list[dict[str, Any]] = []
        self.pings = 0
        self.closed = False

    def push(self, frame: str | bytes) -> None:
        self._send.send_nowait(frame)

    def push_data(self, message_type: str, sid: int, seq: int | None, msg: dict[str, Any]) -> str:
        envelope: dict[str, Any] = {"type": message_type, "sid": sid}
        if seq is not None:
            envelope["seq"] = seq
        envelope["msg"] = msg
        text = json.dumps(envelope)
        self.push(text)
        return text

    def drop(self) -> None:
        self._send.send_nowait(None)

    async def receive_batch(self, limit: int) -> list[str | bytes]:
        frame = await self._receive.receive()
        if frame is None:
            self.closed = True
            raise SocketClosed("connection reset")
        return [frame]

    def take_queued(self, out: list[str | bytes], limit: int) -> list[str | bytes]:
        """`out` and the frames queued behind it, up to `limit` (as a socket read
        returns all that arrived)."""
        try:
            while len(out) < limit:
                frame = self._receive.receive_nowait()
                assert frame is not None
                out.append(frame)
        except trio.WouldBlock:
            pass
        return out

    @property
    def backlogged(self) -> bool:
        return False

    async def send_message(self, message: str | bytes) -> None:
        command = json.loads(message)
        self.commands.append(command)
        if not self.exchange.answer_commands:
            return
        cid = command["id"]
        if command["cmd"] == "subscribe" and self.exchange.refuse_subscribes > 0:
            self.exchange.refuse_subscribes -= 1
            self.push(
                json.dumps(
                    {"type": "error", "id": cid, "msg": {"code": 17, "msg": "Internal error"}}
                )
            )
        elif command["cmd"] == "subscribe":
            channel = command["params"]["channels"][0]
            sid = self.exchange.next_sid
            self.exchange.next_sid += 1
            self.push(
                json.dumps(
                    {"type": "subscribed", "id": cid, "msg": {"channel": channel, "sid": sid}}
                )
            )
            if self.exchange.on_subscribe is not None:
                self.exchange.on_subscribe(self, sid, command["params"])
        elif command["cmd"] == "unsubscribe":
            for sid in command["params"]["sids"]:
                if self.exchange.on_unsubscribe is not None:
                    self.exchange.on_unsubscribe(self, sid)
                self.push(json.dumps({"type": "unsubscribed", "id": cid, "sid": sid}))

    async def ping(self, payload: bytes | None = None) -> None:
        self.pings += 1
        if not self.exchange.answer_pings:
            await trio.sleep_forever()
        await trio.sleep(0.05)


class FakeExchange:
    def __init__(self) -> None:
        self.socket_class: type[FakeSocket] = FakeSocket
        self.refuse_subscribes = 0
        self.attempts: list[float] = []
        self.sockets: list[FakeSocket] = []
        self.refuse = False
        self.answer_commands = True
        self.answer_pings = True
        self.next_sid = 1
        self.on_subscribe: Callable[[FakeSocket, int, dict[str, Any]], None] | None = None
        self.on_unsubscribe: Callable[[FakeSocket, int], None] | None = None

    @asynccontextmanager
    async def connect(
        self, url: str, headers: list[tuple[str, str]], timeout: float
    ) -> AsyncIterator[WebSocket]:
        self.attempts.append(trio.current_time())
        await trio.sleep(0.01)
        if self.refuse:
            raise OSError("connection refused")
        socket = self.socket_class(self)
        self.sockets.append(socket)
        yield socket


class Harness:
    def __init__(
        self,
        exchange: FakeExchange,
        plans: list[SubscriptionPlan],
        settings: ConnectionSettings = SETTINGS,
    ) -> None:
        self.exchange = exchange
        self.out: list[Inbound] = []
        self.connection = Connection(
            0,
            "ws://fake/trade-api/ws/v2",
            KALSHI,
            plans,
            config=ConnectorConfig(feed="kalshi"),
            env="test",
            clock=WallClock(anchor_ns=1_700_000_000 * 10**9),
            settings=settings,
            headers=lambda url: [],
            connect=exchange.connect,
            rng=random.Random(7),
        )

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        found = [json.loads(m.payload) for m in self.out if ".json.ssmd." in m.subject]
        return [r for r in found if kind is None or r["type"] == f"ssmd_{kind}"]

    async def collect(self, receive: trio.MemoryReceiveChannel[list[Inbound]]) -> None:
        async for batch in receive:
            self.out.extend(batch)


@asynccontextmanager
async def running(harness: Harness) -> AsyncIterator[None]:
    """Run the connection; on exit cancel it (the producer) and collect to the end."""
    send, receive = trio.open_memory_channel[list[Inbound]](100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.collect, receive)
        async with trio.open_nursery() as producer:
            producer.start_soon(harness.connection.run, send)
            yield
            producer.cancel_scope.cancel()


def test_reconnect_backoff_is_capped_and_jittered() -> None:
    rng = random.Random(1)
    settings = ConnectionSettings(1.0, 1.0, 1.0, backoff_initial=0.5, backoff_max=30.0)
    for failures in range(40):
        step = min(30.0, 0.5 * 2**failures)
        delays = [settings.backoff.delay(failures, rng) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1


async def test_reconnect_backoff_grows_caps_and_never_gives_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeExchange()
    exchange.refuse = True
    harness = Harness(exchange, [SubscriptionPlan("ticker")])
    async with running(harness):
        await trio.sleep(3600)
    gaps = [b - a for a, b in zip(exchange.attempts, exchange.attempts[1:], strict=False)]
    assert len(gaps) > 100  # an hour of refusals, and still trying
    for failures, gap in enumerate(gaps):
        step = min(30.0, 0.5 * 2**failures)
        assert step / 2 <= gap - 0.01 <= step + 1e-6
    assert max(gaps) <= 30.01
    assert gaps[0] < 0.6
    assert harness.records() == []  # never connected: nothing to record


async def test_silent_connection_is_detected_and_replaced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeExchange()
    exchange.answer_pings = False
    harness = Harness(exchange, [SubscriptionPlan("ticker")])
    async with running(harness):
        await trio.sleep(20)
        first = exchange.sockets[0]
        first.push_data("ticker", 1, None, {"market_ticker": "A"})
        await trio.sleep(100)
    connects, disconnects = harness.records("connect"), harness.records("disconnect")
    assert disconnects[0]["reason"] == "ConnectionLost: no frame for 30s"
    # The data frame at t=20 counted as liveness: the first socket died 30 s later.
    died_at = (disconnects[0]["ts_ns"] - 1_700_000_000 * 10**9) / 1e9
    assert 50 <= died_at <= 51
    assert first.pings >= 1
    assert len(exchange.sockets) >= 2
    assert len(connects) >= 2
    # The replacement subscribed again.
    assert exchange.sockets[1].commands[0]["cmd"] == "subscribe"


async def test_quiet_connection_answering_pings_stays_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeExchange()
    harness = Harness(exchange, [SubscriptionPlan("ticker")])
    async with running(harness):
        await trio.sleep(3600)
    assert len(exchange.attempts) == 1
    assert [r["reason"] for r in harness.records("disconnect")] == [CLEAN_STOP]
    assert exchange.sockets[0].pings >= 300


async def test_unanswered_subscribe_times_out_and_reconnects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeExchange()
    exchange.answer_commands = False
    harness = Harness(exchange, [SubscriptionPlan("ticker")])
    async with running(harness):
        await trio.sleep(31)
    assert harness.records("disconnect")[0]["reason"] == (
        "ConnectionLost: no reply to subscribe (id 1) within 30s"
    )
    assert len(exchange.attempts) == 2


async def test_dropped_connection_records_and_resubscribes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeExchange()
    plans = [SubscriptionPlan("trade", ("A", "B")), SubscriptionPlan("ticker", ("A", "B"))]
    harness = Harness(exchange, plans)
    async with running(harness):
        await trio.sleep(1)
        first = exchange.sockets[0]
        before = first.push_data("trade", 1, None, {"market_ticker": "A"})
        await trio.sleep(1)
        first.drop()
        await trio.sleep(5)
        second = exchange.sockets[1]
        after = second.push_data("trade", 3, None, {"market_ticker": "B"})
        await trio.sleep(1)
    subjects = [m.subject.split(".", 3)[3] for m in harness.out]
    assert subjects == [
        "ssmd.connect",
        "trade.A",
        "ssmd.disconnect",
        "ssmd.connect",
        "trade.B",
        "ssmd.disconnect",
    ]
    assert harness.out[1].payload == before.encode()
    assert harness.out[4].payload == after.encode()
    assert [r["reason"] for r in harness.records("disconnect")] == [
        "SocketClosed: connection reset",
        CLEAN_STOP,
    ]
    assert [c["params"] for c in second.commands] == [
        *(subscribe_params(p) for p in plans),
        {"sids": [3, 4]},
    ]


async def test_seq_gap_records_and_resubscribes_for_a_fresh_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeExchange()

    def snapshot(socket: FakeSocket, sid: int, params: dict[str, Any]) -> None:
        for seq, ticker in enumerate(params.get("market_tickers", []), start=1):
            socket.push_data("orderbook_snapshot", sid, seq, {"market_ticker": ticker, "yes": []})

    exchange.on_subscribe = snapshot
    plan = SubscriptionPlan("orderbook_delta", ("A", "B"))
    harness = Harness(exchange, [plan])
    async with running(harness):
        await trio.sleep(1)
        socket = exchange.sockets[0]
        socket.push_data("orderbook_delta", 1, 3, {"market_ticker": "A"})
        socket.push_data("orderbook_delta", 1, 4, {"market_ticker": "B"})
        socket.push_data("orderbook_delta", 1, 7, {"market_ticker": "A"})  # 5 and 6 lost
        socket.push_data("orderbook_delta", 1, 8, {"market_ticker": "B"})  # no second gap
        await trio.sleep(1)
    kinds = [m.subject.split(".", 3)[3] for m in harness.out]
    assert kinds == [
        "ssmd.connect",
        "orderbook.A",
        "orderbook.B",
        "orderbook.A",
        "orderbook.B",
        "ssmd.gap",
        "orderbook.A",
        "orderbook.B",
        "ssmd.resubscribe",
        "orderbook.A",
        "orderbook.B",
        "ssmd.disconnect",
    ]
    gap = harness.records("gap")[0]
    assert gap == {
        "type": "ssmd_gap",
        "conn": 0,
        "sid": 1,
        "channel": "orderbook_delta",
        "expected": 5,
        "got": 7,
        "markets": ["A", "B"],
        "ts_ns": gap["ts_ns"],
        "reason": "seq",
    }
    resubscribe = harness.records("resubscribe")[0]
    assert resubscribe["old_sid"] == 1
    assert resubscribe["new_sid"] == 2
    assert resubscribe["markets"] == ["A", "B"]
    assert [c["cmd"] for c in socket.commands] == [
        "subscribe",
        "unsubscribe",
        "subscribe",
        "unsubscribe",
    ]
    assert socket.commands[1]["params"] == {"sids": [1]}
    assert socket.commands[2]["params"] == subscribe_params(plan)
    assert harness.connection.stats.gaps == 1


async def test_control_messages_are_counted_not_published(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeExchange()
    harness = Harness(exchange, [SubscriptionPlan("ticker")])
    async with running(harness):
        await trio.sleep(1)
        socket = exchange.sockets[0]
        socket.push(
            json.dumps({"type": "error", "id": 99, "msg": {"code": 6, "msg": "Already subscribed"}})
        )
        socket.push(json.dumps({"type": "ok", "id": 98, "sid": 1, "seq": 3}))
        socket.push(b"\xff\xfe not json")
        await trio.sleep(1)
    kinds = [m.subject.split(".", 3)[3] for m in harness.out]
    assert kinds == ["ssmd.connect", "unrouted.invalid", "ssmd.disconnect"]
    assert harness.out[1].payload == b"\xff\xfe not json"
    stats = harness.connection.stats
    assert stats.control == {"subscribed": 1, "error": 1, "ok": 1, "unsubscribed": 1}
    assert stats.unrouted == 1


async def test_snapshots_numbered_from_one_per_market_are_not_gaps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeExchange()
    harness = Harness(exchange, [SubscriptionPlan("orderbook_delta", ("A", "B"))])
    async with running(harness):
        await trio.sleep(1)
        socket = exchange.sockets[0]
        socket.push_data("orderbook_snapshot", 1, 1, {"market_ticker": "A"})
        socket.push_data("orderbook_snapshot", 1, 1, {"market_ticker": "B"})
        socket.push_data("orderbook_delta", 1, 2, {"market_ticker": "B"})
        await trio.sleep(1)
    assert harness.records("gap") == []
    assert [c["cmd"] for c in socket.commands] == ["subscribe", "unsubscribe"]


async def test_a_batch_read_as_the_connection_is_torn_down_is_still_published(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The reader's batch is off the socket; tearing the connection down while the batch
    waits for the publisher must not lose it."""

    class Batching(FakeSocket):
        taken = 0
        sent_at = 0.0

        async def send_message(self, message: str | bytes) -> None:
            Batching.sent_at = trio.current_time()
            await super().send_message(message)

        async def receive_batch(self, limit: int) -> list[str | bytes]:
            out = self.take_queued(list(await super().receive_batch(limit)), limit)
            Batching.taken += sum(1 for f in out if '"trade"' in str(f))
            return out

    exchange = FakeExchange()
    exchange.answer_commands = False  # the subscribe times out: the connection is torn down
    exchange.socket_class = Batching
    harness = Harness(exchange, [SubscriptionPlan("trade", ("A",))])
    # No buffer: the reader's handoff waits until the publisher takes the batch.
    send, receive = trio.open_memory_channel[list[Inbound]](0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(harness.connection.run, send)
        harness.out.extend(await receive.receive())  # the connect record
        await trio.sleep(1)
        socket = exchange.sockets[0]
        assert [c["cmd"] for c in socket.commands] == ["subscribe"]
        await trio.sleep_until(Batching.sent_at + 29.5)  # half a second before it gives up
        for i in range(100):
            socket.push_data("trade", 1, None, {"market_ticker": "A", "n": i})
        await trio.testing.wait_all_tasks_blocked()
        assert Batching.taken == 100  # read, and now waiting for the publisher
        # The subscribe gives up: the connection is cancelled around the handoff, and
        # the publisher takes the batch a second later.
        await trio.sleep_until(Batching.sent_at + 31)
        async for batch in receive:
            harness.out.extend(batch)
            if any(".ssmd.disconnect" in m.subject for m in batch):
                break
        nursery.cancel_scope.cancel()
    published = [m for m in harness.out if ".trade." in m.subject]
    assert len(published) == Batching.taken == 100
    kinds = [m.subject.split(".", 3)[3] for m in harness.out]
    assert kinds[0] == "ssmd.connect" and kinds[-1] == "ssmd.disconnect", kinds
    assert "no reply to subscribe" in harness.records("disconnect")[0]["reason"]


async def test_a_refused_subscription_is_recorded_and_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeExchange()
    exchange.refuse_subscribes = 2
    harness = Harness(exchange, [SubscriptionPlan("trade", ("A",))])
    async with running(harness):
        await trio.sleep(60)
        socket = exchange.sockets[0]
        subscribes = [c["params"] for c in socket.commands if c["cmd"] == "subscribe"]
        assert len(subscribes) == 3, "refused twice, then retried until it succeeded"
        assert len(exchange.sockets) == 1, "a refusal does not cost the connection"
    errors = [
        json.loads(m.payload) for m in harness.out if m.subject.endswith(".ssmd.subscribe_error")
    ]
    assert [(e["channel"], e["markets"]) for e in errors] == [("trade", ["A"]), ("trade", ["A"])]
    assert harness.connection.stats.subscribe_errors == 2


async def test_a_trade_gap_is_recorded_without_resubscribing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeExchange()
    harness = Harness(exchange, [SubscriptionPlan("trade", ("A",))])
    async with running(harness):
        await trio.sleep(1)
        socket = exchange.sockets[0]
        socket.push_data("trade", 1, 1, {"market_ticker": "A"})
        socket.push_data("trade", 1, 5, {"market_ticker": "A"})
        await trio.sleep(5)
        assert [c["cmd"] for c in socket.commands] == ["subscribe"], (
            "no snapshot repairs a trade gap"
        )
    gaps = [json.loads(m.payload) for m in harness.out if m.subject.endswith(".ssmd.gap")]
    assert [(g["expected"], g["got"]) for g in gaps] == [(2, 5)]


async def test_a_clean_stop_unsubscribes_and_keeps_what_arrives_until_confirmed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeExchange()

    # Data the exchange sent after the stop began, but before it confirmed the unsubscribe.
    def send_late_data(socket: FakeSocket, sid: int) -> None:
        socket.push_data("trade", sid, None, {"market_ticker": f"LATE-{sid}"})

    exchange.on_unsubscribe = send_late_data
    harness = Harness(exchange, [SubscriptionPlan("trade"), SubscriptionPlan("ticker")])
    async with running(harness):
        await trio.sleep(1)
    kinds = [m.subject.split(".", 3)[3] for m in harness.out]
    assert kinds == ["ssmd.connect", "trade.LATE-1", "trade.LATE-2", "ssmd.disconnect"]
    assert harness.records("disconnect")[0]["reason"] == CLEAN_STOP
    assert exchange.sockets[0].commands[-1] == {
        "id": 3,
        "cmd": "unsubscribe",
        "params": {"sids": [1, 2]},
    }


async def test_the_shutdown_record_waits_for_a_slow_publisher(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The publisher is busy (NATS slow) when the stop comes: no room in the channel.
    The disconnect record waits for it rather than being dropped, so the archive ends
    with it."""
    exchange = FakeExchange()
    harness = Harness(exchange, [SubscriptionPlan("trade")])
    send, receive = trio.open_memory_channel[list[Inbound]](0)

    async def slow_publisher() -> None:
        async for batch in receive:
            harness.out.extend(batch)
            await trio.sleep(3.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_publisher)
        async with trio.open_nursery() as producer:
            producer.start_soon(harness.connection.run, send)
            await trio.sleep(1)
            producer.cancel_scope.cancel()
    kinds = [m.subject.split(".", 3)[3] for m in harness.out]
    assert kinds == ["ssmd.connect", "ssmd.disconnect"]
    assert harness.records("disconnect")[0]["reason"] == CLEAN_STOP


async def test_a_stop_the_exchange_does_not_confirm_takes_at_most_a_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeExchange()
    harness = Harness(exchange, [SubscriptionPlan("trade")])
    async with running(harness):
        await trio.sleep(1)
        exchange.answer_commands = False
        stop_began = trio.current_time()
    assert trio.current_time() - stop_began == pytest.approx(1.0)
    assert harness.records("disconnect")[0]["reason"] == "shutdown"


async def test_a_stop_while_subscribing_does_not_claim_a_clean_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange = FakeExchange()
    exchange.answer_commands = False
    harness = Harness(exchange, [SubscriptionPlan("trade")])
    async with running(harness):
        await trio.sleep(1)
    # The subscribe may have opened a sid nobody heard of yet: data may be in flight.
    assert harness.records("disconnect")[0]["reason"] == "shutdown"
