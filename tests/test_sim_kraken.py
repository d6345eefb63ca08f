"""The simulated Kraken v2 exchange speaks the protocol: per-symbol acks, books whose
checksums a correct client reproduces at every depth, trade ids, keepalives, faults."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    DisconnectionTimeout,
    WebSocketConnection,
    open_websocket_url,
)

from ssmd.feeds.kraken_book import KrakenBook, decode_book_frame
from ssmd.simulators.kraken import KrakenExchange
from ssmd.simulators.wsserver import FrameKind


@asynccontextmanager
async def exchange(**settings: Any) -> AsyncIterator[KrakenExchange]:
    sim = KrakenExchange(**settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        yield sim
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def client(sim: KrakenExchange) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(sim.url, disconnect_timeout=0.5) as ws:
        yield ws


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(10):
        message: dict[str, Any] = json.loads(await ws.get_message())
        return message


async def send(ws: WebSocketConnection, message: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(message))


async def subscribe(
    ws: WebSocketConnection, channel: str, symbols: list[str], req_id: int, **params: Any
) -> list[dict[str, Any]]:
    """Send a subscribe and return the acks, one per symbol (other frames skipped)."""
    await send(
        ws,
        {
            "method": "subscribe",
            "params": {"channel": channel, "symbol": symbols, **params},
            "req_id": req_id,
        },
    )
    acks: list[dict[str, Any]] = []
    while len(acks) < len(symbols):
        message = await receive(ws)
        if message.get("method") == "subscribe":
            acks.append(message)
    return acks


async def test_status_first_then_one_ack_per_symbol_and_a_snapshot() -> None:
    async with exchange(rate=0) as sim, client(sim) as ws:
        status = await receive(ws)
        assert status["channel"] == "status" and status["data"][0]["system"] == "online"
        acks = await subscribe(ws, "book", ["BTC/USD", "DOGE/XYZ", "ETH/USD"], 7, depth=10)
        assert [a["req_id"] for a in acks] == [7, 7, 7]
        assert [a["success"] for a in acks] == [True, False, True]
        assert acks[1]["error"] == "Currency pair not supported"
        assert acks[0]["result"] == {
            "channel": "book",
            "symbol": "BTC/USD",
            "depth": 10,
            "snapshot": True,
        }
        await sim.wait_until(lambda: sim.sessions[0].queued == 0)
        kinds = [(f.kind, json.loads(f.data).get("channel")) for f in sim.sent]
        assert kinds.count((FrameKind.DATA, "book")) == 2  # the two snapshots
        assert kinds[0] == (FrameKind.DATA, "status")
        bad = await subscribe(ws, "book", ["BTC/USD"], 8, depth=7)
        assert bad[0]["success"] is False
        await send(
            ws, {"method": "subscribe", "params": {"channel": "nope", "symbol": ["BTC/USD"]}}
        )
        while (reply := await receive(ws)).get("method") != "subscribe":
            pass
        assert reply["success"] is False and "req_id" not in reply


@pytest.mark.parametrize("depth", [10, 25])
async def test_a_correct_client_reproduces_every_checksum(depth: int) -> None:
    async with exchange(rate=0, seed=depth) as sim, client(sim) as ws:
        params = {"channel": "book", "symbol": ["BTC/USD", "ETH/USD"], "depth": depth}
        await send(ws, {"method": "subscribe", "params": params})
        await sim.wait_until(lambda: len(sim.sent) == 5)  # status, and an ack and a snapshot each
        books = {"BTC/USD": KrakenBook(depth), "ETH/USD": KrakenBook(depth)}
        checked = 0
        received: list[bytes] = []
        session = sim.sessions[0]
        for _ in range(20):
            for _ in range(100):
                sim.change_book(sim.symbols["BTC/USD"])
                sim.change_book(sim.symbols["ETH/USD"])
            await sim.wait_until(lambda: session.queued == 0)
            while len(received) < len(sim.sent):
                raw = await ws.get_message()
                received.append(raw.encode() if isinstance(raw, str) else raw)
                if not received[-1].startswith(b'{"channel":"book"'):
                    continue
                frame = decode_book_frame(received[-1])
                data = frame.data[0]
                book = books[data.symbol]
                if frame.type == "snapshot":
                    book.apply_snapshot(data.bids, data.asks)
                else:
                    book.apply_update(data.bids, data.asks)
                assert book.checksum() == data.checksum
                assert len(book.levels()[0]) == depth
                checked += 1
        assert checked > 1000
        # What the exchange recorded is what the client got, byte for byte.
        assert [f.data for f in sim.sent] == received


async def drain_books(
    ws: WebSocketConnection, book: KrakenBook, count: int
) -> list[tuple[str, bool]]:
    """Read `count` book frames, applying them; (type, checksum matched) for each."""
    results: list[tuple[str, bool]] = []
    with trio.fail_after(10):
        return await _drain(ws, book, count, results)


async def _drain(
    ws: WebSocketConnection, book: KrakenBook, count: int, results: list[tuple[str, bool]]
) -> list[tuple[str, bool]]:
    while len(results) < count:
        raw = await ws.get_message()
        data_bytes = raw.encode() if isinstance(raw, str) else raw
        if not data_bytes.startswith(b'{"channel":"book"'):
            continue
        frame = decode_book_frame(data_bytes)
        data = frame.data[0]
        if frame.type == "snapshot":
            book.apply_snapshot(data.bids, data.asks)
        else:
            book.apply_update(data.bids, data.asks)
        results.append((frame.type, book.checksum() == data.checksum))
    return results


async def test_checksum_faults_and_the_resubscribe_that_repairs_them() -> None:
    async with exchange(rate=0, seed=3) as sim, client(sim) as ws:
        await subscribe(ws, "book", ["BTC/USD"], 1, depth=10)
        book = KrakenBook(10)
        state = sim.symbols["BTC/USD"]

        def changes(n: int) -> None:
            while n > 0:
                n -= sim.change_book(state)

        changes(5)
        assert all(ok for _, ok in await drain_books(ws, book, 6))
        # A wrong checksum on one update; the book itself is still right.
        sim.break_checksum("BTC/USD")
        changes(3)
        assert [ok for _, ok in await drain_books(ws, book, 3)] == [False, True, True]
        # A lost update: every later checksum fails until a fresh snapshot.
        sim.lose_book_update("BTC/USD")
        while sim.symbols["BTC/USD"].lose_next_update:
            assert sim.change_book(state) == 0  # the change is not sent
        changes(4)
        assert not any(ok for _, ok in await drain_books(ws, book, 4))
        await send(
            ws, {"method": "unsubscribe", "params": {"channel": "book", "symbol": ["BTC/USD"]}}
        )
        await subscribe(ws, "book", ["BTC/USD"], 2, depth=10)
        changes(3)
        assert await drain_books(ws, book, 4) == [("snapshot", True)] + [("update", True)] * 3


async def test_trade_ids_grow_by_one_and_can_jump() -> None:
    async with exchange(rate=0) as sim, client(sim) as ws:
        await subscribe(ws, "trade", ["ETH/USD"], 1)
        await subscribe(ws, "ticker", ["ETH/USD"], 2)
        state = sim.symbols["ETH/USD"]
        for _ in range(5):
            sim.trade(state)
        sim.jump_trade_id("ETH/USD", 4)
        sim.trade(state)
        ids: list[int] = []
        tickers = 0
        while tickers < 6:
            message = await receive(ws)
            if message.get("channel") == "trade":
                ids += [t["trade_id"] for t in message["data"]]
            elif message.get("channel") == "ticker" and message["type"] == "update":
                tickers += 1
        steps = [b - a for a, b in itertools.pairwise(ids)]
        assert steps.count(5) == 1 and set(steps) == {1, 5}


async def test_ping_pong_and_heartbeat_are_keepalives() -> None:
    async with exchange(rate=0, heartbeat_interval=0.05) as sim, client(sim) as ws:
        await receive(ws)  # status
        await send(ws, {"method": "ping", "req_id": 42})
        pong = await receive(ws)
        assert pong["method"] == "pong" and pong["req_id"] == 42
        # No subscription: no heartbeat. With one: heartbeats while nothing else moves.
        await subscribe(ws, "trade", ["BTC/USD"], 1)
        assert await receive(ws) == {"channel": "heartbeat"}
        await sim.wait_until(lambda: sim.sessions[0].queued == 0)
        kinds = {}
        for frame in sim.sent:
            message = json.loads(frame.data)
            kinds[message.get("channel", message.get("method"))] = frame.kind
        assert kinds["heartbeat"] is FrameKind.KEEPALIVE
        assert kinds["pong"] is FrameKind.KEEPALIVE
        assert kinds["subscribe"] is FrameKind.CONTROL
        assert kinds["status"] is FrameKind.DATA


async def test_streaming_drop_garbage_and_silence() -> None:
    async with exchange(rate=400, seed=1) as sim:
        async with client(sim) as ws:
            await subscribe(ws, "book", ["BTC/USD", "ETH/USD", "SOL/USD"], 1)
            await subscribe(ws, "trade", ["BTC/USD", "ETH/USD", "SOL/USD"], 2)
            await sim.wait_until(lambda: len(sim.data_frames()) > 50)
            session = sim.sessions[0]
            await session.send_garbage(2)
            assert [f.kind for f in sim.sent].count(FrameKind.GARBAGE) == 2
            await session.drop()
            with pytest.raises(ConnectionClosed), trio.fail_after(10):
                while True:
                    await ws.get_message()
        # A black-holed server never answers the close handshake.
        with pytest.raises(DisconnectionTimeout):
            async with client(sim) as ws:
                session = await sim.session(1)
                assert session.index == 2
                await receive(ws)
                session.go_silent()
                count = len(sim.sent)
                await subscribe_silently(ws)
                with trio.move_on_after(0.3):
                    await ws.get_message()
                    raise AssertionError("a silent connection delivered a frame")
                assert len(sim.sent) == count  # nothing recorded as sent while silent


async def subscribe_silently(ws: WebSocketConnection) -> None:
    await send(ws, {"method": "subscribe", "params": {"channel": "trade", "symbol": ["BTC/USD"]}})
