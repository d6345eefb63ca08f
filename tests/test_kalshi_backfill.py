"""The trade-tape repair without sockets: which window each loss on `trade` asks for
(the session), and what a window becomes (TradeBackfill against httpx's in-memory
transport on a fake clock): the settle rule against the tail race, the ledger's
horizon, and the record left when REST will not repair it."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from prometheus_client.metrics_core import Metric

from ssmd.backoff import Backoff
from ssmd.clock import WallClock
from ssmd.config import ConnectorConfig
from ssmd.connector.backfill import TradeBackfill
from ssmd.connector.layout import Subscribe, Unsubscribe
from ssmd.connector.publisher import Inbound, Publisher
from ssmd.connector.rest import RestClient, RestSettings
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds.base import Change, ConnectionStats, SessionContext, Subjects
from ssmd.feeds.kalshi.session import KalshiSession
from ssmd.feeds.kalshi_discovery import BackfillWindow, TradeLedger
from ssmd.nats.types import OutgoingMessage, PublishOutcome

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
    # Each is unsubscribed, then (once ended) subscribed again.
    while commands := h.session.take_commands():
        for command in commands:
            body = json.loads(command.text)
            if body["cmd"] == "unsubscribe":
                h.frame({"id": command.reply, "type": "unsubscribed"}, T0 + 13 * S)
            else:
                h.subscribed(command.reply, 10 + len(body["params"]), T0 + 13 * S)
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


async def windowed(backfill: TradeBackfill, window: BackfillWindow) -> list[Inbound]:
    """Everything one window publishes, in order."""
    send, receive = trio.open_memory_channel[list[Inbound]](10_000)
    await backfill.backfill(0, window, send)
    send.close()
    return [item async for batch in receive for item in batch]


def parts(batch: list[Inbound]) -> tuple[dict[str, Any], list[str]]:
    """The window's record (after its trades) and the trade ids published."""
    *trades, record = batch
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
            batch = await windowed(backfill, window)
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
    batch = await windowed(backfill, BackfillWindow(1_799_999_990, 1_800_000_008))
    record, published = parts(batch)
    assert published == ["new"]
    assert [int(q["min_ts"]) for q in queries] == [first]
    assert record["outcome"] == "partial"
    assert (record["requested_min_ts"], record["min_ts"]) == (1_799_999_990, first)
    # A window wholly before the horizon is not fetched at all.
    batch = await windowed(backfill, BackfillWindow(1_799_999_990, 1_800_000_002))
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
    record, published = parts(await windowed(refused, window))
    assert (record["outcome"], published, record["cause"]) == ("unrepaired", [], "gap")
    assert "HTTP 401" in record["error"]
    broken = backfill_for(failing, TradeLedger(), settle_limit=0.0, deadline=120.0)
    record, _ = parts(await windowed(broken, window))
    assert record["outcome"] == "unrepaired" and "no full answer in 120s" in record["error"]
    families = {f.name: f for f in broken.metrics({"feed": "kalshi"}) if isinstance(f, Metric)}
    (sample,) = families["ssmd_discovery_backfills"].samples
    assert (sample.labels["outcome"], sample.value) == ("unrepaired", 1)


async def test_answers_that_are_not_trades_are_waited_out_not_the_window_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A maintenance page served as 200 HTML is trouble that passes (review of issue 9's
    walk, M3): the query is asked again with backoff, and the window repaired once REST
    is back, nothing published twice; one that never comes back is recorded unrepaired,
    saying why."""
    trades = [rest_trade("first", 1_799_999_991), rest_trade("second", 1_799_999_995)]
    html = {"left": 0}

    def maintenance(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("cursor") and html["left"] > 0:
            html["left"] -= 1
            return httpx.Response(200, text="<html>down for maintenance</html>")
        cursor = request.url.params.get("cursor")
        page, more = (trades[1:], "") if cursor else (trades[:1], "p2")
        return httpx.Response(200, json={"trades": page, "cursor": more})

    window = BackfillWindow(1_799_999_990, 1_800_000_000, ("A",), "gap")
    html["left"] = 12  # the second page fails: the whole query is asked again
    backfill = backfill_for(maintenance, TradeLedger(), settle_limit=0.0)
    record, published = parts(await windowed(backfill, window))
    assert (record["outcome"], published) == ("repaired", ["first", "second"])
    assert (record["fetched"], record["published"]) == (2, 2)
    html["left"] = 10**6
    backfill = backfill_for(maintenance, TradeLedger(), settle_limit=0.0)
    record, published = parts(await windowed(backfill, window))
    assert record["outcome"] == "unrepaired" and published == ["first"]
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
        nursery.start_soon(windowed, backfill, window)
        await trio.sleep(0.5)
        started = trio.current_time()
        async for _ in backfill.rest.walk("/markets", {}, "markets", limit=100):
            pass
        took = trio.current_time() - started
    # 40 pages at 10 a second, less one token in five for the backfill (FIFO: 8 s).
    assert took <= 5.0 + 0.2


async def test_live_trades_without_an_id_are_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A field renamed upstream: the ledger could not deduplicate a backfill against them."""
    h, sid = connected(T0)
    h.frame({"type": "trade", "sid": sid, "seq": 1, "msg": {"market_ticker": "A"}}, T0)
    h.trade(sid, 2, "t2", T0)
    assert h.ledger.unnamed == 1
    backfill = backfill_for(serving([], []), h.ledger)
    families = {f.name: f for f in backfill.metrics({"feed": "kalshi"}) if isinstance(f, Metric)}
    (sample,) = families["ssmd_trade_ledger_unnamed_trades"].samples
    assert sample.value == 1


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


def test_a_lagging_reader_asks_from_the_last_trades_exchange_time() -> None:
    """The reader runs 30 s behind: the trade done at T0+10 s is received at T0+40 s, then
    the exchange drops the sid. The trades lost were done from T0+10 s on, not T0+40 s."""
    h, sid = connected(T0)
    msg = {"market_ticker": "A", "trade_id": "t1", "ts": 1_800_000_010, "ts_ms": 1_800_000_010_500}
    h.frame({"type": "trade", "sid": sid, "seq": 1, "msg": msg}, T0 + 40 * S)
    assert h.ledger.exchange_ns[0] == 1_800_000_010_500 * 1_000_000  # the tape's clock
    body = {"market_ticker": "A"}
    ticker = {"type": "ticker", "sid": 9, "sending_ts_ms": 1_800_000_011_000, "msg": body}
    h.frame(ticker, T0 + 40 * S)
    assert h.ledger.exchange_ns[0] == 1_800_000_011_000 * 1_000_000
    h.frame({"type": "error", "sid": sid, "msg": {"code": 25, "msg": "overflow"}}, T0 + 41 * S)
    (resubscribe,) = h.session.take_commands()
    h.subscribed(resubscribe.reply, 2, T0 + 42 * S)
    assert h.windows == [BackfillWindow(1_800_000_008, 1_800_000_044, (), "error:25")]
    # Seconds only (`ts`): the same; and a seq gap's window starts there too.
    msg = {"market_ticker": "A", "trade_id": "t2", "ts": 1_800_000_050}
    h.frame({"type": "trade", "sid": 2, "seq": 1, "msg": msg}, T0 + 80 * S)
    h.frame({"type": "trade", "sid": 2, "seq": 3, "msg": {**msg, "trade_id": "t3"}}, T0 + 81 * S)
    assert h.windows[1] == BackfillWindow(1_800_000_048, 1_800_000_083, (), "gap")


def timed(handler: Handler, times: list[float]) -> Handler:
    def timing(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        return handler(request)

    return timing


async def test_a_tape_running_behind_is_waited_for_by_its_exchange_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The reader runs 30 s behind the exchange: the window's last trade (done at T0+11 s)
    is received at T0+41 s. Fetched once our clock passed the window, it would be doubled."""
    ledger = TradeLedger()
    trades = [rest_trade("lost", 1_800_000_005), rest_trade("tail", 1_800_000_011)]
    times: list[float] = []
    backfill = backfill_for(timed(serving(trades, []), times), ledger)
    window = BackfillWindow(1_800_000_003, 1_800_000_012, (), "disconnect")
    async with trio.open_nursery() as nursery:

        async def live_tape() -> None:
            for second in range(12, 60):
                await trio.sleep_until(second)
                stamp = T0 + (second - 30) * S
                ledger.heard(0, T0 + second * S, stamp)  # frames keep coming, 30 s late
                if second == 41:
                    assert not ledger.seen("tail", T0 + second * S)

        nursery.start_soon(live_tape)
        with trio.fail_after(120):
            batch = await windowed(backfill, window)
        nursery.cancel_scope.cancel()
    _, published = parts(batch)
    assert published == ["lost"] and ledger.doubled == 0
    assert times and times[0] >= 45.0  # the tape's exchange clock passed T0+15 s


@pytest.mark.parametrize(("frame_at", "fetch_at"), [(18, 18.0), (None, 25.0)])
async def test_without_stamps_a_window_waits_for_a_frame_received_past_its_end(
    autojump_clock: trio.testing.MockClock, frame_at: int | None, fetch_at: float
) -> None:
    """Frames without an exchange time: the fetch waits for our clock to pass the window's
    end (T0+15 s) *and* a frame received since, or `settle_limit` more seconds."""
    ledger = TradeLedger()
    ledger.heard(0, T0 + 2 * S)
    times: list[float] = []
    backfill = backfill_for(timed(serving([], []), times), ledger, settle_limit=10.0)
    async with trio.open_nursery() as nursery:
        if frame_at is not None:

            async def frame() -> None:
                await trio.sleep_until(frame_at)
                ledger.heard(0, T0 + frame_at * S)

            nursery.start_soon(frame)
        await windowed(backfill, BackfillWindow(1_800_000_003, 1_800_000_012))
    assert times == [fetch_at]


async def test_what_the_ledger_forgets_while_rest_answers_is_cut_from_the_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Live trades keep coming while REST answers: the ledger forgets one received at
    T0+5 s, so a REST trade before T0+8 s could be doubled and is left out."""
    ledger = TradeLedger(capacity=2)
    trades = [rest_trade("old", 1_800_000_003), rest_trade("new", 1_800_000_009)]
    answer = serving(trades, [])

    def forgetting(request: httpx.Request) -> httpx.Response:
        for n, second in enumerate((5, 6, 7)):
            ledger.seen(f"live{n}", T0 + second * S)
        return answer(request)

    backfill = backfill_for(forgetting, ledger, settle_limit=0.0)
    record, published = parts(
        await windowed(backfill, BackfillWindow(1_799_999_990, 1_800_000_010))
    )
    assert published == ["new"]
    assert (record["outcome"], record["min_ts"]) == ("partial", 1_800_000_008)


async def test_rest_trades_without_an_id_are_counted_and_not_called_repaired(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A field renamed upstream: nothing could be deduplicated, so nothing is published,
    and the record says so instead of `repaired`."""
    trades = [{"id": "x", "ticker": "A", "ts": 1_800_000_005}, rest_trade("t", 1_800_000_006)]
    backfill = backfill_for(serving(trades, []), TradeLedger(), settle_limit=0.0)
    record, published = parts(
        await windowed(backfill, BackfillWindow(1_800_000_000, 1_800_000_010))
    )
    assert published == ["t"]
    assert (record["fetched"], record["published"], record["skipped"]) == (2, 1, 1)
    assert record["outcome"] == "unrepaired" and "trade_id" in record["error"]


class Stream:
    """JetStream that stores and acknowledges every message, a little later."""

    def __init__(self) -> None:
        self.stored: list[OutgoingMessage] = []

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], timeout: float
    ) -> list[PublishOutcome]:
        await trio.sleep(0.01)
        self.stored.extend(messages)
        return [PublishOutcome(stream_seq=len(self.stored))] * len(messages)


class Crowded(Publisher):
    """Says it has room it has not, before the first backfilled trade comes (live frames
    take it before the backfill's arrive)."""

    @property
    def room(self) -> tuple[int, int]:
        return (10**6, 10**9) if not self.stats.backfilled else super().room


async def publish_window(publisher: Publisher, trades: list[dict[str, Any]]) -> Stream:
    """A window of `trades` through TradeBackfill and `publisher` until its record is stored."""
    stream = publisher._publish_batch.__self__  # type: ignore[attr-defined]
    assert isinstance(stream, Stream)
    backfill = backfill_for(serving(trades, []), TradeLedger(), settle_limit=0.0)
    backfill.publisher = publisher
    send, receive = trio.open_memory_channel[list[Inbound]](64)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.run, receive)
        nursery.start_soon(backfill.run, send)
        backfill.request(0, BackfillWindow(1_800_000_000, 1_800_000_010, ("A",), "gap"))
        with trio.fail_after(600):
            while not any(m.subject.endswith(".backfill") for m in stream.stored):
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    return stream


def stored_window(stream: Stream) -> tuple[dict[str, Any], list[OutgoingMessage]]:
    (record,) = [m for m in stream.stored if m.subject.endswith(".backfill")]
    assert stream.stored[-1] is record  # after the trades it counts
    return json.loads(record.payload), [m for m in stream.stored if m.backfilled]


def small_publisher(cls: type[Publisher] = Publisher) -> Publisher:
    return cls(
        Stream().publish_batch,
        env="prod",
        feed="kalshi",
        clock=WallClock(T0),
        buffer_messages=50,
        buffer_bytes=10**6,
        batch_max=10,
        timeout=5.0,
    )


async def test_a_window_larger_than_the_publish_buffer_is_paced_not_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trades = [rest_trade(f"t{n}", 1_800_000_005) for n in range(300)]
    publisher = small_publisher()
    record, backfilled = stored_window(await publish_window(publisher, trades))
    assert publisher.stats.dropped == 0 and len(backfilled) == 300
    assert (record["outcome"], record["published"]) == ("repaired", 300)


async def test_a_window_the_publisher_dropped_part_of_is_not_called_repaired(
    autojump_clock: trio.testing.MockClock,
) -> None:
    trades = [rest_trade(f"t{n}", 1_800_000_005) for n in range(300)]
    publisher = small_publisher(Crowded)
    record, backfilled = stored_window(await publish_window(publisher, trades))
    assert publisher.stats.backfilled_dropped == 300 - len(backfilled) > 0
    assert record["outcome"] == "unrepaired" and "overflowed" in record["error"]


def test_a_loss_whose_slot_is_split_by_error_26_is_still_asked_for() -> None:
    h = Harness([])
    h.session.start()
    command = h.session.apply(Change(Subscribe(0, "trade", 0, ("A", "B")), "discovery"))
    assert command is not None
    h.subscribed(command.reply, 1, T0)
    h.trade(1, 1, "t1", T0 + 10 * S)
    (again,) = h.session.start()  # reconnected: trades of A and B lost since T0+10 s
    limit = {"code": 26, "msg": "too many markets"}
    h.frame({"id": again.reply, "type": "error", "msg": limit}, T0 + 30 * S)
    assert h.session.take_refused() == [(0, ("A", "B"), True, 0)]
    assert h.windows == [BackfillWindow(1_800_000_008, 1_800_000_032, ("A", "B"), "disconnect")]
    for slot, markets in ((1, ("A",)), (2, ("B",))):  # the planner places them anew
        command = h.session.apply(Change(Subscribe(0, "trade", slot, markets), "error:26"))
        assert command is not None
        h.subscribed(command.reply, 10 + slot, T0 + 31 * S)
    assert len(h.windows) == 1


def test_a_loss_whose_slot_is_removed_before_its_resubscribe_is_still_asked_for() -> None:
    h = Harness([SubscriptionPlan("ticker", ())])
    (ticker,) = h.session.start()
    h.subscribed(ticker.reply, 5, T0)
    command = h.session.apply(Change(Subscribe(0, "trade", 0, ("A",)), "discovery"))
    assert command is not None
    h.subscribed(command.reply, 1, T0)
    h.trade(1, 1, "t1", T0 + 10 * S)
    ticker, trade = h.session.start()  # reconnected
    h.subscribed(ticker.reply, 6, T0 + 30 * S)
    h.frame({"id": trade.reply, "type": "error", "msg": {"code": 17, "msg": "x"}}, T0 + 30 * S)
    assert h.windows == []  # refused: retried later, the loss still waiting for it
    h.session.apply(Change(Unsubscribe(0, "trade", 0), "lifecycle:determined"))
    h.frame({"type": "ticker", "sid": 6, "msg": {"market_ticker": "A"}}, T0 + 40 * S)
    assert h.windows == [BackfillWindow(1_800_000_008, 1_800_000_042, ("A",), "disconnect")]
    assert h.session.take_retries() == []


async def test_a_window_cut_whole_while_rest_answers_asks_no_more(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ledger = TradeLedger(capacity=2)
    queries: list[dict[str, str]] = []
    answer = serving([], queries)

    def forgetting(request: httpx.Request) -> httpx.Response:
        for n, second in enumerate((20, 21, 22)):  # forgets one received at T0+20 s
            ledger.seen(f"live{n}", T0 + second * S)
        return answer(request)

    backfill = backfill_for(forgetting, ledger, settle_limit=0.0)
    window = BackfillWindow(1_799_999_990, 1_800_000_008, ("A", "B"), "gap")
    record, published = parts(await windowed(backfill, window))
    assert [q["ticker"] for q in queries] == ["A"] and published == []
    assert (record["outcome"], record["min_ts"]) == ("partial", 1_800_000_009)
