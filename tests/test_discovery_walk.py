"""Discovery's walk against a REST venue in memory (httpx's MockTransport) on a fake clock:
what the walk, live events, the lookup of missed markets and the schedule do to the
subscriptions (review of issue 9's walk: H1, M4, M5, L2, L7)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
import trio.testing

from ssmd.backoff import Backoff
from ssmd.clock import WallClock
from ssmd.connector.discovery import Discovery
from ssmd.connector.layout import SubscriptionLayout
from ssmd.connector.publisher import Inbound
from ssmd.connector.rest import RestClient, RestSettings
from ssmd.feeds.base import Change, Subjects
from ssmd.feeds.kalshi_discovery import Selection
from ssmd.feeds.kalshi_source import KalshiSource

REFRESH = 300.0


class FakeConnection:
    def __init__(self, index: int) -> None:
        self.index = index
        self.on_refused: Any = None
        self.changes: list[Change] = []

    def change(self, changes: list[Change]) -> None:
        self.changes.extend(changes)


class Venue:
    """Kalshi's `/markets` and `/events`, from a dict of ticker -> status."""

    def __init__(self, markets: dict[str, str]) -> None:
        self.markets = markets
        self.hidden: set[str] = set()  # left out of listings (paging skipped them)
        self.walks: list[float] = []  # when each market walk began
        self.lookups: list[list[str]] = []  # `tickers=` lookups
        self.walk_pages = 1  # pages a market walk takes, each answered in `page_time`
        self.page_time = 0.0
        self.refuse: set[str] = set()  # paths answered 400
        self.refuse_lookup = False

    def rows(self, tickers: list[str]) -> list[dict[str, Any]]:
        return [
            {"ticker": t, "event_ticker": t.rsplit("-", 1)[0], "status": self.markets[t]}
            for t in tickers
        ]

    async def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v2")
        query = request.url.params
        if path in self.refuse:
            return httpx.Response(400, json={"error": "refused"})
        if path == "/markets" and "tickers" in query:
            asked = query["tickers"].split(",")
            self.lookups.append(asked)
            if self.refuse_lookup:
                return httpx.Response(400, json={"error": "refused"})
            known = [t for t in asked if t in self.markets]
            return httpx.Response(200, json={"markets": self.rows(known), "cursor": ""})
        if path == "/markets":
            page = int(query.get("cursor") or 0)
            if page == 0:
                self.walks.append(trio.current_time())
            await trio.sleep(self.page_time)
            listed = [t for t, s in self.markets.items() if s == "active" and t not in self.hidden]
            more = str(page + 1) if page + 1 < self.walk_pages else ""
            rows = self.rows(listed) if page == 0 else []
            return httpx.Response(200, json={"markets": rows, "cursor": more})
        if path == "/events":
            events = sorted({t.rsplit("-", 1)[0] for t, s in self.markets.items()})
            body = [{"event_ticker": e} for e in events]
            return httpx.Response(200, json={"events": body, "cursor": ""})
        return httpx.Response(404)


def discovery(venue: Venue, layout: SubscriptionLayout | None = None) -> Discovery:
    settings = RestSettings(rate=100.0, burst=100.0, backoff=Backoff(1.0, 8.0))
    rest = RestClient(
        "https://venue.test/v2", settings, transport=httpx.MockTransport(venue.handler)
    )
    return Discovery(
        source=KalshiSource(Selection()),
        layout=layout or SubscriptionLayout(["orderbook_delta"], 100, 1000),
        rest=rest,
        subjects=Subjects("test", "kalshi"),
        clock=WallClock(1_700_000_000 * 10**9),
        refresh=REFRESH,
        connections=[],
        open_connection=lambda i, send: FakeConnection(i),  # type: ignore[arg-type,return-value]
    )


def lifecycle(event_type: str, ticker: str) -> bytes:
    msg = {"event_type": event_type, "market_ticker": ticker}
    return json.dumps({"type": "market_lifecycle_v2", "sid": 1, "msg": msg}).encode()


async def drain(receive: trio.MemoryReceiveChannel[list[Inbound]]) -> None:
    async for _ in receive:
        pass


@asynccontextmanager
async def running(d: Discovery, buffer: int = 100) -> AsyncIterator[None]:
    """`d` runs, its output drained, for the body of the block."""
    send, receive = trio.open_memory_channel[list[Inbound]](buffer)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain, receive)
        await nursery.start(d.run, send)
        yield
        nursery.cancel_scope.cancel()


async def test_a_settlement_while_a_page_is_published_takes_the_market_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue({"E-M1": "active", "E-M2": "active"})
    venue.walk_pages, venue.page_time = 2, 5.0
    d = discovery(venue)
    assert d.layout is not None
    send, receive = trio.open_memory_channel[list[Inbound]](0)  # the publisher is busy
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run, send)
        await trio.sleep(6)  # the first page's catalogue records wait to be taken
        d.on_event(lifecycle("settled", "E-M1"))
        await trio.sleep(1)
        venue.markets["E-M1"] = "settled"
        nursery.start_soon(drain, receive)
        await trio.sleep(1)
        # The walk reads its second page: the settlement took the market off already.
        assert d.stats.walks == 0
        assert "E-M1" not in d.markets
        assert d.layout.markets == {"E-M2"}
        await trio.sleep(10)
        assert d.stats.walks == 1 and d.layout.markets == {"E-M2"}
        nursery.cancel_scope.cancel()


async def test_a_complete_walk_takes_off_what_is_placed_but_not_selected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue({"E-M1": "active"})
    d = discovery(venue)
    assert d.layout is not None
    async with running(d):
        await trio.sleep(1)
        d.add(["STRAY"], "test")  # however it got there
        await trio.sleep(REFRESH)
        assert d.layout.markets == {"E-M1"}


async def test_a_market_that_closed_silently_goes_at_the_next_walk(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue({"E-A": "active", "E-B": "active", "E-C": "active"})
    d = discovery(venue)
    assert d.layout is not None
    async with running(d):
        await trio.sleep(1)
        assert d.layout.markets == {"E-A", "E-B", "E-C"}
        venue.markets["E-A"] = "closed"  # no lifecycle event
        venue.hidden = {"E-B"}  # open, but the walk's paging skipped it
        await trio.sleep(REFRESH)
        # One batched lookup of the two missed markets: A closed, B still open.
        assert venue.lookups == [["E-A", "E-B"]]
        assert d.layout.markets == {"E-B", "E-C"}
        assert d.markets.missed == set()
        venue.hidden = set()
        await trio.sleep(REFRESH)
        assert d.layout.markets == {"E-B", "E-C"}


async def test_without_a_lookup_a_miss_waits_for_the_next_walk(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue({"E-A": "active", "E-B": "active"})
    venue.refuse_lookup = True
    d = discovery(venue)
    assert d.layout is not None
    async with running(d):
        await trio.sleep(1)
        venue.markets["E-A"] = "closed"
        await trio.sleep(REFRESH)
        assert d.layout.markets == {"E-A", "E-B"}  # the lookup failed: kept once
        assert d.refused is None  # the walk itself is complete
        await trio.sleep(REFRESH)
        assert d.layout.markets == {"E-B"}


async def walk_schedule(pages: int, seconds: float) -> tuple[list[int], Discovery]:
    """When each market walk began (seconds after the start) within `seconds` of running,
    each walk `pages` pages of 5 s; and the discovery, as it stood then."""
    venue = Venue({"E-A": "active"})
    venue.walk_pages, venue.page_time = pages, 5.0
    d = discovery(venue)
    start = trio.current_time()
    async with running(d):
        await trio.sleep(seconds)
        return [round(t - start) for t in venue.walks], d


async def test_walks_start_a_refresh_apart_however_long_they_take(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts, d = await walk_schedule(20, 3 * REFRESH + 1)  # 100 s walks
    assert starts == [0, 300, 600, 900]
    assert d.stats.walks == 3 and d.stats.overran == 0


async def test_a_walk_longer_than_refresh_is_followed_at_once_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    starts, d = await walk_schedule(70, 3 * (REFRESH + 50) + 1)  # 350 s walks
    assert starts == [0, 350, 700, 1050]
    assert d.stats.overran == 3


async def test_the_catalogues_stay_bounded_while_markets_churn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue({})
    d = discovery(venue)
    async with running(d, 1000):
        for walk in range(12):
            venue.markets = {f"E{walk}-M{i}": "active" for i in range(20)}
            await trio.sleep(REFRESH)
            # This walk's, and the last 3 complete walks': never more.
            assert len(d.market_catalogue) <= 4 * 20
            assert len(d.event_catalogue) <= 4


async def test_a_refused_walk_is_tried_again_sooner_than_a_refresh(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue({"E-A": "active"})
    venue.refuse = {"/markets"}
    d = discovery(venue)
    async with running(d):
        await trio.sleep(1)
        assert d.refused is not None and d.not_ready() is not None
        venue.refuse = set()
        await trio.sleep(REFRESH / 4)
        assert d.refused is None and d.stats.walks == 1


async def test_a_refused_event_walk_still_counts_the_market_reconcile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue({"E-A": "active"})
    venue.refuse = {"/events"}
    d = discovery(venue)
    assert d.layout is not None
    async with running(d):
        await trio.sleep(1)
        assert d.stats.walks == 1 and d.stats.last_reconcile_ns > 0
        assert d.layout.markets == {"E-A"}
        assert d.refused is not None and "/events" in d.refused  # still alerted
