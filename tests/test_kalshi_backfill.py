"""The trade-tape repair without sockets: which window each loss on `trade` asks for
(the session), and what a window becomes (TradeBackfill against httpx's in-memory
transport on a fake clock): the settle rule against the tail race, the ledger's
horizon, and the record left when REST will not repair it."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from typing import Any

import httpx
import trio
import trio.testing
from prometheus_client.metrics_core import Metric

from ssmd.backoff import Backoff
from ssmd.clock import WallClock
from ssmd.config import ConnectorConfig
from ssmd.connector.backfill import TradeBackfill
from ssmd.connector.layout import Subscribe
from ssmd.connector.publisher import Inbound
from ssmd.connector.rest import RestClient, RestSettings
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds.base import Change, ConnectionStats, SessionContext, Subjects
from ssmd.feeds.kalshi.session import KalshiSession
from ssmd.feeds.kalshi_discovery import BackfillWindow, TradeLedger

S = 1_000_000_000
T0 = 1_800_000_000 * S  # a round wall time, whole seconds


class Harness:
    def __init__(self, plans: list[SubscriptionPlan]) -> None:
        self.windows: list[BackfillWindow] = []
        self.ledger = TradeLedger()
        context = SessionContext(
            0,
            Subjects("prod", "kalshi"),
            ConnectionStats(),
            ConnectorConfig(),
            trades=self.ledger,
            backfill=lambda conn, window: self.windows.append(window),
        )
        self.session = KalshiSession(context, plans)

    def frame(self, body: dict[str, Any], at: int) -> list[Inbound]:
        out: list[Inbound] = []
        self.session.on_frame(json.dumps(body).encode(), at, out)
        return out

    def subscribed(self, reply: Hashable, sid: int, at: int) -> None:
        self.frame({"id": reply, "type": "subscribed", "msg": {"sid": sid}}, at)

    def trade(self, sid: int, seq: int, trade_id: str, at: int) -> None:
        msg = {"market_ticker": "A", "trade_id": trade_id}
        self.frame({"type": "trade", "sid": sid, "seq": seq, "msg": msg}, at)


TRADE = SubscriptionPlan("trade", ())


def connected(at: int) -> tuple[Harness, int]:
    """A session whose all-markets trade subscription is sid 1, subscribed at `at`."""
    h = Harness([TRADE])
    (subscribe,) = h.session.start()
    h.subscribed(subscribe.reply, 1, at)
    return h, 1


def test_a_reconnect_asks_once_for_the_window_since_the_last_trade() -> None:
    h, sid = connected(T0)
    h.trade(sid, 1, "t1", T0 + 10 * S)
    h.trade(sid, 2, "t2", T0 + 20 * S + S // 2)
    (again,) = h.session.start()  # reconnected
    assert h.windows == []
    h.subscribed(again.reply, 2, T0 + 30 * S)
    # From the last trade received to the resubscribe, each widened by the 2 s margin.
    assert h.windows == [BackfillWindow(1_800_000_018, 1_800_000_032, (), "disconnect")]
    # A later subscribe of trade with no loss behind it asks for nothing (a live change
    # refused once, then retried).
    change = Change(Subscribe(0, "trade", 0, ("B",)), "discovery")
    command = h.session.apply(change)
    assert command is not None
    h.frame({"id": command.reply, "type": "error", "msg": {"code": 17, "msg": "x"}}, T0 + 40 * S)
    (retry,) = h.session.take_retries()
    h.subscribed(retry.reply, 3, T0 + 41 * S)
    assert len(h.windows) == 1


def test_a_second_loss_starts_at_its_own_connections_last_trade() -> None:
    h, sid = connected(T0)
    h.trade(sid, 1, "t1", T0 + 10 * S)
    (again,) = h.session.start()
    h.subscribed(again.reply, 2, T0 + 100 * S)
    h.trade(2, 1, "t2", T0 + 500 * S)
    (third,) = h.session.start()
    h.subscribed(third.reply, 3, T0 + 600 * S)
    assert h.windows[1] == BackfillWindow(1_800_000_498, 1_800_000_602, (), "disconnect")
    # None received since the resubscribe: the window starts there, not at an older trade.
    (fourth,) = h.session.start()
    h.subscribed(fourth.reply, 4, T0 + 700 * S)
    assert h.windows[2].min_ts == 1_800_000_598


def test_an_error_25_on_trade_asks_for_the_window_from_its_last_trade() -> None:
    h, sid = connected(T0)
    h.trade(sid, 1, "t1", T0 + 10 * S)
    dropped = {"type": "error", "sid": sid, "msg": {"code": 25, "msg": "overflow"}}
    h.frame(dropped, T0 + 15 * S)
    (resubscribe,) = h.session.take_commands()
    assert h.windows == []
    h.subscribed(resubscribe.reply, 2, T0 + 16 * S)
    assert h.windows == [BackfillWindow(1_800_000_008, 1_800_000_018, (), "error:25")]


def test_an_unnamed_error_25_on_a_connection_carrying_trade_asks_for_it_too() -> None:
    h = Harness([TRADE, SubscriptionPlan("orderbook_delta", ("A",))])
    trade, book = h.session.start()
    h.subscribed(trade.reply, 1, T0)
    h.subscribed(book.reply, 2, T0)
    h.trade(1, 1, "t1", T0 + 10 * S)
    h.frame({"type": "error", "msg": {"code": 25, "msg": "overflow"}}, T0 + 12 * S)
    commands = h.session.take_commands() + h.session.take_commands()
    subscribes = [c for c in commands if json.loads(c.text)["cmd"] == "subscribe"]
    for command in subscribes:
        params = json.loads(command.text)["params"]
        h.subscribed(command.reply, 10 + len(params), T0 + 13 * S)
    assert h.windows == [BackfillWindow(1_800_000_008, 1_800_000_015, (), "error:25")]


def test_a_seq_gap_on_trade_starts_at_that_sids_last_trade() -> None:
    h = Harness([SubscriptionPlan("trade", ("A",)), SubscriptionPlan("trade", ("B",))])
    first, second = h.session.start()
    h.subscribed(first.reply, 1, T0)
    h.subscribed(second.reply, 2, T0)
    h.trade(1, 1, "a1", T0 + 10 * S)
    h.trade(2, 1, "b1", T0 + 50 * S)  # the other sid's trades say nothing of sid 1
    h.trade(1, 3, "a3", T0 + 60 * S)
    assert h.windows == [BackfillWindow(1_800_000_008, 1_800_000_062, ("A",), "gap")]


# TradeBackfill, on a fake clock.

SETTINGS = RestSettings(rate=100.0, burst=100.0, timeout=5.0, backoff=Backoff(1.0, 8.0))
Handler = Callable[[httpx.Request], httpx.Response]


def rest_trade(trade_id: str, ts_s: int) -> dict[str, Any]:
    return {"trade_id": trade_id, "ticker": "A", "count_fp": "1.00", "ts": ts_s}


def serving(trades: list[dict[str, Any]], queries: list[dict[str, str]]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        query = dict(request.url.params)
        queries.append(query)
        low, high = int(query["min_ts"]), int(query["max_ts"])
        rows = [t for t in trades if low <= t["ts"] <= high]
        return httpx.Response(200, json={"trades": rows, "cursor": ""})

    return handler


def backfill_for(handler: Handler, ledger: TradeLedger, **kw: Any) -> TradeBackfill:
    rest = RestClient(
        "https://venue.test/trade-api/v2", SETTINGS, transport=httpx.MockTransport(handler)
    )
    return TradeBackfill(
        rest=rest,
        subjects=Subjects("prod", "kalshi"),
        clock=WallClock(T0),
        trades=ledger,
        **kw,
    )


def parts(batch: list[Inbound]) -> tuple[dict[str, Any], list[str]]:
    record, *trades = batch
    assert record.subject == "prod.kalshi.json.ssmd.backfill" and not record.backfilled
    assert all(t.backfilled for t in trades)
    return json.loads(record.payload), [json.loads(t.payload)["trade_id"] for t in trades]


async def test_a_trade_of_the_windows_last_second_that_comes_live_is_not_doubled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The tail race: resubscribed at T0+10 s, the window ends at T0+12 s. A trade of
    T0+11 s arrives live at T0+11.5 s: fetched before that, it would be published twice."""
    ledger = TradeLedger()
    trades = [rest_trade("lost", 1_800_000_005), rest_trade("tail", 1_800_000_011)]
    queries: list[dict[str, str]] = []
    backfill = backfill_for(serving(trades, queries), ledger)
    window = BackfillWindow(1_800_000_003, 1_800_000_012, (), "disconnect")
    async with trio.open_nursery() as nursery:

        async def live_tape() -> None:
            await trio.sleep(11.5)
            ledger.heard(0, T0 + int(11.5 * S))
            assert not ledger.seen("tail", T0 + int(11.5 * S))
            for second in range(12, 20):
                await trio.sleep_until(second)
                ledger.heard(0, T0 + second * S)

        nursery.start_soon(live_tape)
        with trio.fail_after(60):
            batch = await backfill.backfill(0, window)
    record, published = parts(batch)
    assert published == ["lost"]
    assert (record["fetched"], record["published"], record["outcome"]) == (2, 1, "repaired")
    assert trio.current_time() >= 15.0  # fetched once the tape passed max_ts + margin
    assert ledger.doubled == 0
    assert ledger.seen("lost", T0 + 30 * S) and ledger.doubled == 1  # counted, should it come


async def test_the_window_never_reaches_past_the_ledgers_horizon(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ledger = TradeLedger(capacity=2)
    for n, second in enumerate((1, 2, 3)):  # "l0", received at T0+1 s, is forgotten
        ledger.seen(f"l{n}", T0 + second * S)
    assert ledger.horizon_ns == T0 + S + 1
    first = 1_800_000_004  # the horizon plus the margin, rounded up
    assert ledger.first_ts() == first
    trades = [rest_trade("l0", 1_800_000_001), rest_trade("new", 1_800_000_006)]
    queries: list[dict[str, str]] = []
    backfill = backfill_for(serving(trades, queries), ledger, settle_limit=0.0)
    batch = await backfill.backfill(0, BackfillWindow(1_799_999_990, 1_800_000_008))
    record, published = parts(batch)
    assert published == ["new"]
    assert [int(q["min_ts"]) for q in queries] == [first]
    assert record["outcome"] == "partial"
    assert (record["requested_min_ts"], record["min_ts"]) == (1_799_999_990, first)
    # A window wholly before the horizon is not fetched at all.
    batch = await backfill.backfill(0, BackfillWindow(1_799_999_990, 1_800_000_002))
    record, published = parts(batch)
    assert published == [] and len(queries) == 1
    assert record["outcome"] == "unrepaired" and "ledger" in record["error"]


async def test_refused_or_failing_rest_leaves_an_unrepaired_record_and_a_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def refusing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "bad key"})

    def failing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500)

    window = BackfillWindow(1_799_999_990, 1_800_000_000, ("A",), "gap")
    refused = backfill_for(refusing, TradeLedger(), settle_limit=0.0)
    record, published = parts(await refused.backfill(0, window))
    assert (record["outcome"], published, record["cause"]) == ("unrepaired", [], "gap")
    assert "HTTP 401" in record["error"]
    broken = backfill_for(failing, TradeLedger(), settle_limit=0.0, deadline=120.0)
    record, _ = parts(await broken.backfill(0, window))
    assert record["outcome"] == "unrepaired" and "no full answer in 120s" in record["error"]
    families = {f.name: f for f in broken.metrics({"feed": "kalshi"}) if isinstance(f, Metric)}
    (sample,) = families["ssmd_discovery_backfills"].samples
    assert (sample.labels["outcome"], sample.value) == ("unrepaired", 1)


async def test_answers_that_are_not_trades_are_waited_out_not_the_window_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A maintenance page served as 200 HTML is trouble that passes (review of issue 9's
    walk, M3): the window is asked again with backoff, and repaired once REST is back;
    one that never comes back is recorded unrepaired, saying why."""
    trades = [rest_trade("lost", 1_799_999_995)]
    queries: list[dict[str, str]] = []
    answer = serving(trades, queries)
    html = {"left": 12}

    def maintenance(request: httpx.Request) -> httpx.Response:
        if html["left"] > 0:
            html["left"] -= 1
            return httpx.Response(200, text="<html>down for maintenance</html>")
        return answer(request)

    window = BackfillWindow(1_799_999_990, 1_800_000_000, ("A",), "gap")
    backfill = backfill_for(maintenance, TradeLedger(), settle_limit=0.0)
    record, published = parts(await backfill.backfill(0, window))
    assert (record["outcome"], published) == ("repaired", ["lost"])
    html["left"] = 10**6
    record, published = parts(await backfill.backfill(0, window))
    assert record["outcome"] == "unrepaired" and published == []
    assert "no full answer in 300s" in record["error"] and "not JSON" in record["error"]


async def test_a_backfill_leaves_walks_the_most_of_the_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def endless(request: httpx.Request) -> httpx.Response:
        cursor = int(request.url.params.get("cursor", "0"))
        key = "trades" if request.url.path.endswith("/trades") else "markets"
        more = str(cursor + 1) if cursor < 39 else ""
        return httpx.Response(200, json={key: [], "cursor": more})

    backfill = backfill_for(endless, TradeLedger(), settle_limit=0.0)
    backfill.rest = RestClient(
        "https://venue.test/trade-api/v2",
        RestSettings(rate=10.0, burst=1.0),
        transport=httpx.MockTransport(endless),
    )
    window = BackfillWindow(1_799_999_990, 1_800_000_000, ("A",), "gap")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(backfill.backfill, 0, window)
        await trio.sleep(0.5)
        started = trio.current_time()
        async for _ in backfill.rest.walk("/markets", {}, "markets", limit=100):
            pass
        took = trio.current_time() - started
    # 40 pages at 10 a second, less one token in five for the backfill (FIFO: 8 s).
    assert took <= 5.0 + 0.2


async def test_windows_beyond_the_queue_are_recorded_as_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    queries: list[dict[str, str]] = []
    backfill = backfill_for(serving([], queries), TradeLedger(), settle_limit=0.0)
    for n in range(1_002):
        backfill.request(0, BackfillWindow(1_800_000_000 - n, 1_800_000_000, ("A",)))
    send, receive = trio.open_memory_channel[list[Inbound]](2_000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(backfill.run, send)
        batches = [await receive.receive() for _ in range(1_001)]
        nursery.cancel_scope.cancel()
    record, _ = parts(batches[1])
    assert record["outcome"] == "dropped" and record["min_ts"] == 1_800_000_000 - 1_001
    assert backfill.stats.outcomes == {"repaired": 1_000, "dropped": 1}


async def test_windows_left_when_the_connector_stops_are_recorded_unrepaired(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def failing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    backfill = backfill_for(failing, TradeLedger(), settle_limit=0.0)
    send, receive = trio.open_memory_channel[list[Inbound]](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(backfill.run, send)
        backfill.request(0, BackfillWindow(1_800_000_000, 1_800_000_010, ("A",), "gap"))
        backfill.request(1, BackfillWindow(1_800_000_020, 1_800_000_030, (), "disconnect"))
        await trio.sleep(60)  # the first is being fetched, REST failing
        nursery.cancel_scope.cancel()
    records = [parts(receive.receive_nowait())[0] for _ in range(2)]
    assert [(r["conn"], r["outcome"]) for r in records] == [(0, "unrepaired"), (1, "unrepaired")]
    assert all("stopped" in r["error"] for r in records)
