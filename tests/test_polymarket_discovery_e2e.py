"""Polymarket discovery end to end: the simulated CLOB channel and Gamma API -> connector
with `[connector.discovery]` -> a real nats-server. Real clock; every wait is on a
condition, with generous limits.
"""

from __future__ import annotations

import collections
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ssmd.config import Config, parse_config
from ssmd.nats.server import NatsServer
from ssmd.nats.types import FetchedMessage
from ssmd.simulators.polymarket import PolymarketExchange
from tests.test_connector_e2e import STREAM, running_connector
from tests.test_venues_e2e import TIMING, stream_until

WAIT = 60.0  # generous: the machine is shared


@asynccontextmanager
async def exchange(markets: int, **settings: Any) -> AsyncIterator[PolymarketExchange]:
    sim = PolymarketExchange(markets, rate=settings.pop("rate", 0.0), seed=11, **settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        yield sim
        nursery.cancel_scope.cancel()


def config(
    nats_url: str, sim: PolymarketExchange, discovery: dict[str, Any] | None = None, **more: Any
) -> Config:
    connector: dict[str, Any] = {
        **TIMING,
        "feed": "polymarket",
        "url": sim.url,
        "rest_url": sim.gamma.url,
        "channels": ["market"],
        "markets": [],
        "liveness_timeout": "10s",
        "discovery": {"refresh": "5m", "rest_rate": 100.0, **(discovery or {})},
        **more,
    }
    return parse_config(
        {
            "env": "test",
            "nats": {"url": nats_url, "stream": STREAM},
            "service": {"shutdown_timeout": "10s"},
            "connector": [connector],
        }
    )


def open_tokens(sim: PolymarketExchange) -> set[str]:
    return {t for m in sim.markets if not m.closed for t in m.tokens}


def subscribed(sim: PolymarketExchange) -> collections.Counter[str]:
    """Token ids subscribed, over every open connection (a count above 1: twice)."""
    counts: collections.Counter[str] = collections.Counter()
    for assets in sim.assets.values():
        counts.update(assets)
    return counts


async def wait(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


def records(messages: list[FetchedMessage], kind: str) -> list[dict[str, Any]]:
    return [
        json.loads(m.data) for m in messages if m.subject == f"test.polymarket.json.ssmd.{kind}"
    ]


def changes(messages: list[FetchedMessage], field: str) -> dict[str, list[str]]:
    """Per market: the reasons of the subscription records that `added` / `removed` it."""
    out: dict[str, list[str]] = collections.defaultdict(list)
    for record in records(messages, "subscription"):
        for market in record[field]:
            out[market].append(record["reason"])
    return out


def operations(sim: PolymarketExchange, operation: str) -> set[str]:
    """Token ids the connector sent in `operation` commands, on any connection."""
    tokens: set[str] = set()
    for session in sim.sessions:
        for message in session.received:
            try:
                command = json.loads(message)
            except ValueError:
                continue
            if isinstance(command, dict) and command.get("operation") == operation:
                tokens.update(command["assets_ids"])
    return tokens


async def test_every_active_market_both_tokens_once_within_connection_limits(
    nats_server: NatsServer,
) -> None:
    async with exchange(150) as sim:
        sim.resolve_market(sim.markets[7].condition_id)  # closed before the start
        wanted = open_tokens(sim)
        # 60 token ids a connection: 30 markets, so five connections for 149 markets.
        async with running_connector(config(nats_server.url, sim, markets_per_connection=60)):
            await wait(lambda: set(subscribed(sim)) == wanted)
            counts = subscribed(sim)
            assert max(counts.values()) == 1  # no token twice
            assert all(len(assets) <= 60 for assets in sim.assets.values())
            assert len(sim.assets) == 5
            for market in sim.markets:  # both tokens of a market on one connection
                on = {i for i, assets in sim.assets.items() if set(market.tokens) & assets}
                assert len(on) == (0 if market.closed else 1)
        cids = {m.condition_id for m in sim.markets if not m.closed}

        def complete(messages: list[FetchedMessage]) -> bool:
            books = {m.subject.rsplit(".", 1)[1] for m in messages if ".json.book." in m.subject}
            return books >= cids

        messages = await stream_until(nats_server.url, complete, WAIT)
    added = changes(messages, "added")
    assert set(added) == cids and all(reasons == ["discovery"] for reasons in added.values())
    assert all(
        r["sid"] is None and r["channel"] == "market" for r in records(messages, "subscription")
    )
    catalogue = [m.subject for m in messages if ".json.market." in m.subject]
    # Every market Gamma listed as active, once; the closed one is not listed.
    assert sorted(catalogue) == sorted(f"test.polymarket.json.market.{c}" for c in cids)
    assert all(r.startswith("/markets/keyset?") for r in sim.gamma.requests)


async def test_markets_created_and_resolved_during_the_run_follow_their_events(
    nats_server: NatsServer,
) -> None:
    async with exchange(20, rate=50.0) as sim:
        # 10 token ids a connection: five markets each, four connections, each hearing
        # its own copy of every new_market and market_resolved.
        settings = config(nats_server.url, sim, markets_per_connection=10)
        async with running_connector(settings):
            await wait(lambda: set(subscribed(sim)) == open_tokens(sim))
            walks = len(sim.gamma.requests)
            for _ in range(6):
                sim.churn_once()
            await wait(lambda: set(subscribed(sim)) == open_tokens(sim))
            assert max(subscribed(sim).values()) == 1
            assert len(sim.gamma.requests) == walks  # the events did it, not a walk
            resolved_tokens = {
                t for m in sim.markets if m.condition_id in sim.resolved for t in m.tokens
            }
            await wait(lambda: operations(sim, "unsubscribe") >= resolved_tokens)

        def complete(messages: list[FetchedMessage]) -> bool:
            removed = changes(messages, "removed")
            return set(removed) >= set(sim.resolved)

        messages = await stream_until(nats_server.url, complete, WAIT)
    added, removed = changes(messages, "added"), changes(messages, "removed")
    assert len(sim.opened) == len(sim.resolved) == 6
    for cid in sim.opened:  # once, however many connections told of it
        assert added[cid] == ["lifecycle:new_market"], cid
    for cid in sim.resolved:
        assert removed[cid] == ["lifecycle:market_resolved"], cid
    # The events themselves are archived too, on the market's subject.
    kinds = {m.subject.split(".")[3] for m in messages}
    assert {"new_market", "market_resolved", "book"} <= kinds


async def test_reconciliation_catches_what_no_event_said_and_republishes_changed_markets(
    nats_server: NatsServer,
) -> None:
    async with exchange(12) as sim:
        async with running_connector(config(nats_server.url, sim, {"refresh": "300ms"})):
            await wait(lambda: set(subscribed(sim)) == open_tokens(sim))
            quiet_close = sim.markets[2]
            quiet_close.active, quiet_close.closed = False, True  # no market_resolved
            quiet_open = sim._new_market()  # no new_market
            renamed = sim.markets[5]
            renamed.question = "Renamed?"  # what it is: a new catalogue record
            sim.markets[6].yes_cents = 50 if sim.markets[6].yes_cents != 50 else 51  # prices
            await wait(lambda: set(subscribed(sim)) == open_tokens(sim))
            walks = len(sim.gamma.requests)  # one request a walk: 13 markets, one page
            await wait(lambda: len(sim.gamma.requests) >= walks + 2)

        def complete(messages: list[FetchedMessage]) -> bool:
            return quiet_close.condition_id in changes(messages, "removed")

        messages = await stream_until(nats_server.url, complete, WAIT)
    assert changes(messages, "removed") == {quiet_close.condition_id: ["reconcile"]}
    assert changes(messages, "added")[quiet_open.condition_id] == ["reconcile"]
    catalogue = collections.Counter(
        m.subject.rsplit(".", 1)[1] for m in messages if ".json.market." in m.subject
    )
    assert catalogue[renamed.condition_id] == 2  # first seen, and changed
    assert catalogue[sim.markets[6].condition_id] == 1  # a price move is no change
    assert all(count == 1 for cid, count in catalogue.items() if cid != renamed.condition_id)


async def test_gamma_failing_at_start_keeps_recording_then_converges(
    nats_server: NatsServer,
) -> None:
    async with exchange(30) as sim:
        sim.gamma.fail_next(10**6, 500)
        async with running_connector(config(nats_server.url, sim)) as sup:
            await wait(lambda: any("discovery" in reason for reason in sup.not_ready()))
            # Connection 0 is up, custom features on: a new market is recorded from its
            # event while Gamma still fails.
            await wait(lambda: any(sim.custom.values()))
            created = sim.add_market()
            await wait(lambda: set(created.tokens) <= set(subscribed(sim)))
            sim.gamma.fail_next(3, 429)
            await wait(lambda: set(subscribed(sim)) == open_tokens(sim))
            await wait(lambda: sup.not_ready() == [])
            assert max(subscribed(sim).values()) == 1


async def test_named_events_and_static_markets(nats_server: NatsServer) -> None:
    async with exchange(12) as sim:
        static = sim.markets[4]  # sim-event-1: followed, so the static guard is what keeps it
        lone = sim.markets[10]  # sim-event-3: static only
        settings = config(
            nats_server.url,
            sim,
            {"series": ["sim-event-1"]},
            markets=[static.condition_id, lone.condition_id],
        )
        expected = {t for m in (*sim.markets[3:6], lone) for t in m.tokens}
        async with running_connector(settings):
            await wait(lambda: set(subscribed(sim)) == expected)
            other = sim.add_market()  # sim-event-4: not followed
            sim.resolve_market(static.condition_id)  # static: kept
            marker = sim.markets[3]  # followed: removed, after the static one was handled
            sim.resolve_market(marker.condition_id)
            await wait(lambda: not set(marker.tokens) & set(subscribed(sim)))
            assert set(subscribed(sim)) == expected - set(marker.tokens)
            assert not set(other.tokens) & set(subscribed(sim))

            def complete(messages: list[FetchedMessage]) -> bool:
                return marker.condition_id in changes(messages, "removed")

            # While running: the record comes before the next frame (a PONG) is read.
            messages = await stream_until(nats_server.url, complete, WAIT)
    added = changes(messages, "added")
    assert added[lone.condition_id] == ["static"]
    # Resolved beside the walk: the first to place it names it.
    assert added[static.condition_id] in (["static"], ["discovery"])
    assert set(added) == {m.condition_id for m in (*sim.markets[3:6], lone)}
    assert all(len(reasons) == 1 for reasons in added.values())
    assert changes(messages, "removed") == {marker.condition_id: ["lifecycle:market_resolved"]}
