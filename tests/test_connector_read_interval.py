"""`connector.read_interval`: a busy socket is read at most once per interval, on a grid
of Trio time, and nothing read is lost or stamped before it was read.

Driven by in-memory sockets under a fake clock (the harness of
`test_connector_connection`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio
import trio.testing

from ssmd.clock import WallClock
from ssmd.config import ConnectorConfig
from ssmd.connector.connection import HANDOFF_TIMEOUT_S, Connection, ConnectionSettings
from ssmd.connector.layout import AddMarkets, Subscribe
from ssmd.connector.publisher import Inbound
from ssmd.connector.shards import SubscriptionPlan
from ssmd.connector.websocket import WebSocket
from ssmd.feeds.base import Change
from ssmd.feeds.polymarket import VENUE as POLYMARKET
from tests.test_connector_connection import SETTINGS, FakeExchange, FakeSocket, Harness, running

INTERVAL = 0.1
ANCHOR_NS = 1_700_000_000 * 10**9


class Draining(FakeSocket):
    """Returns every frame queued when read (as a socket read returns all that arrived),
    and notes the Trio time of each read that returned data."""

    backlog = False

    def __init__(self, exchange: FakeExchange) -> None:
        super().__init__(exchange)
        self.reads: list[tuple[float, int]] = []

    async def receive_batch(self, limit: int) -> list[str | bytes]:
        out = self.take_queued(list(await super().receive_batch(limit)), limit)
        self.reads.append((trio.current_time(), len(out)))
        return out

    @property
    def backlogged(self) -> bool:
        return Draining.backlog or self._receive.statistics().current_buffer_used > 0


def harness(read_interval: float) -> tuple[FakeExchange, Harness]:
    exchange = FakeExchange()
    exchange.socket_class = Draining
    settings = attrs.evolve(SETTINGS, read_interval=read_interval)
    return exchange, Harness(exchange, [SubscriptionPlan("trade")], settings)


def book_harness(socket_class: type[FakeSocket]) -> tuple[FakeExchange, Harness]:
    """Market A's book, snapshotted at each subscribe, read on a 30 s grid."""
    exchange = FakeExchange()
    exchange.socket_class = socket_class

    def snapshot(socket: FakeSocket, sid: int, params: dict[str, object]) -> None:
        socket.push_data("orderbook_snapshot", sid, 1, {"market_ticker": "A", "yes": []})

    exchange.on_subscribe = snapshot
    settings = attrs.evolve(SETTINGS, read_interval=30.0)
    return exchange, Harness(exchange, [SubscriptionPlan("orderbook_delta", ("A",))], settings)


async def stream(socket: FakeSocket, frames: int, every: float) -> None:
    for i in range(frames):
        socket.push_data("trade", 1, None, {"market_ticker": "A", "n": i})
        await trio.sleep(every)


async def connected(exchange: FakeExchange) -> Draining:
    """The connection's socket, a second after it connected, with its reads so far
    forgotten."""
    await trio.sleep(1)
    socket = exchange.sockets[0]
    assert isinstance(socket, Draining)
    socket.reads.clear()
    return socket


def trades(h: Harness) -> list[tuple[int, int]]:
    """(n, recv_ns) of each published trade, in order."""
    return [(json.loads(m.payload)["msg"]["n"], m.recv_ns) for m in h.out if ".trade." in m.subject]


async def test_a_busy_socket_is_read_once_per_interval_on_the_grid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange, h = harness(INTERVAL)
    async with running(h):
        socket = await connected(exchange)
        start = trio.current_time()
        await stream(socket, 1000, 0.001)  # 1,000 msg/s for a second
        await trio.sleep(1)
        busy = list(socket.reads)
    # One read per 100 ms (plus the first, at the first arrival), not one per frame.
    assert 10 <= len(busy) <= 12, busy
    assert sum(n for _, n in busy) == 1000
    # After the first, every read falls on a multiple of the interval.
    for t, _ in busy[1:]:
        assert abs(t / INTERVAL - round(t / INTERVAL)) < 1e-6, t
    published = trades(h)
    assert [n for n, _ in published] == list(range(1000))
    # The connect record says how long a frame may have waited before its stamp.
    assert h.records("connect")[0]["read_interval_ms"] == INTERVAL * 1000
    # A frame is stamped when read: never before it arrived, at most one interval after.
    for n, recv_ns in published:
        arrived_ns = ANCHOR_NS + round((start + n * 0.001) * 1e9)
        assert arrived_ns - 1000 <= recv_ns <= arrived_ns + INTERVAL * 1e9 + 1000, n


async def test_without_an_interval_every_arrival_is_read_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange, h = harness(0.0)
    async with running(h):
        socket = await connected(exchange)
        await stream(socket, 100, 0.001)
        await trio.sleep(1)
        assert len(socket.reads) == 100


async def test_a_frame_after_a_quiet_spell_is_read_and_stamped_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange, h = harness(INTERVAL)
    async with running(h):
        socket = await connected(exchange)
        await trio.sleep(5.0371)
        arrived = trio.current_time()
        socket.push_data("trade", 1, None, {"market_ticker": "A", "n": 0})
        await trio.testing.wait_all_tasks_blocked()
        assert socket.reads[-1] == (arrived, 1)
        await trio.sleep(1)
    [(_, recv_ns)] = trades(h)
    assert recv_ns == ANCHOR_NS + round(arrived * 1e9)


async def test_a_backlogged_socket_is_read_again_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange, h = harness(INTERVAL)
    Draining.backlog = True
    try:
        async with running(h):
            socket = await connected(exchange)
            await stream(socket, 100, 0.001)
            await trio.sleep(1)
            assert len(socket.reads) == 100
    finally:
        Draining.backlog = False


async def test_connections_share_the_grid(autojump_clock: trio.testing.MockClock) -> None:
    """Two connections reading busy sockets read at the same instants, so their batches
    reach the publisher in the same scheduler pass."""
    pairs = [harness(INTERVAL) for _ in range(2)]
    async with running(pairs[0][1]), running(pairs[1][1]):
        await trio.sleep(1.013)
        sockets = [exchange.sockets[0] for exchange, _ in pairs]
        for socket in sockets:
            assert isinstance(socket, Draining)
            socket.reads.clear()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, sockets[0], 500, 0.002)
            await trio.sleep(0.0007)
            nursery.start_soon(stream, sockets[1], 500, 0.002)
        times = [[t for t, _ in s.reads[1:]] for s in sockets if isinstance(s, Draining)]
    assert len(times[0]) >= 9 and times[0] == times[1]


async def test_a_commands_answer_is_read_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """However long the interval, a command's answer is read as it arrives: a
    resubscription after a `seq` gap is not held up by the grid."""
    exchange, h = book_harness(Draining)
    async with running(h):
        await trio.sleep(31)  # up, and past a grid point
        socket = exchange.sockets[0]
        assert isinstance(socket, Draining)
        socket.push_data("orderbook_delta", 1, 2, {"market_ticker": "A"})
        await trio.sleep(1)  # read at once (quiet before); the reader now waits on the grid
        socket.push_data("orderbook_delta", 1, 9, {"market_ticker": "A"})  # 3 to 8 lost
        await trio.sleep_until(60.5)  # the gap is read at the grid point, 60 s
        kinds = [m.subject.split(".", 3)[3] for m in h.out]
        # Unsubscribed, subscribed again and the fresh snapshot published at once, not
        # one interval per answer later.
        assert kinds[-4:] == ["ssmd.gap", "orderbook.A", "ssmd.resubscribe", "orderbook.A"], kinds
        assert [t for t, _ in socket.reads[-3:]] == [60.0] * 3


def polymarket_connection(socket: FakeSocket, settings: ConnectionSettings) -> Connection:
    """Connection 0 of a Polymarket feed subscribed to asset "A", over `socket`."""

    @asynccontextmanager
    async def connect(
        url: str, headers: list[tuple[str, str]], timeout: float
    ) -> AsyncIterator[WebSocket]:
        yield socket

    return Connection(
        0,
        "wss://fake/ws/market",
        POLYMARKET,
        [SubscriptionPlan("market", ("A",))],
        config=ConnectorConfig(feed="polymarket"),
        env="test",
        clock=WallClock(anchor_ns=ANCHOR_NS),
        settings=settings,
        headers=lambda url: [],
        connect=connect,
    )


async def test_a_clean_stop_keeps_what_arrived_during_the_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Polymarket sends nothing at a stop (it confirms no unsubscribe): frames that
    reached the socket while the reader waited for the grid are still read and published
    before the disconnect record."""
    exchange = FakeExchange()
    exchange.answer_commands = False  # Polymarket answers no command
    socket = Draining(exchange)

    connection = polymarket_connection(socket, attrs.evolve(SETTINGS, read_interval=INTERVAL))
    out: list[Inbound] = []
    send, receive = trio.open_memory_channel[list[Inbound]](100)

    async def collect() -> None:
        async for batch in receive:
            out.extend(batch)

    def trade(n: int) -> str:
        return json.dumps(
            {"event_type": "last_trade_price", "asset_id": "A", "market": "0xm", "n": n}
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        async with trio.open_nursery() as producer:
            producer.start_soon(connection.run, send)
            await trio.sleep(1.0)
            socket.push(trade(0))
            await trio.sleep(0.001)  # read at once; the reader now waits for the grid
            for n in range(1, 11):
                socket.push(trade(n))
            await trio.sleep(0.01)
            producer.cancel_scope.cancel()
    kinds = [m.subject.split(".", 3)[3] for m in out]
    assert kinds[-1] == "ssmd.disconnect", kinds
    assert [json.loads(m.payload)["n"] for m in out if ".ssmd." not in m.subject] == list(range(11))


class AnswersLate(Draining):
    """Sends a data frame as each command goes out, another 5 ms later and the command's
    answer 5 ms after that: the answer is two arrivals after the read the command woke."""

    async def send_message(self, message: str | bytes) -> None:
        self.push_data("orderbook_delta", 99, None, {"market_ticker": "Z"})
        trio.lowlevel.spawn_system_task(self._answer, message)

    async def _answer(self, message: str | bytes) -> None:
        await trio.sleep(0.005)
        self.push_data("orderbook_delta", 98, None, {"market_ticker": "Z"})
        await trio.sleep(0.005)
        await super().send_message(message)


async def test_an_answer_after_the_read_a_command_woke_is_read_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While a command waits for its answer the socket is read at every arrival, not
    only on the read its sending woke."""
    exchange, h = book_harness(AnswersLate)
    async with running(h):
        await trio.sleep(31)
        socket = exchange.sockets[0]
        socket.push_data("orderbook_delta", 1, 2, {"market_ticker": "A"})
        await trio.sleep(1)  # the reader now waits on the grid
        socket.push_data("orderbook_delta", 1, 9, {"market_ticker": "A"})  # 3 to 8 lost
        await trio.sleep_until(60.5)  # the gap is read at 60 s; the resubscription follows
        kinds = [m.subject.split(".", 3)[3] for m in h.out]
        assert kinds[-2:] == ["ssmd.resubscribe", "orderbook.A"], kinds


class NotesCommands(Draining):
    """Notes how many frames had been read when each command went out."""

    def __init__(self, exchange: FakeExchange) -> None:
        super().__init__(exchange)
        self.read_at_send: list[tuple[str, int]] = []

    async def send_message(self, message: str | bytes) -> None:
        command = json.loads(message)
        self.read_at_send.append((command["cmd"], sum(n for _, n in self.reads)))
        await super().send_message(message)


async def book_a_added(h: Harness, exchange: FakeExchange, wait: float) -> NotesCommands:
    """Subscribe market A's book as a live change, wait `wait` s, then its first delta."""
    await trio.sleep(1)
    h.connection.change([Change(Subscribe(0, "orderbook_delta", 0, ("A",)), "discovery")])
    await trio.sleep(wait)
    socket = exchange.sockets[0]
    assert isinstance(socket, NotesCommands)
    socket.push_data("orderbook_delta", 1, 1, {"market_ticker": "A"})
    return socket


async def test_frames_that_arrived_before_a_live_change_are_read_before_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A change's record is written when it is sent (Polymarket) or answered (Kalshi);
    frames the exchange sent before it must come first, not wait for the grid."""
    exchange = FakeExchange()
    exchange.socket_class = NotesCommands
    settings = attrs.evolve(SETTINGS, read_interval=30.0)
    h = Harness(exchange, [], settings)
    async with running(h):
        socket = await book_a_added(h, exchange, 31)
        await trio.sleep(1)  # read at once; the reader now waits on the grid (60 s)
        for seq in range(2, 7):
            socket.push_data("orderbook_delta", 1, seq, {"market_ticker": "A"})
        read_before = sum(n for _, n in socket.reads)
        h.connection.change([Change(AddMarkets(0, "orderbook_delta", 0, ("B",)), "discovery")])
        await trio.sleep(1)
        cmd, read = socket.read_at_send[-1]
        assert cmd == "update_subscription"
        assert read == read_before + 5
        assert trio.current_time() < 60


async def test_a_change_is_sent_while_the_socket_stays_busy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Catching up before a change reads once, not until the socket runs dry: on a
    saturated feed the change still goes out."""
    exchange = FakeExchange()
    exchange.socket_class = NotesCommands
    h = Harness(exchange, [], attrs.evolve(SETTINGS, read_interval=INTERVAL))
    async with running(h):
        socket = await book_a_added(h, exchange, 1)
        await trio.sleep(0.01)  # read; the reader waits for the grid
        Draining.backlog = True  # from now on every read finds more
        try:
            async with trio.open_nursery() as nursery:

                async def feed() -> None:
                    for seq in range(2, 100_000):
                        socket.push_data("orderbook_delta", 1, seq, {"market_ticker": "A"})
                        await trio.sleep(0.001)

                nursery.start_soon(feed)
                sent = len(socket.read_at_send)
                change = Change(AddMarkets(0, "orderbook_delta", 0, ("B",)), "discovery")
                h.connection.change([change])
                await trio.sleep(1)
                assert len(socket.read_at_send) == sent + 1
                nursery.cancel_scope.cancel()
        finally:
            Draining.backlog = False


class NotesSends(Draining):
    """A Polymarket socket (it answers no command) noting when each message went out."""

    def __init__(self, exchange: FakeExchange) -> None:
        super().__init__(exchange)
        self.sent: list[tuple[float, str | bytes]] = []

    async def send_message(self, message: str | bytes) -> None:
        self.sent.append((trio.current_time(), message))


class SlowPublisher:
    """Takes batches like the publisher; once `stall`ed, takes one more and then none
    until `resume`d (the reader's next hand-over waits)."""

    def __init__(self, receive: trio.MemoryReceiveChannel[list[Inbound]]) -> None:
        self.receive = receive
        self.out: list[Inbound] = []
        self.taking = trio.Event()
        self.taking.set()

    def stall(self) -> None:
        self.taking = trio.Event()

    def resume(self) -> None:
        self.taking.set()

    async def run(self) -> None:
        async for batch in self.receive:
            self.out.extend(batch)
            await self.taking.wait()

    def kinds(self) -> list[str]:
        """Each published message: its `n` for a trade, else its subject's type."""
        return [
            str(json.loads(m.payload)["n"]) if ".ssmd." not in m.subject else m.subject
            for m in self.out
        ]


@asynccontextmanager
async def polymarket_stalled(
    read_interval: float,
) -> AsyncIterator[tuple[Connection, NotesSends, SlowPublisher]]:
    """A Polymarket connection up for a second, its socket and its publisher, which has
    stalled on the batch of trade 1 (the reader waits to hand it over) while trades 2 to
    6 arrived."""
    socket = NotesSends(FakeExchange())

    settings = attrs.evolve(
        SETTINGS, read_interval=read_interval, ping_interval=1000.0, liveness_timeout=1000.0
    )
    connection = polymarket_connection(socket, settings)
    # No buffer: a hand-over waits until the publisher takes the batch.
    send, receive = trio.open_memory_channel[list[Inbound]](0)
    publisher = SlowPublisher(receive)

    def trade(n: int) -> str:
        return json.dumps(
            {"event_type": "last_trade_price", "asset_id": "A", "market": "0xm", "n": n}
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.run)
        async with trio.open_nursery() as producer:
            producer.start_soon(connection.run, send)
            await trio.sleep(1.0)
            publisher.stall()
            socket.push(trade(0))  # read at once, taken; the publisher stalls after it
            await trio.sleep(0.001)
            socket.push(trade(1))  # read on the grid; its hand-over waits
            await trio.sleep(1.0)
            assert publisher.kinds()[-1] == "0"
            for n in range(2, 7):
                socket.push(trade(n))
            await trio.testing.wait_all_tasks_blocked()
            yield connection, socket, publisher
            socket.push(trade(7))
            await trio.sleep(1.0)
            producer.cancel_scope.cancel()


def market_b_added() -> list[Change]:
    return [Change(AddMarkets(0, "market", 0, ("B",)), "discovery")]


async def test_frames_that_arrived_during_a_slow_hand_over_come_before_a_live_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reader blocked handing a batch to a slow publisher is not waiting for its next
    read, yet frames arrive meanwhile: a live change waits until they are read, so its
    record (written with the frame after it is sent) follows them."""
    async with polymarket_stalled(INTERVAL) as (connection, socket, publisher):
        sent = len(socket.sent)
        connection.change(market_b_added())
        await trio.sleep(2.0)
        assert len(socket.sent) == sent, "the change went out before the stalled batch"
        publisher.resume()
        await trio.sleep(0.01)
        assert len(socket.sent) == sent + 1
        assert json.loads(socket.sent[-1][1])["operation"] == "subscribe"
    assert connection.stats.lost == 0
    kinds = publisher.kinds()
    assert kinds[kinds.index("0") :] == [
        *"0123456",
        "test.polymarket.json.ssmd.subscription",
        "7",
        "test.polymarket.json.ssmd.disconnect",
    ], kinds


async def test_a_reader_stuck_handing_over_holds_up_a_live_change_only_until_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The change waits for a reader busy handing over, but at most one read interval
    plus the hand-over timeout: a stuck publisher does not hold up commands for longer."""
    async with polymarket_stalled(INTERVAL) as (connection, socket, publisher):
        sent = len(socket.sent)
        changed_at = trio.current_time()
        connection.change(market_b_added())
        await trio.sleep(3 * HANDOFF_TIMEOUT_S)
        assert len(socket.sent) == sent + 1
        sent_at, _ = socket.sent[-1]
        assert abs(sent_at - (changed_at + INTERVAL + HANDOFF_TIMEOUT_S)) < 1e-6, sent_at
        publisher.resume()
