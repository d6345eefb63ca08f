"""Three venues in one process, each misbehaving: Kalshi, Polymarket and Kraken connectors
share one stream; every venue's connection is dropped mid-run, Kalshi skips seq on a
trade, Kraken sends a wrong book checksum and jumps a trade id. Each venue's data lands
byte-identical and in order on its own feed, connection by connection (a dropped one may
miss only its tail), keepalives never reach the stream, and every break has its record
(and, for the checksum, its repair)."""

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
from tests.test_venues_e2e import quiesce

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


def per_connection(messages: list[FetchedMessage]) -> list[list[bytes]]:
    """A feed's data, connection by connection: a `connect` record starts the next one."""
    connections: list[list[bytes]] = []
    for m in messages:
        if ".json.ssmd." in m.subject:
            if json.loads(m.data)["type"] == "ssmd_connect":
                connections.append([])
        else:
            assert connections, f"data before any connect record: {m.subject}"
            connections[-1].append(m.data)
    return connections


def closing_records(messages: list[FetchedMessage]) -> list[list[dict[str, Any]]]:
    """Per connection, the records between its connect record and the next one."""
    connections: list[list[dict[str, Any]]] = []
    for m in messages:
        if ".json.ssmd." in m.subject:
            record = json.loads(m.data)
            if record["type"] == "ssmd_connect":
                connections.append([])
            elif connections:
                connections[-1].append(record)
    return connections


def assert_each_drop_recorded(closing: list[list[dict[str, Any]]], feed: str) -> None:
    """Every connection but the last was dropped: each has its own disconnect record,
    which does not claim a clean stop (on that connection, not merely somewhere)."""
    *dropped, _last = closing
    for index, records in enumerate(dropped):
        reasons = [r["reason"] for r in records if r["type"] == "ssmd_disconnect"]
        assert reasons, (feed, index, "a dropped connection without a disconnect record")
        assert not any(r.startswith("shutdown") for r in reasons), (feed, index, reasons)


def assert_stored_in_order(stored: list[list[bytes]], sent: list[list[bytes]], feed: str) -> None:
    """Each connection's data stored byte for byte, in order. Only a dropped connection
    (every one but the last) may miss a tail: what was in flight when its socket closed."""
    assert len(stored) == len(sent), (feed, len(stored), len(sent))
    *dropped, last = range(len(sent))
    for index in dropped:
        kept = stored[index]
        assert kept and kept == sent[index][: len(kept)], (feed, index)
        print(feed, index, "kept", len(kept), "of", len(sent[index]))
    assert stored[last] == sent[last], (feed, last, len(stored[last]), len(sent[last]))


def faults_recorded(messages: list[FetchedMessage]) -> bool:
    """Kalshi's seq break, and Kraken's checksum break (with its repair) and trade id
    jump, each has its record in the stream."""
    kalshi, kraken = records(by_feed(messages, "kalshi")), records(by_feed(messages, "kraken"))
    return (
        any(r["type"] == "ssmd_gap" and r["reason"] == "seq" for r in kalshi)
        and {"checksum", "trade_id"} <= {r["reason"] for r in kraken if r["type"] == "ssmd_gap"}
        and any(r["type"] == "ssmd_resubscribe" and "BTC/USD" in r["markets"] for r in kraken)
    )


def live_connections_stored(
    messages: list[FetchedMessage], sent: dict[str, list[list[bytes]]]
) -> bool:
    return all(per_connection(by_feed(messages, feed))[-1:] == sent[feed][-1:] for feed in sent)


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
    kalshi_sent: dict[ExchangeSession, list[bytes]] = {}  # in connection order

    def log_kalshi(session: ExchangeSession, frame: str | bytes) -> None:
        data = frame.encode() if isinstance(frame, str) else frame
        kalshi_sent.setdefault(session, []).append(data)

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
            kraken0 = await kraken.session(0)
            # What the breaks below are measured against has gone out: a Kalshi trade
            # (its seq) and a Kraken ETH/USD trade (its id).
            with trio.fail_after(15):
                while not (
                    any(b'"type":"trade"' in f for f in kalshi_sent.get(k0, []))
                    and any(
                        b'"channel":"trade"' in f and b'"ETH/USD"' in f
                        for f in kraken.data_frames(kraken0.index)
                    )
                ):
                    await trio.sleep(0.05)

            # A seq break on Kalshi trades; a wrong checksum and a trade id jump on Kraken.
            k0.skip_seq(k0.sub_for("trade").sid, 4)
            kraken.break_checksum("BTC/USD")
            kraken.jump_trade_id("ETH/USD", 3)
            # Each seen and recorded (the checksum repaired) before the drops.
            with trio.move_on_after(30):  # else the assertions below say what is missing
                while not faults_recorded(await stream_messages(nats_server.url, 0)):
                    await trio.sleep(0.1)

            # Every venue's connection dropped; each reconnects and resubscribes.
            for exchange in (kalshi, poly, kraken):
                await (await exchange.session(0)).drop()
            await kalshi.session(1, timeout=15)
            poly1 = await poly.session(1, timeout=15)
            kraken1 = await kraken.session(1, timeout=15)
            # Data flowing again on every venue's new connection.
            with trio.fail_after(15):
                while not (
                    len(kalshi_sent) > 1
                    and len(list(kalshi_sent.values())[1]) >= 20
                    and len(poly.data_frames(poly1.index)) >= 5
                    and len(kraken.data_frames(kraken1.index)) >= 20
                ):
                    await trio.sleep(0.05)
            poly.paused = kraken.paused = True
            kalshi.rate = 0
            await quiesce(poly)
            await quiesce(kraken)

            def sent() -> dict[str, list[list[bytes]]]:
                return {
                    "kalshi": list(kalshi_sent.values()),
                    "polymarket": [
                        [e for frame in poly.data_frames(s.index) for e in split_array(frame)]
                        for s in poly.sessions
                    ],
                    "kraken": [kraken.data_frames(s.index) for s in kraken.sessions],
                }

            with trio.move_on_after(30):  # else the assertions below say what differs
                while not live_connections_stored(
                    messages := await stream_messages(nats_server.url, 0), sent()
                ):
                    await trio.sleep(0.1)
        messages = await stream_messages(nats_server.url, len(messages), timeout=30)

    kalshi_msgs = by_feed(messages, "kalshi")
    poly_msgs = by_feed(messages, "polymarket")
    kraken_msgs = by_feed(messages, "kraken")
    assert len(kalshi_msgs) + len(poly_msgs) + len(kraken_msgs) == len(messages)

    # Data, byte for byte and in order, connection by connection (Polymarket arrays as
    # their elements).
    for feed, msgs in (("kalshi", kalshi_msgs), ("polymarket", poly_msgs), ("kraken", kraken_msgs)):
        assert_stored_in_order(per_connection(msgs), sent()[feed], feed)
        assert_each_drop_recorded(closing_records(msgs), feed)

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
