"""`connector.read_interval`: a busy socket is read at most once per interval, on a grid
of Trio time, and nothing read is lost or stamped before it was read.

Driven by in-memory sockets under a fake clock (the harness of
`test_connector_connection`).
"""

from __future__ import annotations

import json

import attrs
import trio
import trio.testing

from ssmd.connector.shards import SubscriptionPlan
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
        out = list(await super().receive_batch(limit))
        try:
            while len(out) < limit:
                frame = self._receive.receive_nowait()
                assert frame is not None
                out.append(frame)
        except trio.WouldBlock:
            pass
        self.reads.append((trio.current_time(), len(out)))
        return out

    @property
    def backlogged(self) -> bool:
        return Draining.backlog


def harness(read_interval: float) -> tuple[FakeExchange, Harness]:
    exchange = FakeExchange()
    exchange.socket_class = Draining
    settings = attrs.evolve(SETTINGS, read_interval=read_interval)
    return exchange, Harness(exchange, [SubscriptionPlan("trade")], settings)


async def stream(socket: FakeSocket, frames: int, every: float) -> None:
    for i in range(frames):
        socket.push_data("trade", 1, None, {"market_ticker": "A", "n": i})
        await trio.sleep(every)


def trades(h: Harness) -> list[tuple[int, int]]:
    """(n, recv_ns) of each published trade, in order."""
    return [(json.loads(m.payload)["msg"]["n"], m.recv_ns) for m in h.out if ".trade." in m.subject]


async def test_a_busy_socket_is_read_once_per_interval_on_the_grid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange, h = harness(INTERVAL)
    async with running(h):
        await trio.sleep(1)
        socket = exchange.sockets[0]
        assert isinstance(socket, Draining)
        socket.reads.clear()
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
        await trio.sleep(1)
        socket = exchange.sockets[0]
        assert isinstance(socket, Draining)
        socket.reads.clear()
        await stream(socket, 100, 0.001)
        await trio.sleep(1)
        assert len(socket.reads) == 100


async def test_a_frame_after_a_quiet_spell_is_read_and_stamped_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    exchange, h = harness(INTERVAL)
    async with running(h):
        await trio.sleep(1)
        socket = exchange.sockets[0]
        assert isinstance(socket, Draining)
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
            await trio.sleep(1)
            socket = exchange.sockets[0]
            assert isinstance(socket, Draining)
            socket.reads.clear()
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
    exchange = FakeExchange()
    exchange.socket_class = Draining

    def snapshot(socket: FakeSocket, sid: int, params: dict[str, object]) -> None:
        socket.push_data("orderbook_snapshot", sid, 1, {"market_ticker": "A", "yes": []})

    exchange.on_subscribe = snapshot
    settings = attrs.evolve(SETTINGS, read_interval=30.0)
    h = Harness(exchange, [SubscriptionPlan("orderbook_delta", ("A",))], settings)
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
