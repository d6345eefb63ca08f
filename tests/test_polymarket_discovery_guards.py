"""Polymarket discovery guards from review: a truncated Gamma walk removes nothing, Gamma
never gets Kalshi's credentials (nor a Kalshi trade ledger), a `new_market` naming other tokens than Gamma is repaired
by the walk, each market-wide event is archived once whatever the number of connections,
and an unknown static condition id is named by `/ready`. Real clock; every wait is on a
condition, with generous limits."""

from __future__ import annotations

import collections
from typing import Any

import pytest
from prometheus_client import generate_latest

from ssmd.nats.server import NatsServer
from ssmd.nats.types import FetchedMessage
from ssmd.simulators.gamma import GammaServer
from ssmd.simulators.http import Request, Response
from tests.keys import API_KEY
from tests.test_connector_e2e import running_connector
from tests.test_polymarket_discovery_e2e import (
    WAIT,
    config,
    exchange,
    open_tokens,
    subscribed,
    wait,
)
from tests.test_venues_e2e import stream_until


async def test_a_walk_cut_short_by_a_repeated_cursor_removes_nothing(
    nats_server: NatsServer,
) -> None:
    async with (
        exchange(250) as sim,
        running_connector(config(nats_server.url, sim, {"refresh": "300ms"})) as sup,
    ):
        await wait(lambda: set(subscribed(sim)) == open_tokens(sim))
        original = sim.gamma.respond

        def ignore_cursor(target: str) -> tuple[int, bytes]:  # py-clob-client#334
            head, _, query = target.partition("?")
            kept = "&".join(p for p in query.split("&") if not p.startswith("cursor="))
            return original(f"{head}?{kept}")

        sim.gamma.respond = ignore_cursor  # type: ignore[method-assign]
        await wait(lambda: any("discovery" in reason for reason in sup.not_ready()))
        before = len(sim.gamma.requests)
        # Three more truncated walks: more than the misses a removal needs.
        await wait(lambda: len(sim.gamma.requests) >= before + 6)
        assert set(subscribed(sim)) == open_tokens(sim)


async def test_gamma_gets_no_kalshi_credentials(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, str]] = []
    original = GammaServer.handle

    async def spy(self: Any, request: Request) -> Response:
        seen.append({k.lower(): v for k, v in dict(request.headers).items()})
        return await original(self, request)

    monkeypatch.setattr(GammaServer, "handle", spy)
    # running_connector passes the Kalshi credentials, as a mixed deployment has them.
    async with exchange(5) as sim, running_connector(config(nats_server.url, sim)) as sup:
        await wait(lambda: set(subscribed(sim)) == open_tokens(sim))
        exposition = generate_latest(sup.metrics).decode()
    # `backfill_trades` (default true) is Kalshi's: no idle trade ledger for Polymarket.
    assert "ssmd_trade_ledger_ids" not in exposition
    assert "ssmd_discovery_markets" in exposition
    assert seen
    leaked = [
        h
        for h in seen
        if any(API_KEY in v for v in h.values()) or any(k.startswith("kalshi-") for k in h)
    ]
    assert not leaked, f"{len(leaked)}/{len(seen)} Gamma requests carry Kalshi headers"


async def test_the_walk_repairs_a_new_market_that_named_other_tokens(
    nats_server: NatsServer,
) -> None:
    async with (
        exchange(4) as sim,
        running_connector(config(nats_server.url, sim, {"refresh": "300ms"})),
    ):
        await wait(lambda: set(subscribed(sim)) == open_tokens(sim))
        encode = sim._encode

        def one_token(events: list[dict[str, Any]]) -> bytes:
            for event in events:
                if event.get("event_type") == "new_market":
                    event["assets_ids"] = event["assets_ids"][:1]
                    event["clob_token_ids"] = event["clob_token_ids"][:1]
            return encode(events)

        sim._encode = one_token  # type: ignore[method-assign]
        created = sim.add_market()
        await wait(lambda: created.tokens[0] in subscribed(sim))
        await wait(lambda: set(subscribed(sim)) == open_tokens(sim))
        assert max(subscribed(sim).values()) == 1


async def test_each_market_wide_event_is_archived_once_however_many_connections(
    nats_server: NatsServer,
) -> None:
    async with exchange(40) as sim:
        async with running_connector(config(nats_server.url, sim, markets_per_connection=10)):
            await wait(lambda: set(subscribed(sim)) == open_tokens(sim))
            created = sim.add_market()
            await wait(lambda: set(created.tokens) <= set(subscribed(sim)))
            resolved = sim.markets[3]
            sim.resolve_market(resolved.condition_id)
            await wait(lambda: not set(resolved.tokens) & set(subscribed(sim)))
            connections = len(sim.assets)
        assert connections >= 4

        def complete(messages: list[FetchedMessage]) -> bool:
            subjects = {m.subject for m in messages}
            return any(
                ".market_resolved." in s and resolved.condition_id in s for s in subjects
            ) and any(".new_market." in s and created.condition_id in s for s in subjects)

        messages = await stream_until(nats_server.url, complete, WAIT)
    copies = collections.Counter(
        m.subject
        for m in messages
        if ".new_market." in m.subject or ".market_resolved." in m.subject
    )
    assert copies == {
        f"test.polymarket.json.new_market.{created.condition_id}": 1,
        f"test.polymarket.json.market_resolved.{resolved.condition_id}": 1,
    }


async def test_an_unknown_static_market_is_named_by_ready_and_the_walk_goes_on(
    nats_server: NatsServer,
) -> None:
    async with exchange(4) as sim:
        bogus = "0x" + "f" * 64
        known = sim.markets[1]
        settings = config(
            nats_server.url, sim, {"series": ["sim-event-0"]}, markets=[bogus, known.condition_id]
        )
        async with running_connector(settings) as sup:
            await wait(
                lambda: set(subscribed(sim)) == open_tokens(sim) - set(sim.markets[3].tokens)
            )
            await wait(lambda: any(bogus in reason for reason in sup.not_ready()))
            assert any("connector.markets" in reason for reason in sup.not_ready())


async def test_a_refused_static_lookup_holds_up_no_walk(nats_server: NatsServer) -> None:
    async with exchange(6) as sim:
        original = sim.gamma.respond

        def refuse_lookups(target: str) -> tuple[int, bytes]:
            if "condition_ids=" in target:
                sim.gamma.requests.append(target)
                return 422, b'{"error":"malformed condition id"}'
            return original(target)

        sim.gamma.respond = refuse_lookups  # type: ignore[method-assign]
        static = sim.markets[0].condition_id
        async with running_connector(config(nats_server.url, sim, markets=[static])) as sup:
            await wait(lambda: set(subscribed(sim)) == open_tokens(sim))
            await wait(lambda: any("static" in reason for reason in sup.not_ready()))
