"""Three venues in one process, each misbehaving: Kalshi, Polymarket and Kraken connectors
share one stream; every venue's connection is dropped mid-run, Kalshi skips seq on a
trade, Kraken sends a wrong book checksum and jumps a trade id. Each venue's data lands
byte-identical on its own feed, keepalives never reach the stream, and every break has
its record (and, for the checksum, its repair)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import trio

from ssmd.backoff import Backoff
from ssmd.config import Config, parse_config
from ssmd.connector import service
from ssmd.feeds import gamma
from ssmd.feeds.jsonframes import split_array
from ssmd.nats.server import NatsServer
from ssmd.nats.types import FetchedMessage
from ssmd.simulators.kalshi import ExchangeSession, MarketExchange
from ssmd.simulators.kraken import KrakenExchange
from ssmd.simulators.polymarket import PolymarketExchange
from tests.keys import API_KEY, private_key
from tests.test_connector_e2e import STREAM, running_connector, stream_messages

TIMINGS: dict[str, Any] = {
    "liveness_timeout": "3s",
    "ping_interval": "500ms",
    "command_timeout": "3s",
    "backoff_initial": "50ms",
    "backoff_max": "200ms",
    "publish_timeout": "1s",
}


def three_venues(nats_url: str, kalshi: str, poly: PolymarketExchange, kraken: str) -> Config:
    return parse_config(
        {
            "env": "test",
            "nats": {"url": nats_url, "stream": STREAM},
            "connector": [
                {
                    "feed": "kalshi",
                    "url": kalshi,
                    "channels": ["ticker", "trade", "orderbook_delta"],
                    "markets": ["KXA-1", "KXB-2"],
                    **TIMINGS,
                },
                {
                    "feed": "polymarket",
                    "url": poly.url,
                    "rest_url": poly.gamma.url,
                    "channels": ["market"],
                    "markets": [m.condition_id for m in poly.markets[:3]],
                    **TIMINGS,
                },
                {
                    "feed": "kraken",
                    "url": kraken,
                    "channels": ["book", "trade", "ticker"],
                    "markets": ["BTC/USD", "ETH/USD"],
                    "depth": 10,
                    **TIMINGS,
                },
            ],
        }
    )


@asynccontextmanager
async def serving(*servers: Any) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for server in servers:
            await nursery.start(server.run)
        yield
        nursery.cancel_scope.cancel()


def by_feed(messages: list[FetchedMessage], feed: str) -> list[FetchedMessage]:
    return [m for m in messages if m.subject.startswith(f"test.{feed}.json.")]


def records(messages: list[FetchedMessage]) -> list[dict[str, Any]]:
    return [json.loads(m.data) for m in messages if ".json.ssmd." in m.subject]


def data(messages: list[FetchedMessage]) -> list[bytes]:
    return [m.data for m in messages if ".json.ssmd." not in m.subject]


def assert_sent_and_mostly_kept(archived: list[bytes], sent: list[bytes], feed: str) -> None:
    """Every stored message was sent, and no more often than it was sent (two messages
    may be identical); only connection tails may be missing."""
    extra = Counter(archived) - Counter(sent)
    assert not extra, f"{feed}: stored what was not sent (or twice): {list(extra)[:3]}"
    assert len(archived) >= 0.9 * len(sent), (feed, len(archived), len(sent))
    print(feed, len(archived), "of", len(sent))


async def test_three_venues_in_one_process_survive_their_faults(
    nats_server: NatsServer,
) -> None:
    kalshi = MarketExchange(
        private_key().public_key(),
        API_KEY,
        markets=["KXA-1", "KXB-2"],
        rate=200,
        ping_interval=1.0,
        disconnect_every=None,
        gap_after=None,
    )
    kalshi_sent: list[bytes] = []

    def log_kalshi(session: ExchangeSession, frame: str | bytes) -> None:
        kalshi_sent.append(frame.encode() if isinstance(frame, str) else frame)

    kalshi.on_send = log_kalshi
    poly = PolymarketExchange(markets=6, rate=100)
    kraken = KrakenExchange(rate=100)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(serving(kalshi, poly, kraken))
        config = three_venues(nats_server.url, kalshi.url, poly, kraken.url)
        async with running_connector(config):
            k0 = await kalshi.session(0, timeout=15)
            await k0.wait_until(lambda: len(k0.subscriptions) == 3, timeout=15)
            await poly.session(0, timeout=15)
            await kraken.wait_until(lambda: len(kraken.data_frames()) > 50, timeout=15)
            await trio.sleep(1)

            # A seq break on Kalshi trades; a wrong checksum and a trade id jump on Kraken.
            k0.skip_seq(k0.sub_for("trade").sid, 4)
            kraken.break_checksum("BTC/USD")
            kraken.jump_trade_id("ETH/USD", 3)
            await trio.sleep(1.5)

            # Every venue's connection dropped; each reconnects and resubscribes.
            for exchange in (kalshi, poly, kraken):
                await (await exchange.session(0)).drop()
            await kalshi.session(1, timeout=15)
            await poly.session(1, timeout=15)
            await kraken.session(1, timeout=15)
            await trio.sleep(2)
            poly.paused = kraken.paused = True
            kalshi.rate = 0
            await trio.sleep(0.5)
            expected = len(kalshi_sent) + len(poly.data_frames()) + len(kraken.data_frames())
            messages = await stream_messages(nats_server.url, expected // 2, timeout=30)
        messages = await stream_messages(nats_server.url, len(messages), timeout=30)

    kalshi_msgs = by_feed(messages, "kalshi")
    poly_msgs = by_feed(messages, "polymarket")
    kraken_msgs = by_feed(messages, "kraken")
    assert len(kalshi_msgs) + len(poly_msgs) + len(kraken_msgs) == len(messages)

    # Data, byte for byte (Polymarket arrays as their elements).
    assert_sent_and_mostly_kept(data(kalshi_msgs), kalshi_sent, "kalshi")
    poly_sent = [e for frame in poly.data_frames() for e in split_array(frame)]
    assert_sent_and_mostly_kept(data(poly_msgs), poly_sent, "polymarket")
    assert_sent_and_mostly_kept(data(kraken_msgs), kraken.data_frames(), "kraken")

    # Keepalives never reach the stream.
    for m in messages:
        assert m.data not in (b"PONG", b"PING"), m.subject
        assert b'"channel":"heartbeat"' not in m.data, m.subject
        assert b'"method":"pong"' not in m.data, m.subject

    # Every break has its record, and each venue its reconnect.
    for feed, msgs in (("kalshi", kalshi_msgs), ("polymarket", poly_msgs), ("kraken", kraken_msgs)):
        kinds = Counter(r["type"] for r in records(msgs))
        assert kinds["ssmd_connect"] == 2, (feed, kinds)
        assert kinds["ssmd_disconnect"] >= 2, (feed, kinds)  # the drop and the stop
    kalshi_gaps = [r for r in records(kalshi_msgs) if r["type"] == "ssmd_gap"]
    assert [(g["reason"], g["channel"], g["got"] - g["expected"]) for g in kalshi_gaps] == [
        ("seq", "trade", 4)
    ]
    kraken_records = records(kraken_msgs)
    reasons = Counter(r["reason"] for r in kraken_records if r["type"] == "ssmd_gap")
    assert reasons["checksum"] >= 1 and reasons["trade_id"] >= 1, kraken_records
    assert any(
        r["type"] == "ssmd_resubscribe" and "BTC/USD" in r["markets"] for r in kraken_records
    ), kraken_records


async def test_a_gamma_outage_delays_polymarket_alone(
    nats_server: NatsServer, monkeypatch: Any
) -> None:
    """Gamma answers 503 for a while: Kalshi runs throughout without a disconnect, the
    process stays up (not ready), and Polymarket subscribes once Gamma recovers."""
    monkeypatch.setattr(gamma, "RETRY", Backoff(0.02, 0.05))
    monkeypatch.setattr(service, "MARKETS_RETRY", Backoff(0.05, 0.1))
    kalshi = MarketExchange(
        private_key().public_key(),
        API_KEY,
        markets=["KXA-1", "KXB-2"],
        rate=200,
        ping_interval=1.0,
        disconnect_every=None,
        gap_after=None,
    )
    poly = PolymarketExchange(markets=3, rate=50)
    async with serving(kalshi, poly):
        poly.gamma.fail_next(10**6)
        full = three_venues(nats_server.url, kalshi.url, poly, "ws://127.0.0.1:9")
        config = attrs.evolve(full, connectors=full.connectors[:2])
        async with running_connector(config) as sup:
            k0 = await kalshi.session(0, timeout=15)
            await k0.wait_until(lambda: len(k0.subscriptions) == 3, timeout=15)
            # Well past the feed's first tries (five): retried in the background.
            with trio.fail_after(30):
                while len(poly.gamma.requests) <= 20:
                    await trio.sleep(0.05)
            assert not sup.stopping.is_set()
            assert any("polymarket.markets" in why for why in sup.not_ready())
            assert poly.sessions == []
            poly.gamma.fail_next(0)
            await poly.session(0, timeout=15)
            await poly.wait_until(lambda: len(poly.data_frames()) > 10, timeout=15)
            with trio.fail_after(15):
                while sup.not_ready():
                    await trio.sleep(0.05)
            assert len(kalshi.sessions) == 1 and not sup.stopping.is_set()
