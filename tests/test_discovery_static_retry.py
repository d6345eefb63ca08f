"""A market configured by hand that the exchange refuses (Kalshi 16) is tried again after
the next walk, even though the walk's selection (series) does not list it."""

from __future__ import annotations

from ssmd.nats.server import NatsServer
from tests.test_connector_e2e import records, running_connector, stream_messages
from tests.test_discovery_e2e import discovery_config, simulated_kalshi, tickers

BOOK = "orderbook_delta"


async def test_a_static_market_refused_as_unknown_is_subscribed_again(
    nats_server: NatsServer,
) -> None:
    markets = tickers("KXA", 4)
    static = tickers("KXB", 1)[0]
    async with simulated_kalshi([*markets, static]) as kalshi:
        kalshi.ws.unknown_markets = {static}
        config = discovery_config(
            nats_server.url,
            kalshi,
            discovery={"refresh": "300ms", "series": ["KXA"]},
            channels=[BOOK],
            markets=[static],
        )
        async with running_connector(config):
            await kalshi.wait(lambda: len(kalshi.subscribed(BOOK)) == 4)
            kalshi.ws.unknown_markets = set()
            await kalshi.wait(lambda: static in kalshi.subscribed(BOOK))
        messages = await stream_messages(nats_server.url, 3)
    changes = [(r["added"], r["removed"], r["reason"]) for r in records(messages, "subscription")]
    assert ([], [static], "error:16") in changes, changes
    assert any(static in added and reason == "retry" for added, _, reason in changes), changes
