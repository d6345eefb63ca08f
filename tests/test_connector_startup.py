"""Start-up refuses a bad feed before any feed connects: every configured connector is
checked and planned (its static markets resolved) before the first one starts."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

from ssmd.clock import WallClock
from ssmd.config import parse_config
from ssmd.connector.service import start_connector
from ssmd.connector.startup import ping_interval
from ssmd.feeds.polymarket import VENUE as POLYMARKET
from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from ssmd.simulators.polymarket import PolymarketExchange
from ssmd.supervisor import StartupRefused, Supervisor
from tests.test_connector_e2e import STREAM


@attrs.define
class _NoNursery:
    def start_soon(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("nothing may start after a refusal")


async def test_a_bad_third_feed_refuses_before_the_first_starts(nats_server: NatsServer) -> None:
    sim = PolymarketExchange(3, rate=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        good: dict[str, Any] = {"url": sim.url, "rest_url": sim.gamma.url}
        config = parse_config(
            {
                "env": "test",
                "nats": {"url": nats_server.url, "stream": STREAM},
                "connector": [
                    {**good, "feed": "polymarket", "markets": [sim.markets[0].condition_id]},
                    {"feed": "kraken", "url": "ws://127.0.0.1:9/v2", "markets": ["BTC/USD"]},
                    {**good, "feed": "pm2", "kind": "polymarket", "markets": ["0xdead"]},
                ],
            }
        )
        async with open_bridge([nats_server.url]) as bridge:
            sup = Supervisor(_NoNursery(), 1.0)  # type: ignore[arg-type]
            with pytest.raises(StartupRefused, match=r"no CLOB market for condition id.*0xdead"):
                await start_connector(sup, config, bridge, WallClock(), None)
        assert sim.sessions == []  # the first feed never connected
        nursery.cancel_scope.cancel()


def test_polymarket_pings_well_inside_its_ten_second_idle_close() -> None:
    config = parse_config(
        {"env": "test", "connector": [{"feed": "polymarket", "markets": ["0xa"]}]}
    ).connectors[0]
    assert config.ping_interval.seconds == 10.0  # every venue's default
    assert ping_interval(config, POLYMARKET) == 5.0
    faster = parse_config(
        {
            "env": "test",
            "connector": [{"feed": "polymarket", "markets": ["0xa"], "ping_interval": "2s"}],
        }
    ).connectors[0]
    assert ping_interval(faster, POLYMARKET) == 2.0
