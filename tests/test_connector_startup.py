"""Start-up refuses a bad feed before any feed connects: every configured connector is
checked (what needs no network) before the first one starts. What needs the network (a
venue's market lookup, the credential probe) runs in each feed's own task: a hanging
Gamma holds up no other feed, and its definitive refusal still stops the start (exit 2)."""

from __future__ import annotations

import functools
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
from ssmd.supervisor import StartupRefused, Supervisor, supervise
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
                    # Kalshi without credentials: refused without the network.
                    {"feed": "kalshi", "url": "ws://127.0.0.1:9/ws", "markets": ["KX-A"]},
                ],
            }
        )
        async with open_bridge([nats_server.url]) as bridge:
            sup = Supervisor(_NoNursery(), 1.0)  # type: ignore[arg-type]
            with pytest.raises(StartupRefused, match=r"feed 'kalshi' needs credentials"):
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


@attrs.define
class _Recorder:
    started: list[str] = attrs.Factory(list)

    def start_soon(self, fn: object, *args: object, name: object = None, **kw: object) -> None:
        task = args[0] if args else None
        self.started.append(str(getattr(task, "name", name)))


async def _never_answer(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def test_a_hanging_gamma_holds_up_no_other_feed(nats_server: NatsServer) -> None:
    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(
            functools.partial(trio.serve_tcp, _never_answer, 0, host="127.0.0.1")
        )
        gamma = f"http://127.0.0.1:{listener.socket.getsockname()[1]}"
        config = parse_config(
            {
                "env": "test",
                "nats": {"url": nats_server.url, "stream": STREAM},
                "connector": [
                    {"feed": "polymarket", "markets": ["0x" + "a" * 64], "rest_url": gamma},
                    {"feed": "kraken", "url": "ws://127.0.0.1:9/v2", "markets": ["BTC/USD"]},
                ],
            }
        )
        recorder = _Recorder()
        async with open_bridge([nats_server.url]) as bridge:
            sup = Supervisor(recorder, 1.0)  # type: ignore[arg-type]
            # Gamma's lookup would take 15 s a try: every feed's tasks start well before.
            with trio.fail_after(12):
                await start_connector(sup, config, bridge, WallClock(), None)
        assert "connector.kraken.markets" in recorder.started
        assert "connector.polymarket.markets" in recorder.started
        nursery.cancel_scope.cancel()


async def test_an_unknown_static_condition_id_still_refuses_the_start(
    nats_server: NatsServer,
) -> None:
    sim = PolymarketExchange(3, rate=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        config = parse_config(
            {
                "env": "test",
                "nats": {"url": nats_server.url, "stream": STREAM},
                "service": {"shutdown_timeout": "5s"},
                "connector": [
                    {
                        "feed": "polymarket",
                        "url": sim.url,
                        "rest_url": sim.gamma.url,
                        "markets": ["0xdead"],
                    },
                ],
            }
        )
        async with open_bridge([nats_server.url]) as bridge:

            async def roles(sup: Supervisor) -> None:
                await start_connector(sup, config, bridge, WallClock(), None)

            with trio.fail_after(60), pytest.raises(StartupRefused, match=r"0xdead"):
                await supervise(roles, shutdown_timeout=5.0, handle_signals=False)
        nursery.cancel_scope.cancel()
