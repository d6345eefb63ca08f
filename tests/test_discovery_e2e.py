"""Market discovery end to end: one simulated Kalshi (WebSocket and REST over the same
market catalogue, signatures checked) -> connector with `[connector.discovery]` -> a
real nats-server. Real clock; every wait is on a condition, with generous limits.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
from prometheus_client import generate_latest

from ssmd.archiver.lines import format_line, read_prefix, strip_meta
from ssmd.backoff import Backoff
from ssmd.config import Config
from ssmd.connector import connection
from ssmd.nats.server import NatsServer
from ssmd.nats.types import FetchedMessage
from ssmd.simulators.kalshi import KalshiExchange, KalshiMarkets, KalshiRest, MarketExchange
from ssmd.simulators.kalshi.rest import SimTrade
from ssmd.supervisor import Supervisor
from tests.keys import API_KEY, private_key
from tests.test_connector_e2e import make_config, records, running_connector, stream_messages

WAIT = 60.0  # generous: the machine is shared


@attrs.define
class Kalshi:
    catalogue: KalshiMarkets
    ws: KalshiExchange
    rest: KalshiRest
    rest_url: str

    def sessions(self) -> list[Any]:
        return [s for s in self.ws.sessions if not s.closed.is_set()]

    def subscribed(self, channel: str) -> collections.Counter[str]:
        """Markets on active subscriptions of `channel`, over every open connection."""
        counts: collections.Counter[str] = collections.Counter()
        for session in self.sessions():
            for sub in session.subscriptions.values():
                if sub.active and sub.channel == channel:
                    counts.update(sub.markets)
        return counts

    def subs(self, channel: str) -> list[Any]:
        return [
            sub
            for session in self.sessions()
            for sub in session.subscriptions.values()
            if sub.active and sub.channel == channel
        ]

    async def wait(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(0.05)


def tickers(series: str, count: int, start: int = 0) -> list[str]:
    return [f"{series}-26DEC01-T{i}" for i in range(start, start + count)]


@asynccontextmanager
async def simulated_kalshi(
    markets: list[str], *, streaming: bool = False, **exchange: Any
) -> AsyncIterator[Kalshi]:
    catalogue = KalshiMarkets()
    catalogue.open(markets)
    public = private_key().public_key()
    ws: KalshiExchange
    if streaming:
        ws = MarketExchange(
            public,
            API_KEY,
            catalogue=catalogue,
            disconnect_every=None,
            gap_after=None,
            **exchange,
        )
    else:
        ws = KalshiExchange(public, API_KEY, catalogue=catalogue)
    rest = KalshiRest(catalogue, public_key=public, api_key=API_KEY)
    async with trio.open_nursery() as nursery:
        await nursery.start(ws.run)
        port = await nursery.start(rest.serve)
        yield Kalshi(catalogue, ws, rest, f"http://127.0.0.1:{port}/trade-api/v2")
        nursery.cancel_scope.cancel()


def discovery_config(
    nats_url: str, kalshi: Kalshi, discovery: dict[str, Any] | None = None, **connector: Any
) -> Config:
    settings: dict[str, Any] = {
        "channels": ["ticker", "trade", "orderbook_delta"],
        "markets": [],
        "rest_url": kalshi.rest_url,
        "liveness_timeout": "10s",
        "command_timeout": "10s",
        "discovery": {"refresh": "5m", "rest_rate": 15.0, "change_rate": 50.0, **(discovery or {})},
    }
    settings.update(connector)
    return make_config(nats_url, kalshi.ws.url, **settings)


def subscription_records(messages: list[Any]) -> list[dict[str, Any]]:
    return records(messages, "subscription")


async def test_5000_open_markets_all_get_one_order_book_subscription(
    nats_server: NatsServer,
) -> None:
    markets = tickers("KXBTCD", 3000) + tickers("KXINX", 2000)
    async with simulated_kalshi(markets) as kalshi:
        config = discovery_config(nats_server.url, kalshi)
        async with running_connector(config) as sup:
            # Stated bound: every book subscribed within 60 s (about 3 s alone).
            await kalshi.wait(lambda: len(kalshi.subscribed("orderbook_delta")) == 5000)
            books = kalshi.subscribed("orderbook_delta")
            assert set(books) == set(markets)
            assert max(books.values()) == 1  # no market twice
            assert all(len(sub.markets) <= 200 for sub in kalshi.subs("orderbook_delta"))
            # 2,000 a connection by default: three connections; ticker and trade stay
            # all-markets, one sid each, as does the lifecycle channel.
            assert len(kalshi.sessions()) == 3
            for channel in ("ticker", "trade", "market_lifecycle_v2"):
                (sub,) = kalshi.subs(channel)
                assert sub.markets == []
            exposed = generate_latest(sup.metrics).decode()
            for line in (
                'ssmd_subscribed_markets{channel="orderbook_delta",feed="kalshi"} 5000.0',
                'ssmd_discovery_markets{feed="kalshi",state="selected"} 5000.0',
                'ssmd_rest_requests_total{feed="kalshi",status="200"}',
                'ssmd_subscription_commands_total{feed="kalshi",outcome="ok"}',
            ):
                assert line in exposed, line
        messages = await stream_messages(nats_server.url, 5000)
    added = collections.Counter(
        m for r in subscription_records(messages) for m in r["added"] if r["reason"] == "discovery"
    )
    assert set(added) == set(markets) and max(added.values()) == 1
    catalogue = [m for m in messages if m.subject.startswith("test.kalshi.json.market.")]
    assert len(catalogue) == 5000
    events = [m for m in messages if m.subject.startswith("test.kalshi.json.event.")]
    assert {m.subject for m in events} == {
        "test.kalshi.json.event.KXBTCD-26DEC01",
        "test.kalshi.json.event.KXINX-26DEC01",
    }


async def test_small_connections_and_subscriptions_spread_the_markets(
    nats_server: NatsServer,
) -> None:
    markets = tickers("KXA", 50)
    async with simulated_kalshi(markets) as kalshi:
        config = discovery_config(
            nats_server.url,
            kalshi,
            discovery={"series": ["KXA"]},
            markets_per_connection=20,
            markets_per_subscription=8,
        )
        async with running_connector(config):
            # With series named, every market-scoped channel follows them.
            await kalshi.wait(
                lambda: all(
                    len(kalshi.subscribed(c)) == 50 for c in ("ticker", "trade", "orderbook_delta")
                )
            )
            assert len(kalshi.sessions()) == 3
            for channel in ("ticker", "trade", "orderbook_delta"):
                assert max(kalshi.subscribed(channel).values()) == 1
                assert all(0 < len(sub.markets) <= 8 for sub in kalshi.subs(channel))
            (lifecycle,) = kalshi.subs("market_lifecycle_v2")
            assert lifecycle.markets == []


async def test_created_and_settled_markets_follow_without_false_gaps(
    nats_server: NatsServer,
) -> None:
    first = tickers("KXBTCD", 300)
    created = tickers("KXBTCD", 100, start=1000)
    async with simulated_kalshi(first, streaming=True, rate=400.0) as kalshi:
        config = discovery_config(nats_server.url, kalshi, channels=["orderbook_delta"])
        async with running_connector(config):
            await kalshi.wait(lambda: len(kalshi.subscribed("orderbook_delta")) == 300)
            await kalshi.ws.open_markets(created)
            settled = first[:100]
            await kalshi.ws.settle_markets(settled)
            wanted = set(first[100:]) | set(created)
            await kalshi.wait(lambda: set(kalshi.subscribed("orderbook_delta")) == wanted)
            # Let data flow over the changed subscriptions.
            await trio.sleep(1.0)
            commands = [c for s in kalshi.ws.sessions for c in s.commands]
        messages = await stream_messages(nats_server.url, 1000)
    assert records(messages, "gap") == []  # adds and deletes re-based every sid's seq
    subs = subscription_records(messages)
    added = {m for r in subs if r["reason"] == "lifecycle:created" for m in r["added"]}
    removed = {m for r in subs if r["reason"] == "lifecycle:determined" for m in r["removed"]}
    assert added == set(created)
    assert removed == set(settled)
    deletes = [
        c
        for c in commands
        if c["cmd"] == "update_subscription" and c["params"]["action"] == "delete_markets"
    ]
    assert {m for c in deletes for m in c["params"]["market_tickers"]} == set(settled)
    assert all(len(c["params"]["sids"]) == 1 for c in commands if c["cmd"] == "update_subscription")
    # No sid that still carried markets was unsubscribed.
    assert [c for c in commands if c["cmd"] == "unsubscribe"] == []
    snapshots = {
        json.loads(m.data)["msg"]["market_ticker"]
        for m in messages
        if b'"orderbook_snapshot"' in m.data
    }
    assert set(created) <= snapshots


async def test_a_market_closed_without_an_event_is_dropped_by_reconciliation(
    nats_server: NatsServer,
) -> None:
    markets = tickers("KXA", 30)
    async with simulated_kalshi(markets) as kalshi:
        config = discovery_config(nats_server.url, kalshi, discovery={"refresh": "300ms"})
        async with running_connector(config):
            await kalshi.wait(lambda: len(kalshi.subscribed("orderbook_delta")) == 30)
            await kalshi.ws.settle_markets(markets[:5], announce=False)
            kalshi.catalogue.open(tickers("KXA", 5, start=100))  # opened silently too
            wanted = set(markets[5:]) | set(tickers("KXA", 5, start=100))
            await kalshi.wait(lambda: set(kalshi.subscribed("orderbook_delta")) == wanted)
        messages = await stream_messages(nats_server.url, 30)
    subs = subscription_records(messages)
    assert {m for r in subs if r["reason"] == "reconcile" for m in r["removed"]} == set(markets[:5])
    assert {m for r in subs if r["reason"] == "reconcile" for m in r["added"]} == set(
        tickers("KXA", 5, start=100)
    )


async def test_rest_outage_pauses_discovery_and_recording_goes_on(
    nats_server: NatsServer,
) -> None:
    markets = tickers("KXA", 40)
    async with simulated_kalshi(markets) as kalshi:
        kalshi.rest.fail_next(3, 500)
        config = discovery_config(nats_server.url, kalshi)
        async with running_connector(config) as sup:
            # The all-markets channels record while REST fails.
            await kalshi.wait(lambda: len(kalshi.subs("trade")) == 1)
            await kalshi.wait(lambda: len(kalshi.subscribed("orderbook_delta")) == 40)
            assert kalshi.rest.status_counts[500] == 3
            # Later trouble: 429s with Retry-After, then the set converges again.
            kalshi.rest.fail_next(2, 429, retry_after="1")
            await kalshi.ws.settle_markets(markets[:10], announce=False)
            kalshi.catalogue.open(tickers("KXA", 10, start=100))
            # Ready once the first walk (markets, then events) completed.
            await kalshi.wait(lambda: sup.not_ready() == [])
        wanted = set(markets[10:]) | set(tickers("KXA", 10, start=100))
        config = discovery_config(nats_server.url, kalshi, discovery={"refresh": "300ms"})
        async with running_connector(config):
            await kalshi.wait(lambda: set(kalshi.subscribed("orderbook_delta")) == wanted)
        assert kalshi.rest.status_counts[429] >= 2


async def test_error_25_records_a_gap_and_resubscribes_exactly_its_markets(
    nats_server: NatsServer,
) -> None:
    markets = tickers("KXA", 30)
    async with simulated_kalshi(markets, streaming=True, rate=100.0) as kalshi:
        config = discovery_config(
            nats_server.url, kalshi, channels=["orderbook_delta"], markets_per_subscription=10
        )
        async with running_connector(config):
            await kalshi.wait(lambda: len(kalshi.subscribed("orderbook_delta")) == 30)
            (session,) = kalshi.sessions()
            victim = kalshi.subs("orderbook_delta")[1]
            lost = list(victim.markets)
            await session.drop_subscription(victim.sid)
            await kalshi.wait(lambda: len(kalshi.subscribed("orderbook_delta")) == 30)
            resubscribe = session.commands[-1]
        messages = await stream_messages(nats_server.url, 60)
    (gap,) = records(messages, "gap")
    assert gap["reason"] == "error:25"
    assert gap["sid"] == victim.sid and sorted(gap["markets"]) == sorted(lost)
    (resub,) = records(messages, "resubscribe")
    assert resub["old_sid"] == victim.sid and sorted(resub["markets"]) == sorted(lost)
    assert resubscribe["cmd"] == "subscribe"
    assert sorted(resubscribe["params"]["market_tickers"]) == sorted(lost)
    # Fresh snapshots of exactly those markets follow the gap. (A market added just before
    # the drop may get its first snapshot after it: that one is not a fresh one.)
    gap_at = next(i for i, m in enumerate(messages) if m.subject.endswith(".ssmd.gap"))

    def snapshotted(part: list[FetchedMessage]) -> set[str]:
        return {
            json.loads(m.data)["msg"]["market_ticker"]
            for m in part
            if b'"orderbook_snapshot"' in m.data
        }

    before, after = snapshotted(messages[:gap_at]), snapshotted(messages[gap_at:])
    assert set(lost) <= before, "every lost market had its first snapshot before the gap"
    assert after & before == set(lost)


async def test_market_limit_26_splits_and_27_backs_off(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refused changes wait 0.2 s for their retry, not 5 s: that they wait and are then
    # sent is what counts here.
    monkeypatch.setattr(connection, "SUBSCRIBE_RETRY", Backoff(0.2, 0.5))
    markets = tickers("KXA", 60)
    async with simulated_kalshi(markets[:20]) as kalshi:
        kalshi.ws.market_limit = 15
        config = discovery_config(nats_server.url, kalshi, markets_per_subscription=40)
        async with running_connector(config):
            await kalshi.wait(lambda: len(kalshi.subscribed("orderbook_delta")) == 20)
            kalshi.ws.throttle_updates = 2
            await kalshi.ws.open_markets(markets[20:])
            await kalshi.wait(lambda: len(kalshi.subscribed("orderbook_delta")) == 60)
            books = kalshi.subscribed("orderbook_delta")
            assert max(books.values()) == 1
            assert all(len(sub.markets) <= 15 for sub in kalshi.subs("orderbook_delta"))
        messages = await stream_messages(nats_server.url, 60)
    errors = [r for r in records(messages, "subscribe_error")]
    assert any('"code":26' in r["error"] for r in errors)
    assert any('"code":27' in r["error"] for r in errors)


async def test_restart_recovers_the_same_set_and_catalogue_once_per_run(
    nats_server: NatsServer,
) -> None:
    markets = tickers("KXA", 40)
    async with simulated_kalshi(markets) as kalshi:
        config = discovery_config(nats_server.url, kalshi, discovery={"refresh": "300ms"})
        async with running_connector(config):
            await kalshi.wait(lambda: len(kalshi.subscribed("orderbook_delta")) == 40)
            first = set(kalshi.subscribed("orderbook_delta"))
            walks = len(kalshi.rest.requests)
            await kalshi.wait(lambda: len(kalshi.rest.requests) >= walks + 4)  # walked again
            kalshi.catalogue.amend(markets[0])
            await kalshi.wait(lambda: len(kalshi.rest.requests) >= walks + 8)
        async with running_connector(config):
            await kalshi.wait(lambda: len(kalshi.subscribed("orderbook_delta")) == 40)
            assert set(kalshi.subscribed("orderbook_delta")) == first
        messages = await stream_messages(nats_server.url, 81)
    per_market = collections.Counter(
        m.subject for m in messages if m.subject.startswith("test.kalshi.json.market.")
    )
    # Once per run (two runs), and once more for the amended market.
    assert per_market["test.kalshi.json.market." + markets[0]] == 3
    assert {n for s, n in per_market.items() if not s.endswith(markets[0])} == {2}
    _ = Supervisor


def live_trade(trade_id: str, ticker: str) -> dict[str, Any]:
    return {
        "trade_id": trade_id,
        "market_ticker": ticker,
        "yes_price_dollars": "0.4500",
        "no_price_dollars": "0.5500",
        "count_fp": "1.00",
        "taker_side": "yes",
        "ts": int(time.time()),
    }


async def test_trades_missed_while_disconnected_are_backfilled_once_and_marked(
    nats_server: NatsServer,
) -> None:
    """Trades done while the connection was down come from REST, marked; those that come
    live after the resubscribe (some stamped inside the window: the tail race) only live."""
    markets = ["KXA-26DEC01-T1", "KXA-26DEC01-T2"]
    async with simulated_kalshi(markets) as kalshi:
        config = discovery_config(nats_server.url, kalshi, channels=["trade"])
        async with running_connector(config) as sup:

            async def trade(session: Any, sid: int, trade_id: str, ticker: str) -> None:
                await session.send_data("trade", sid, live_trade(trade_id, ticker))
                kalshi.catalogue.trades.append(
                    SimTrade(trade_id, ticker, int(time.time() * 1000), 45, 1, "yes")
                )

            await kalshi.wait(lambda: len(kalshi.subs("trade")) == 1)
            (session,) = kalshi.sessions()
            sid = kalshi.subs("trade")[0].sid
            for n in range(3):
                await trade(session, sid, f"live-{n}", markets[n % 2])
            received = 'ssmd_received_messages_total{feed="kalshi",type="trade"} 3.0'
            await kalshi.wait(lambda: received in generate_latest(sup.metrics).decode())
            await session.drop()
            # Done on the exchange while the connection was down: REST knows them.
            for n in range(4):
                kalshi.catalogue.trades.append(
                    SimTrade(f"down-{n}", markets[n % 2], int(time.time() * 1000), 46, 2, "no")
                )
            old = session
            await kalshi.wait(
                lambda: kalshi.sessions() not in ([], [old]) and kalshi.subs("trade") != []
            )
            (session,) = kalshi.sessions()
            sid = kalshi.subs("trade")[0].sid
            backfilled = 'ssmd_discovery_backfilled_trades_total{feed="kalshi"} 4.0'
            after = 0
            with trio.fail_after(WAIT):
                while backfilled not in generate_latest(sup.metrics).decode():
                    await trade(session, sid, f"after-{after}", markets[0])
                    after += 1
                    await trio.sleep(0.5)
            text = generate_latest(sup.metrics).decode()
        messages = await stream_messages(nats_server.url, 8 + after)
    assert 'ssmd_discovery_backfills_total{feed="kalshi",outcome="repaired"} 1.0' in text
    assert 'ssmd_discovery_backfill_doubled_trades_total{feed="kalshi"} 0.0' in text
    trades = [m for m in messages if ".json.trade." in m.subject]

    def trade_id(data: bytes) -> str:
        body = json.loads(data)  # live: the WebSocket envelope; backfilled: the REST object
        return str(body["msg"]["trade_id"] if "msg" in body else body["trade_id"])

    ids = collections.Counter(trade_id(m.data) for m in trades)
    lived = {f"live-{n}" for n in range(3)} | {f"after-{n}" for n in range(after)}
    assert set(ids) == lived | {f"down-{n}" for n in range(4)}
    assert max(ids.values()) == 1  # none received live is doubled
    marked = {trade_id(m.data) for m in trades if m.backfilled}
    assert marked == {f"down-{n}" for n in range(4)}
    (backfill,) = records(messages, "backfill")
    assert backfill["published"] == 4 and backfill["outcome"] == "repaired"
    assert backfill["fetched"] >= 5  # the trades of the window received live too
    assert backfill["markets"] == []  # the all-markets trade subscription
    assert backfill["cause"] == "disconnect" and backfill["error"] is None
    down = [t.ts_ms // 1000 for t in kalshi.catalogue.trades if t.trade_id.startswith("down")]
    assert backfill["min_ts"] <= min(down) and backfill["max_ts"] >= max(down)


async def test_trades_lost_to_an_error_25_on_trade_are_backfilled(
    nats_server: NatsServer,
) -> None:
    markets = ["KXA-26DEC01-T1"]
    async with simulated_kalshi(markets) as kalshi:
        config = discovery_config(nats_server.url, kalshi, channels=["trade"])
        async with running_connector(config) as sup:
            await kalshi.wait(lambda: len(kalshi.subs("trade")) == 1)
            (session,) = kalshi.sessions()
            sid = kalshi.subs("trade")[0].sid
            await session.send_data("trade", sid, live_trade("live-0", markets[0]))
            kalshi.catalogue.trades.append(
                SimTrade("live-0", markets[0], int(time.time() * 1000), 45, 1, "yes")
            )
            received = 'ssmd_received_messages_total{feed="kalshi",type="trade"} 1.0'
            await kalshi.wait(lambda: received in generate_latest(sup.metrics).decode())
            await session.drop_subscription(sid)
            for n in range(2):  # done while the exchange had dropped the subscription
                kalshi.catalogue.trades.append(
                    SimTrade(f"lost-{n}", markets[0], int(time.time() * 1000), 46, 2, "no")
                )
            await kalshi.wait(lambda: kalshi.subs("trade") != [])
            new_sid = kalshi.subs("trade")[0].sid
            backfilled = 'ssmd_discovery_backfilled_trades_total{feed="kalshi"} 2.0'
            with trio.fail_after(WAIT):
                while backfilled not in generate_latest(sup.metrics).decode():
                    await session.send_data("ticker", new_sid, {"market_ticker": markets[0]})
                    await trio.sleep(0.5)
        messages = await stream_messages(nats_server.url, 4)
    (gap,) = records(messages, "gap")
    assert (gap["channel"], gap["reason"]) == ("trade", "error:25")
    (backfill,) = records(messages, "backfill")
    assert (backfill["cause"], backfill["outcome"], backfill["published"]) == (
        "error:25",
        "repaired",
        2,
    )
    marked = [json.loads(m.data)["trade_id"] for m in messages if m.backfilled]
    assert sorted(marked) == ["lost-0", "lost-1"]


def test_a_backfilled_message_is_marked_in_its_archive_line() -> None:
    line = format_line(7, "prod.kalshi.json.trade.X", b'{"trade_id":"t"}', 5, backfilled=True)
    parsed = json.loads(line)
    assert parsed["_backfilled"] is True and strip_meta(parsed) == {"trade_id": "t"}
    assert read_prefix(line) == (7, "prod.kalshi.json.trade.X", 5)
    assert b"_backfilled" not in format_line(7, "s", b'{"trade_id":"t"}', 5)


async def test_a_refused_walk_keeps_recording_says_why_and_is_tried_again(
    nats_server: NatsServer,
) -> None:
    markets = tickers("KXA", 10)
    async with simulated_kalshi(markets) as kalshi:
        kalshi.rest.fail_next(1, 401)
        config = discovery_config(
            nats_server.url, kalshi, discovery={"refresh": "300ms"}, markets=["KXB-26DEC01-T1"]
        )
        kalshi.catalogue.open(["KXB-26DEC01-T1"])
        async with running_connector(config) as sup:
            # The static market and the all-markets channels are recorded at once.
            await kalshi.wait(lambda: "KXB-26DEC01-T1" in kalshi.subscribed("orderbook_delta"))
            await kalshi.wait(lambda: any("REST refused" in r for r in sup.not_ready()))
            assert len(kalshi.subs("trade")) == 1
            await kalshi.wait(lambda: len(kalshi.subscribed("orderbook_delta")) == 11)
            await kalshi.wait(lambda: sup.not_ready() == [])
        messages = await stream_messages(nats_server.url, 11)
    (static,) = [r for r in subscription_records(messages) if r["reason"] == "static"]
    assert static["added"] == ["KXB-26DEC01-T1"]


async def test_an_error_25_naming_no_sid_gaps_and_resubscribes_every_subscription_once(
    nats_server: NatsServer,
) -> None:
    markets = tickers("KXA", 30)
    async with simulated_kalshi(markets, streaming=True, rate=100.0) as kalshi:
        config = discovery_config(
            nats_server.url, kalshi, channels=["orderbook_delta"], markets_per_subscription=10
        )
        async with running_connector(config):
            await kalshi.wait(lambda: len(kalshi.subscribed("orderbook_delta")) == 30)
            (session,) = kalshi.sessions()
            before = {sub.sid: sorted(sub.markets) for sub in kalshi.subs("orderbook_delta")}
            await session.drop_subscription(next(iter(before)), named=False)
            await kalshi.wait(
                lambda: (
                    not set(before) & {s.sid for s in kalshi.subs("orderbook_delta")}
                    and len(kalshi.subscribed("orderbook_delta")) == 30
                )
            )
            counts = kalshi.subscribed("orderbook_delta")
        messages = await stream_messages(nats_server.url, 60)
    assert set(counts.values()) == {1}  # every market once: none doubled, none lost
    gaps = records(messages, "gap")
    # Every subscription on the connection (the lifecycle one too) gets its gap.
    book = {g["sid"]: sorted(g["markets"]) for g in gaps if g["channel"] == "orderbook_delta"}
    assert book == before
    assert {g["reason"] for g in gaps} == {"error:25"}
    assert {g["channel"] for g in gaps} > {"orderbook_delta"}
