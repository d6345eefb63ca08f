"""Polymarket and Kraken end to end: simulated exchange -> connector -> real nats-server.

Every data frame the exchange sent lands on its subject byte for byte (a Polymarket
array frame as its elements' exact bytes), in order; keepalives and acks never reach the
stream; a dropped connection is recorded, reconnected and subscribed again; a Kraken
checksum break gives a gap record, a resubscribe and a fresh snapshot, and a trade_id
jump a gap record alone.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from ssmd.backoff import Backoff
from ssmd.config import Config, parse_config
from ssmd.connector import connection
from ssmd.feeds.jsonframes import split_array
from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from ssmd.nats.types import FetchedMessage
from ssmd.simulators.kraken import KrakenExchange
from ssmd.simulators.polymarket import PolymarketExchange
from ssmd.simulators.wsserver import FrameKind, SimServer
from tests.test_connector_e2e import STREAM, running_connector

TIMING: dict[str, Any] = {
    "liveness_timeout": "3s",
    "ping_interval": "250ms",
    "command_timeout": "3s",
    "backoff_initial": "50ms",
    "backoff_max": "200ms",
    "publish_timeout": "1s",
}


def config_for(nats_url: str, connector: dict[str, Any]) -> Config:
    return parse_config(
        {
            "env": "test",
            "nats": {"url": nats_url, "stream": STREAM},
            "service": {"shutdown_timeout": "10s"},
            "connector": [{**TIMING, **connector}],
        }
    )


@asynccontextmanager
async def serving(sim: SimServer) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        yield
        nursery.cancel_scope.cancel()


async def stream_until(
    url: str, done: Callable[[list[FetchedMessage]], bool], timeout: float = 20.0
) -> list[FetchedMessage]:
    """Every message in the stream, read again until `done` says it is all there."""
    async with open_bridge([url], request_timeout=2.0) as bridge:
        with trio.fail_after(timeout):
            while True:
                state = await bridge.stream_state(STREAM)
                if state is not None and state.messages:
                    consumer = await bridge.reset_consumer(
                        STREAM, "test-reader", "test.>", None, 30.0, 100_000
                    )
                    messages: list[FetchedMessage] = []
                    while len(messages) < state.messages:
                        messages.extend(await consumer.fetch(1000, 1.0))
                    await consumer.close()
                    if done(messages):
                        return messages
                await trio.sleep(0.1)


def data(messages: list[FetchedMessage]) -> list[tuple[str, bytes]]:
    return [(m.subject, m.data) for m in messages if ".json.ssmd." not in m.subject]


def records(messages: list[FetchedMessage], kind: str) -> list[dict[str, Any]]:
    return [json.loads(m.data) for m in messages if m.subject.endswith(f".json.ssmd.{kind}")]


async def quiesce(sim: SimServer) -> None:
    """Stop the market and wait until every queued frame has gone out."""
    sim.paused = True
    await sim.wait_until(lambda: all(s.queued == 0 or s.closed.is_set() for s in sim.sessions))


def polymarket_expected(sim: PolymarketExchange) -> list[tuple[str, bytes]]:
    expected = []
    for frame in sim.sent:
        if frame.kind is FrameKind.GARBAGE:
            expected.append(("test.polymarket.json.unrouted.invalid", frame.data))
        if frame.kind is not FrameKind.DATA:
            continue
        for element in split_array(frame.data):
            event = json.loads(element)
            expected.append(
                (f"test.polymarket.json.{event['event_type']}.{event['market']}", element)
            )
    return expected


async def test_polymarket_elements_byte_identical_and_a_drop_resubscribes(
    nats_server: NatsServer,
) -> None:
    sim = PolymarketExchange(markets=4, rate=300, seed=3)
    async with serving(sim):
        wanted = sim.markets[:3]
        config = config_for(
            nats_server.url,
            {
                "feed": "polymarket",
                "url": sim.url,
                "rest_url": sim.gamma.url,
                "channels": ["market"],
                "markets": [m.condition_id for m in wanted],
                "markets_per_connection": 4,  # two connections: 4 tokens and 2
            },
        )
        async with running_connector(config):
            first, second = await sim.session(0), await sim.session(1)
            await sim.wait_until(lambda: len(sim.data_frames()) > 200)
            # Both connections ping; the exchange pongs; none of it is data.
            await sim.wait_until(lambda: sum(f.kind is FrameKind.KEEPALIVE for f in sim.sent) >= 2)
            await first.send_garbage(4)
            await first.drop()
            third = await sim.session(2)
            await sim.wait_until(lambda: len(sim.data_frames(third.index)) > 20)
            await quiesce(sim)
            expected = polymarket_expected(sim)
            messages = await stream_until(
                nats_server.url, lambda ms: len(data(ms)) >= len(expected)
            )
    initial = [json.loads(s.received[0]) for s in (first, second, third)]
    tokens = [t for m in wanted for t in m.tokens]
    assert sorted(i["assets_ids"] for i in initial[:2]) == sorted([tokens[:4], tokens[4:]])
    for message in initial:
        assert message["type"] == "market" and message["custom_feature_enabled"] is True
    assert initial[2] == initial[0]  # the reconnect subscribed the same assets again
    assert any(message == "PING" for s in (first, second) for message in s.received)
    got = data(messages)
    # Two connections interleave in the stream; each connection's own order is kept.
    assert sorted(got) == sorted(expected)
    for session in (first, second, third):
        own = [
            e
            for f in sim.sent
            if f.session == session.index and f.kind is FrameKind.DATA
            for e in split_array(f.data)
        ]
        assert [payload for _, payload in got if payload in set(own)] == own
    assert b"PONG" not in {payload for _, payload in got}
    assert any(frame.data.lstrip().startswith(b"[") and b"," in frame.data for frame in sim.sent), (
        "the test must see array frames"
    )
    assert len(records(messages, "connect")) == 3
    assert len(records(messages, "disconnect")) >= 1


def kraken_config(nats_url: str, sim: KrakenExchange, client: str = "ssmd") -> Config:
    return config_for(
        nats_url,
        {
            "websocket_client": client,
            "feed": "kraken",
            "url": sim.url,
            "channels": ["book", "trade", "ticker"],
            "markets": ["BTC/USD", "ETH/USD"],
            "depth": 25,
        },
    )


async def test_kraken_frames_byte_identical_checksum_repair_and_trade_gap(
    nats_server: NatsServer,
) -> None:
    sim = KrakenExchange(rate=300, seed=5, heartbeat_interval=0.1)
    async with serving(sim), running_connector(kraken_config(nats_server.url, sim)):
        session = await sim.session(0)

        def subscribed() -> int:
            subs = sim.subscriptions.get(session.index)
            return 0 if subs is None else sum(map(len, subs.channels.values()))

        await sim.wait_until(lambda: subscribed() == 6)
        await sim.wait_until(lambda: len(sim.data_frames()) > 150)
        sim.break_checksum("BTC/USD")
        sim.jump_trade_id("ETH/USD", 9)
        # The repair: unsubscribe and subscribe BTC/USD's book, then a fresh snapshot.
        await sim.wait_until(
            lambda: (
                sum('"unsubscribe"' in str(m) for m in session.received) == 1
                and sum(f.data.startswith(b'{"channel":"book","type":"snapshot"') for f in sim.sent)
                == 3
            )
        )
        await sim.wait_until(lambda: len(sim.data_frames()) > 400)
        await quiesce(sim)
        # Heartbeats while the market is quiet: liveness, never data.
        await sim.wait_until(
            lambda: sum(f.data == b'{"channel":"heartbeat"}' for f in sim.sent) >= 3
        )
        expected = sim.data_frames()
        messages = await stream_until(nats_server.url, lambda ms: len(data(ms)) >= len(expected))
    got = data(messages)
    assert [payload for _, payload in got] == expected
    for subject, payload in got:
        frame = json.loads(payload)
        if frame["channel"] == "status":
            assert subject == "test.kraken.json.status.system"
        else:
            assert subject == f"test.kraken.json.{frame['channel']}.{frame['data'][0]['symbol']}"
    gaps = records(messages, "gap")
    assert sorted(g["reason"] for g in gaps) == ["checksum", "trade_id"]
    checksum = next(g for g in gaps if g["reason"] == "checksum")
    assert checksum["markets"] == ["BTC/USD"] and checksum["channel"] == "book"
    trade = next(g for g in gaps if g["reason"] == "trade_id")
    assert trade["markets"] == ["ETH/USD"] and trade["got"] - trade["expected"] == 9
    (resubscribe,) = records(messages, "resubscribe")
    assert resubscribe["reason"] == "checksum" and resubscribe["markets"] == ["BTC/USD"]
    # In place: gap, then the resubscribe, then the fresh BTC/USD snapshot.
    subjects = [m.subject for m in messages]
    gap_at = next(
        i
        for i, m in enumerate(messages)
        if m.subject.endswith("ssmd.gap") and b"checksum" in m.data
    )
    resubscribe_at = subjects.index("test.kraken.json.ssmd.resubscribe")
    snapshot_at = next(
        i
        for i, m in enumerate(messages)
        if i > resubscribe_at and m.data.startswith(b'{"channel":"book","type":"snapshot"')
    )
    assert gap_at < resubscribe_at < snapshot_at
    assert b'"BTC/USD"' in messages[snapshot_at].data
    assert not any(b'"heartbeat"' in p or b'"pong"' in p or b'"method"' in p for _, p in got)


async def test_kraken_refused_symbol_beside_a_good_one(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """XBT/USD is refused before ETH/USD is acked in the same request: only XBT/USD is
    recorded and retried; ETH/USD stays subscribed, checked and repaired."""
    # The retry comes after 0.2 s, not 5 s: that it comes is what counts here.
    monkeypatch.setattr(connection, "SUBSCRIBE_RETRY", Backoff(0.2, 0.5))
    sim = KrakenExchange(rate=200, seed=7)
    async with serving(sim):
        markets = ["XBT/USD", "ETH/USD"]
        connector = {"feed": "kraken", "url": sim.url, "channels": ["book"], "markets": markets}
        async with running_connector(config_for(nats_server.url, connector)):
            session = await sim.session(0)
            await sim.wait_until(lambda: len(sim.data_frames()) > 50)
            sim.break_checksum("ETH/USD")
            snapshot = b'{"channel":"book","type":"snapshot"'
            await sim.wait_until(lambda: sum(f.data.startswith(snapshot) for f in sim.sent) == 2)
            # The refused XBT/USD has been asked for again (after the retry backoff).
            await sim.wait_until(
                lambda: sum('"XBT/USD"' in str(m) for m in session.received) >= 2, timeout=20
            )
            await quiesce(sim)
            expected = sim.data_frames()
            messages = await stream_until(
                nats_server.url, lambda ms: len(data(ms)) >= len(expected)
            )
    assert [payload for _, payload in data(messages)] == expected
    errors = records(messages, "subscribe_error")
    assert errors and all(e["markets"] == ["XBT/USD"] for e in errors)
    (resubscribe,) = records(messages, "resubscribe")
    assert resubscribe["markets"] == ["ETH/USD"]
    eth = [json.loads(m) for m in session.received if '"ETH/USD"' in str(m)]
    # Subscribed, repaired (unsubscribe, subscribe), and unsubscribed at the stop.
    assert [r["method"] for r in eth] == ["subscribe", "unsubscribe", "subscribe", "unsubscribe"]
    assert len(sim.sessions) == 1


async def test_kraken_subscribe_refused_once_then_captured_is_recorded(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exchange refuses ETH/USD's book once: a subscribe_error record, then on the
    retry an `ssmd.subscription` record adding ETH/USD, before any ETH/USD book data, so
    the archive says when that symbol's capture began."""
    monkeypatch.setattr(connection, "SUBSCRIBE_RETRY", Backoff(0.2, 0.5))
    sim = KrakenExchange(rate=200, seed=8)
    sim.refuse_subscribe("book", "ETH/USD")
    async with serving(sim):
        markets = ["BTC/USD", "ETH/USD"]
        connector = {"feed": "kraken", "url": sim.url, "channels": ["book"], "markets": markets}
        async with running_connector(config_for(nats_server.url, connector)):
            session = await sim.session(0)
            eth_book = b'"channel":"book","type":"snapshot","data":[{"symbol":"ETH/USD"'
            await sim.wait_until(lambda: any(eth_book in f.data for f in sim.sent), timeout=20)
            await sim.wait_until(lambda: len(sim.data_frames()) > 50)
            await quiesce(sim)
            expected = sim.data_frames()
            messages = await stream_until(
                nats_server.url, lambda ms: len(data(ms)) >= len(expected)
            )
    assert [payload for _, payload in data(messages)] == expected
    eth = [json.loads(m) for m in session.received if '"ETH/USD"' in str(m)]
    assert [r["method"] for r in eth][:2] == ["subscribe", "subscribe"]
    (error,) = records(messages, "subscribe_error")
    assert error["markets"] == ["ETH/USD"] and error["channel"] == "book"
    (added,) = records(messages, "subscription")
    assert added["added"] == ["ETH/USD"] and added["removed"] == []
    assert added["channel"] == "book" and added["reason"] == "retry"
    assert added["ts_ns"] > error["ts_ns"]
    subjects = [m.subject for m in messages]
    error_at = subjects.index("test.kraken.json.ssmd.subscribe_error")
    added_at = subjects.index("test.kraken.json.ssmd.subscription")
    eth_at = [i for i, s in enumerate(subjects) if s == "test.kraken.json.book.ETH/USD"]
    assert error_at < added_at < eth_at[0]
    assert messages[eth_at[0]].data.startswith(b'{"channel":"book","type":"snapshot"')


@pytest.mark.parametrize("client", ["ssmd", "trio-websocket"])
async def test_kraken_drop_reconnects_and_resubscribes_everything(
    nats_server: NatsServer, client: str
) -> None:
    sim = KrakenExchange(rate=200, seed=6)
    async with serving(sim), running_connector(kraken_config(nats_server.url, sim, client)):
        first = await sim.session(0)
        await sim.wait_until(lambda: len(sim.data_frames(first.index)) > 50)
        await first.send_garbage(4)  # text and binary frames that are not JSON: kept
        await first.drop()
        second = await sim.session(1)
        await sim.wait_until(lambda: len(sim.data_frames(second.index)) > 50)
        await quiesce(sim)
        expected = [f.data for f in sim.sent if f.kind in (FrameKind.DATA, FrameKind.GARBAGE)]
        messages = await stream_until(nats_server.url, lambda ms: len(data(ms)) >= len(expected))
    requests = [json.loads(m) for m in second.received if '"subscribe"' in str(m)]
    assert sorted((r["params"]["channel"], tuple(r["params"]["symbol"])) for r in requests) == [
        ("book", ("BTC/USD", "ETH/USD")),
        ("ticker", ("BTC/USD", "ETH/USD")),
        ("trade", ("BTC/USD", "ETH/USD")),
    ]
    assert [payload for _, payload in data(messages)] == expected
    garbage = [f.data for f in sim.sent if f.kind is FrameKind.GARBAGE]
    assert [p for s, p in data(messages) if s == "test.kraken.json.unrouted.invalid"] == garbage
    assert len(records(messages, "connect")) == 2 and len(records(messages, "disconnect")) == 1
    # Books after the reconnect start from fresh snapshots: no checksum gap.
    assert not [g for g in records(messages, "gap") if g["reason"] == "checksum"]


async def test_polymarket_asset_without_a_book_is_recorded_and_retried(
    nats_server: NatsServer,
) -> None:
    sim = PolymarketExchange(markets=2, rate=50, seed=4)
    withheld = sim.markets[1].tokens[0]
    sim.withhold_books.add(withheld)
    async with serving(sim):
        config = config_for(
            nats_server.url,
            {
                "feed": "polymarket",
                "url": sim.url,
                "rest_url": sim.gamma.url,
                "channels": ["market"],
                "markets": [m.condition_id for m in sim.markets],
            },
        )
        async with running_connector(config):
            session = await sim.session(0)
            # 3 keepalives of 250 ms: the subscribe_error record.
            await stream_until(nats_server.url, lambda ms: bool(records(ms, "subscribe_error")))
            retry = json.dumps(
                {"assets_ids": [withheld], "operation": "subscribe", "custom_feature_enabled": True}
            )
            # The engine's first subscribe retry comes 5 s later; from then on the
            # exchange sends the asset's books.
            await sim.wait_until(lambda: retry in session.received, timeout=30)
            sim.withhold_books.discard(withheld)
            messages = await stream_until(
                nats_server.url, lambda ms: any(book_of(withheld, m) for m in ms), timeout=30
            )
    (record,) = records(messages, "subscribe_error")
    assert record["markets"] == [withheld] and record["channel"] == "market"
    assert "no book" in record["error"]
    # In the stream: the refusal, then the retry's resubscribe record, then its fresh book.
    kinds = [
        m.subject.rsplit(".", 1)[1] if ".json.ssmd." in m.subject else "book"
        for m in messages
        if ".json.ssmd." in m.subject or book_of(withheld, m)
    ]
    assert kinds[:4] == ["connect", "subscribe_error", "resubscribe", "book"], kinds
    assert set(kinds[3:]) == {"book"}
    (resubscribe,) = records(messages, "resubscribe")
    assert resubscribe["reason"] == "retry" and resubscribe["markets"] == [withheld]


def book_of(asset: str, message: FetchedMessage) -> bool:
    if not message.subject.startswith("test.polymarket.json.book."):
        return False
    return bool(json.loads(message.data).get("asset_id") == asset)


async def test_polymarket_silent_connection_is_found_by_its_missing_pongs(
    nats_server: NatsServer,
) -> None:
    """A black-holed socket: no data and no PONG, so liveness (3 s) ends it; the
    connector reconnects and subscribes the same assets again."""
    sim = PolymarketExchange(markets=2, rate=0, seed=9)
    async with serving(sim):
        config = config_for(
            nats_server.url,
            {
                "feed": "polymarket",
                "url": sim.url,
                "rest_url": sim.gamma.url,
                "channels": ["market"],
                "markets": [m.condition_id for m in sim.markets],
            },
        )
        async with running_connector(config):
            first = await sim.session(0)
            await sim.wait_until(lambda: sum(f.data == b"PONG" for f in sim.sent) >= 2)
            first.go_silent()
            second = await sim.session(1, timeout=20)
            await sim.wait_until(lambda: bool(second.received))
            messages = await stream_until(
                nats_server.url, lambda ms: len(records(ms, "connect")) == 2
            )
    assert json.loads(second.received[0]) == json.loads(first.received[0])
    (disconnect,) = records(messages, "disconnect")
    assert "no frame for 3s" in disconnect["reason"]
    assert b"PONG" not in {payload for _, payload in data(messages)}
