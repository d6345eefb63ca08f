"""The simulated Polymarket market channel and Gamma API speak the protocol."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from ssmd.feeds.jsonframes import is_array_frame, split_array
from ssmd.simulators.polymarket import PolymarketExchange
from ssmd.simulators.wsserver import FrameKind


@asynccontextmanager
async def exchange(**settings: Any) -> AsyncIterator[PolymarketExchange]:
    sim = PolymarketExchange(**settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        yield sim
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def client(sim: PolymarketExchange) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(sim.url, disconnect_timeout=0.5) as ws:
        yield ws


async def frame(ws: WebSocketConnection) -> bytes:
    with trio.fail_after(10):
        message = await ws.get_message()
    return message.encode() if isinstance(message, str) else message


def events(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(element) for element in split_array(data)]


async def test_gamma_lists_active_markets_in_pages_with_token_ids_as_a_json_string() -> None:
    async with (
        exchange(markets=45, rate=0) as sim,
        httpx.AsyncClient(base_url=sim.gamma.url) as http,
    ):
        sim.resolve_market(sim.markets[3].condition_id)
        listed: list[dict[str, Any]] = []
        offset = 0
        while True:
            response = await http.get(
                "/markets",
                params={"active": "true", "closed": "false", "limit": 10, "offset": offset},
            )
            assert response.status_code == 200
            page = response.json()
            assert isinstance(page, list)
            listed += page
            if len(page) < 10:
                break
            offset += 10
        assert len(listed) == 44
        assert sim.markets[3].condition_id not in {m["conditionId"] for m in listed}
        first = listed[0]
        assert isinstance(first["clobTokenIds"], str)
        assert json.loads(first["clobTokenIds"]) == list(sim.markets[0].tokens)
        assert json.loads(first["outcomes"]) == ["Yes", "No"]
        assert first["conditionId"].startswith("0x") and len(first["conditionId"]) == 66
        assert all(len(t) == 77 for t in json.loads(first["clobTokenIds"]))

        wanted = [sim.markets[5].condition_id, sim.markets[7].condition_id]
        repeated = await http.get("/markets", params={"condition_ids": wanted})
        comma = await http.get("/markets", params={"condition_ids": ",".join(wanted)})
        assert [m["conditionId"] for m in repeated.json()] == wanted
        # The same markets (volumes move with every listing, as Gamma's do).
        assert [m["conditionId"] for m in comma.json()] == wanted
        closed = await http.get("/markets", params={"closed": "true"})
        assert [m["conditionId"] for m in closed.json()] == [sim.markets[3].condition_id]


async def test_gamma_keyset_pages_and_faults() -> None:
    async with (
        exchange(markets=250, rate=0) as sim,
        httpx.AsyncClient(base_url=sim.gamma.url) as http,
    ):
        seen: list[str] = []
        params: dict[str, Any] = {"limit": 100}
        while True:
            body = (await http.get("/markets/keyset", params=params)).json()
            seen += [m["conditionId"] for m in body["markets"]]
            if "next_cursor" not in body:
                break
            params["cursor"] = body["next_cursor"]
        assert seen == [m.condition_id for m in sim.markets]
        refused = await http.get("/markets/keyset", params={"offset": 5})
        assert refused.status_code == 422
        sim.gamma.fail_next(2)
        codes = [(await http.get("/markets")).status_code for _ in range(3)]
        assert codes == [503, 503, 200]
        assert (await http.get("/nope")).status_code == 404
        assert len(sim.gamma.requests) == 8


async def test_initial_subscribe_dumps_books_and_operations_change_the_set() -> None:
    async with exchange(markets=4, rate=0, seed=5) as sim, client(sim) as ws:
        market = sim.markets[0]
        await ws.send_message(
            json.dumps(
                {
                    "assets_ids": [*market.tokens, "123"],
                    "type": "market",
                    "custom_feature_enabled": True,
                }
            )
        )
        dump = await frame(ws)
        assert is_array_frame(dump)
        books = events(dump)
        assert [b["event_type"] for b in books] == ["book", "book"]
        assert [b["asset_id"] for b in books] == list(market.tokens)  # the unknown id: nothing
        for book in books:
            assert book["market"] == market.condition_id
            bids = [float(level["price"]) for level in book["bids"]]
            asks = [float(level["price"]) for level in book["asks"]]
            assert bids == sorted(bids) and asks == sorted(asks, reverse=True)  # worst to best
        other = sim.markets[1]
        await ws.send_message(
            json.dumps({"assets_ids": [other.tokens[0]], "operation": "subscribe"})
        )
        assert [e["asset_id"] for e in events(await frame(ws))] == [other.tokens[0]]
        await ws.send_message(
            json.dumps({"assets_ids": list(market.tokens), "operation": "unsubscribe"})
        )
        await sim.wait_until(lambda: sim.assets[1] == {other.tokens[0], "123"})
        for _ in range(200):
            sim.step()
        await sim.wait_until(lambda: sim.sessions[0].queued == 0)
        for data in sim.data_frames()[2:]:
            for event in events(data):
                assert event["market"] == other.condition_id
                for change in event.get("price_changes", []):
                    assert change["asset_id"] == other.tokens[0]  # filtered to what we hold


async def test_ping_pong_and_ping_timeout() -> None:
    async with exchange(markets=2, rate=0, ping_timeout=2.0) as sim, client(sim) as ws:
        await ws.send_message("PING")
        assert await frame(ws) == b"PONG"
        assert sim.sent[-1].kind is FrameKind.KEEPALIVE and not sim.sent[-1].binary
        with pytest.raises(ConnectionClosed), trio.fail_after(10):
            await ws.get_message()  # no more PINGs: the exchange hangs up


async def test_stream_arrays_custom_events_and_exact_records() -> None:
    async def read_all(ws: WebSocketConnection, into: list[bytes]) -> None:
        while True:
            into.append(await frame(ws))

    async with exchange(markets=6, rate=500, seed=2) as sim:
        async with client(sim) as ws, client(sim) as plain, trio.open_nursery() as readers:
            received: list[bytes] = []
            plain_received: list[bytes] = []
            readers.start_soon(read_all, ws, received)
            readers.start_soon(read_all, plain, plain_received)
            tokens = [t for m in sim.markets for t in m.tokens]
            await ws.send_message(
                json.dumps({"assets_ids": tokens, "type": "market", "custom_feature_enabled": True})
            )
            await plain.send_message(json.dumps({"assets_ids": tokens, "type": "market"}))
            await sim.wait_until(
                lambda: len(sim.data_frames(1)) > 300 and len(sim.data_frames(2)) > 300
            )
            added = sim.add_market()
            sim.resolve_market(sim.markets[0].condition_id)
            sim.paused = True
            await sim.wait_until(lambda: sim.sessions[0].queued == 0 == sim.sessions[1].queued)
            with trio.fail_after(10):
                while len(received) < len(sim.data_frames(1)) or len(plain_received) < len(
                    sim.data_frames(2)
                ):
                    await trio.sleep(0.01)
            readers.cancel_scope.cancel()
        sent = [f.data for f in sim.sent if f.session == 1]
        assert received == sent
        assert plain_received == [f.data for f in sim.sent if f.session == 2]
        kinds: dict[str, int] = {}
        arrays_with_space = 0
        for data in sent:
            arrays_with_space += is_array_frame(data) and (b", " in data or b",\n" in data)
            for event in events(data):
                kinds[event["event_type"]] = kinds.get(event["event_type"], 0) + 1
                assert event["market"] in {m.condition_id for m in sim.markets}
        assert {"book", "price_change", "last_trade_price", "best_bid_ask"} <= set(kinds)
        assert kinds["new_market"] == 1 and kinds["market_resolved"] == 1
        assert arrays_with_space > 0
        plain_types = {e["event_type"] for d in plain_received for e in events(d)}
        assert not {"best_bid_ask", "new_market", "market_resolved"} & plain_types
        new_market = next(e for d in sent for e in events(d) if e["event_type"] == "new_market")
        assert new_market["assets_ids"] == list(added.tokens)


async def test_faults_drop_and_garbage() -> None:
    async with exchange(markets=2, rate=200) as sim, client(sim) as ws:
        await ws.send_message(
            json.dumps({"assets_ids": list(sim.markets[0].tokens), "type": "market"})
        )
        session = await sim.session(0)
        await session.send_garbage(3)
        await session.drop()
        got: list[bytes] = []
        with pytest.raises(ConnectionClosed), trio.fail_after(10):
            while True:
                got.append(await frame(ws))
        assert sum(f.kind is FrameKind.GARBAGE for f in sim.sent) == 3
        assert got == [f.data for f in sim.sent]
        assert sim.drops == 1
