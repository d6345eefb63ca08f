"""The simulated Kalshi exchange of the demo speaks the protocol: signed handshake,
command replies, `seq` per sid with exactly one deliberate gap, dropped connections."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from ssmd.connector.auth import Credentials
from ssmd.simulators.kalshi import SimulatedExchange
from tests.keys import other_private_key, private_key

API_KEY = "5b1f2d3c-0000-4000-8000-000000000001"


exchange_key = private_key
stranger_key = other_private_key


def headers(
    url: str, key: rsa.RSAPrivateKey | None = None, **kwargs: int
) -> list[tuple[bytes, bytes]]:
    credentials = Credentials(api_key=API_KEY, private_key=key or exchange_key())
    return [(k.encode(), v.encode()) for k, v in credentials.handshake_headers(url, **kwargs)]


@asynccontextmanager
async def serving(**settings: Any) -> AsyncIterator[SimulatedExchange]:
    exchange = SimulatedExchange(exchange_key().public_key(), API_KEY, **settings)
    await exchange.listen()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(exchange.serve)
        yield exchange
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def client(exchange: SimulatedExchange) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(exchange.url, extra_headers=headers(exchange.url)) as ws:
        yield ws


async def command(ws: WebSocketConnection, command_id: int, cmd: str, **params: Any) -> None:
    await ws.send_message(json.dumps({"id": command_id, "cmd": cmd, "params": params}))


async def next_reply(ws: WebSocketConnection) -> dict[str, Any]:
    """The next command reply, skipping data messages."""
    while True:
        message: dict[str, Any] = json.loads(await ws.get_message())
        if "id" in message:
            return message


async def test_a_handshake_not_signed_by_the_exchange_key_gets_401() -> None:
    async with serving() as exchange:
        url = exchange.url
        for bad in (
            headers(url, stranger_key()),
            headers(url, timestamp_ms=int(time.time() * 1000) - 60_000),
            [(k, b"x" if k == b"KALSHI-ACCESS-KEY" else v) for k, v in headers(url)],
        ):
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(url, extra_headers=bad):
                    pass
            assert rejected.value.status_code == 401
        assert exchange.stats.rejected == 3
        async with client(exchange):
            pass
        assert exchange.stats.connections == 1


async def test_commands_get_kalshi_replies() -> None:
    async with serving() as exchange, client(exchange) as ws:
        market = exchange.markets[0]
        await command(ws, 1, "subscribe", channels=["ticker"])
        subscribed = await next_reply(ws)
        assert subscribed["type"] == "subscribed" and subscribed["id"] == 1
        assert subscribed["msg"]["channel"] == "ticker"
        sid = subscribed["msg"]["sid"]

        await command(ws, 2, "update_subscription", sids=[sid], market_tickers=[market])
        ok = await next_reply(ws)
        assert (ok["type"], ok["id"], ok["sid"]) == ("ok", 2, sid)

        await command(ws, 3, "unsubscribe", sids=[sid])
        unsubscribed = await next_reply(ws)
        assert (unsubscribed["type"], unsubscribed["id"], unsubscribed["sid"]) == (
            "unsubscribed",
            3,
            sid,
        )

        await command(ws, 4, "subscribe", channels=["orderbook_delta"])
        assert (await next_reply(ws))["type"] == "error"
        await command(ws, 5, "subscribe", channels=["no_such_channel"])
        assert (await next_reply(ws))["type"] == "error"
        await command(ws, 6, "unsubscribe", sids=7)
        assert (await next_reply(ws))["type"] == "error"
        await command(ws, 7, "no_such_command")
        assert (await next_reply(ws))["type"] == "error"


async def collect(ws: WebSocketConnection, seconds: float) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    with trio.move_on_after(seconds):
        while True:
            messages.append(json.loads(await ws.get_message()))
    return messages


async def test_seq_is_continuous_per_sid_except_one_deliberate_gap() -> None:
    async with serving(rate=3000, gap_after=0.3, disconnect_every=None) as exchange:
        markets = exchange.markets[:5]
        async with client(exchange) as ws:
            await command(ws, 1, "subscribe", channels=["orderbook_delta"], market_tickers=markets)
            await command(ws, 2, "subscribe", channels=["trade"])
            await command(ws, 3, "subscribe", channels=["ticker"])
            messages = await collect(ws, 0.8)

    book_sid = next(m["msg"]["sid"] for m in messages if m.get("id") == 1)
    snapshots = [m for m in messages if m["type"] == "orderbook_snapshot"]
    assert [(m["sid"], m["seq"]) for m in snapshots] == [(book_sid, n) for n in range(1, 6)]
    assert {m["msg"]["market_ticker"] for m in snapshots} == set(markets)

    jumps = []
    last: dict[int, int] = {}
    for m in messages:
        if "seq" not in m or "id" in m:
            continue
        if m["sid"] in last and m["seq"] != last[m["sid"]] + 1:
            jumps.append((m["sid"], last[m["sid"]] + 1, m["seq"]))
        last[m["sid"]] = m["seq"]
    assert exchange.gap is not None
    assert jumps == [(exchange.gap.sid, exchange.gap.expected, exchange.gap.sent)]
    assert exchange.gap.sid == book_sid

    kinds = {m["type"] for m in messages}
    assert {"ticker", "trade", "orderbook_snapshot", "orderbook_delta"} <= kinds
    assert all("seq" not in m for m in messages if m["type"] == "ticker")
    assert any("." in m["msg"]["market_ticker"] for m in messages if m["type"] == "trade")


async def test_the_same_seed_streams_the_same_messages() -> None:
    def shape(m: dict[str, Any]) -> tuple[Any, ...]:
        body = {k: v for k, v in m.get("msg", {}).items() if k not in ("ts", "Clock")}
        return m["type"], m.get("seq"), json.dumps(body, sort_keys=True)

    runs = []
    for _ in range(2):
        async with serving(seed=7, rate=2000, gap_after=None) as exchange, client(exchange) as ws:
            await command(ws, 1, "subscribe", channels=["ticker"])
            books = exchange.markets[:3]
            await command(ws, 2, "subscribe", channels=["orderbook_delta"], market_tickers=books)
            await command(ws, 3, "subscribe", channels=["trade"])
            messages = [m for m in await collect(ws, 0.3) if "id" not in m]
            runs.append([shape(m) for m in messages[:100]])
    assert len(runs[0]) == 100 and runs[0] == runs[1]


async def test_connections_are_dropped_without_a_close_frame() -> None:
    async with serving(disconnect_every=0.3) as exchange, client(exchange) as ws:
        await command(ws, 1, "subscribe", channels=["ticker"])
        with trio.fail_after(2), pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.get_message()
        reason = closed.value.reason
        assert reason is not None and reason.code == 1006  # abnormal closure: no close frame
        assert exchange.stats.drops == 1
