"""A bad or incomplete REST walk never takes an open market off the recording (review of
issue 9, finding 1), end to end: the simulated Kalshi (WebSocket and REST), the
connector with discovery, a real nats-server. Real clock, waits on conditions."""

from __future__ import annotations

import attrs
import pytest
import trio

from ssmd.backoff import Backoff
from ssmd.connector import rest
from ssmd.nats.server import NatsServer
from tests.test_connector_e2e import running_connector, stream_messages
from tests.test_discovery_e2e import (
    Kalshi,
    discovery_config,
    simulated_kalshi,
    subscription_records,
    tickers,
)


def walks_begun(kalshi: Kalshi) -> int:
    """Market walks the simulator has seen begin (a first page: no cursor, no lookup)."""
    return sum(
        1
        for target in kalshi.rest.requests
        if "/markets?" in target and "cursor=" not in target and "tickers=" not in target
    )


@attrs.frozen
class QuickRestSettings(rest.RestSettings):
    backoff: Backoff = Backoff(0.05, 0.2, jitter=0.5)


@pytest.fixture
def quick_rest_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The connector's REST client retries after 50 ms, not after 1 s doubling: a walk
    that meets five bad pages in a row ends in well under a second, not in ~15 s. How
    long the client waits between them is test_rest_walk.py's (on a fake clock); here
    what counts is what an ended walk does to the subscriptions."""
    monkeypatch.setattr(rest, "RestSettings", QuickRestSettings)


async def watch_nothing_lost(kalshi: Kalshi, wanted: set[str], lost: set[str]) -> None:
    """Until cancelled: every wanted market on an order-book subscription, all along."""
    while True:
        lost.update(wanted - set(kalshi.subscribed("orderbook_delta")))
        await trio.sleep(0.02)


async def test_a_market_one_walk_skipped_stays_subscribed(nats_server: NatsServer) -> None:
    markets = tickers("KXA", 30)
    async with simulated_kalshi(markets) as kalshi:
        config = discovery_config(nats_server.url, kalshi, discovery={"refresh": "300ms"})
        async with running_connector(config):
            await kalshi.wait(lambda: len(kalshi.subscribed("orderbook_delta")) == 30)
            lost: set[str] = set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_nothing_lost, kalshi, set(markets), lost)
                begun = walks_begun(kalshi)
                kalshi.rest.hide(markets[:3], walks=1)
                await kalshi.wait(lambda: walks_begun(kalshi) >= begun + 3)
                nursery.cancel_scope.cancel()
            assert lost == set()
            # The walk missed them, the lookup of the missed found them open.
            assert any("tickers=" in target for target in kalshi.rest.requests)
            # Closed without a lifecycle event: the next walk misses it, the lookup
            # finds it closed, and it goes.
            kalshi.catalogue.set_status(markets[0], "closed")
            await kalshi.wait(lambda: markets[0] not in kalshi.subscribed("orderbook_delta"))
        messages = await stream_messages(nats_server.url, 30)
    removed = [m for r in subscription_records(messages) for m in r["removed"]]
    assert removed == [markets[0]]  # from orderbook_delta, the one market-scoped channel


async def test_pages_without_their_list_remove_nothing(
    nats_server: NatsServer, quick_rest_retries: None
) -> None:
    markets = tickers("KXA", 30)
    async with simulated_kalshi(markets) as kalshi:
        config = discovery_config(nats_server.url, kalshi, discovery={"refresh": "300ms"})
        async with running_connector(config) as sup:
            await kalshi.wait(lambda: len(kalshi.subscribed("orderbook_delta")) == 30)
            lost: set[str] = set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_nothing_lost, kalshi, set(markets), lost)
                # Enough bad pages to end a walk in an error (5 in a row), then more.
                kalshi.rest.serve_listless(7)
                await kalshi.wait(
                    lambda: any("no 'markets' list" in reason for reason in sup.not_ready())
                )
                await kalshi.wait(lambda: kalshi.rest.faults.listless == 0)
                begun = walks_begun(kalshi)
                await kalshi.wait(lambda: walks_begun(kalshi) >= begun + 2)
                await kalshi.wait(lambda: sup.not_ready() == [])
                nursery.cancel_scope.cancel()
            assert lost == set()
        messages = await stream_messages(nats_server.url, 30)
    assert [r for r in subscription_records(messages) if r["removed"]] == []
