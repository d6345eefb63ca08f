"""Several connectors in one process: one stream covering every feed, each feed on its
own subjects with its own records, all through the generic engine."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest

from ssmd.clock import WallClock
from ssmd.config import Config, parse_config
from ssmd.connector.service import start_connector
from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from ssmd.nats.types import StreamSpec
from ssmd.simulators.kalshi import trade_msg
from ssmd.supervisor import StartupRefused, Supervisor
from tests.test_connector_e2e import (
    STREAM,
    _NoNursery,
    credentials,
    fake_exchange,
    running_connector,
    stream_messages,
)


def two_feeds(nats_url: str, url_a: str, url_b: str) -> Config:
    common: dict[str, Any] = {
        "channels": ["trade"],
        "markets": ["KXA-1"],
        "liveness_timeout": "1s",
        "ping_interval": "250ms",
        "command_timeout": "2s",
        "backoff_initial": "50ms",
        "backoff_max": "200ms",
        "publish_timeout": "1s",
    }
    return parse_config(
        {
            "env": "test",
            "nats": {"url": nats_url, "stream": STREAM},
            "connector": [
                {"feed": "kalshi", "url": url_a, **common},
                {"feed": "kalshi_b", "kind": "kalshi", "url": url_b, **common},
            ],
        }
    )


async def test_two_feeds_record_into_one_stream_that_covers_both(
    nats_server: NatsServer,
) -> None:
    async with fake_exchange() as a, fake_exchange() as b:
        config = two_feeds(nats_server.url, a.url, b.url)
        async with running_connector(config) as sup:
            sent: list[bytes] = []
            for n, exchange in enumerate((a, b)):
                session = await exchange.session(0)
                subscriptions = session.subscriptions
                await session.wait_until(lambda: len(subscriptions) == 1)  # noqa: B023
                sent.append(
                    await session.send_data(
                        "trade", session.sub_for("trade").sid, trade_msg("KXA-1", n)
                    )
                )
            messages = await stream_messages(nats_server.url, 4)
            exposition = generate_latest(sup.metrics).decode()
        async with open_bridge([nats_server.url]) as bridge:
            state = await bridge.stream_state(STREAM)
    assert state is not None
    assert sorted(state.subjects) == ["test.kalshi.json.>", "test.kalshi_b.json.>"]
    by_subject = {m.subject: m.data for m in messages if ".trade." in m.subject}
    assert by_subject == {
        "test.kalshi.json.trade.KXA-1": sent[0],
        "test.kalshi_b.json.trade.KXA-1": sent[1],
    }
    connects = sorted(m.subject for m in messages if m.subject.endswith(".ssmd.connect"))
    assert connects == ["test.kalshi.json.ssmd.connect", "test.kalshi_b.json.ssmd.connect"]
    # One family per metric, a sample per feed.
    assert exposition.count("# TYPE ssmd_connections_up gauge") == 1, exposition
    assert 'ssmd_connections_up{feed="kalshi"} 1.0' in exposition
    assert 'ssmd_connections_up{feed="kalshi_b"} 1.0' in exposition


async def test_an_existing_stream_must_cover_every_feed(nats_server: NatsServer) -> None:
    config = two_feeds(nats_server.url, "ws://127.0.0.1:9/a", "ws://127.0.0.1:9/b")
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(StreamSpec(STREAM, ["test.kalshi.>"], 0, 0, -1, 60, 1))
        sup = Supervisor(_NoNursery(), 1.0)  # type: ignore[arg-type]
        with pytest.raises(StartupRefused) as info:
            await start_connector(sup, config, bridge, WallClock(), credentials())
    message = str(info.value)
    assert "do not cover test.kalshi_b.json.>" in message
    assert "test.kalshi.json.>" not in message.split("do not cover")[1]


def test_kalshi_credentials_are_needed_only_with_a_kalshi_connector() -> None:
    from ssmd.cli.main import _needs_credentials

    def config(*feeds: str) -> Config:
        tables = [{"feed": feed, "markets": ["X"]} for feed in feeds]
        return parse_config({"env": "test", "connector": tables})

    assert not _needs_credentials(config("kraken", "polymarket"))
    assert _needs_credentials(config("kraken", "kalshi"))
