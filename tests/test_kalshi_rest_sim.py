"""The REST client against the simulated Kalshi REST API over real loopback HTTP."""

from __future__ import annotations

from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.backoff import Backoff
from ssmd.connector.auth import Credentials
from ssmd.connector.rest import RestClient, RestRefused, RestSettings
from ssmd.feeds.kalshi_discovery import PAGE_LIMIT, Selection
from ssmd.feeds.kalshi_source import KalshiSource
from ssmd.simulators.kalshi.rest import KalshiMarkets, KalshiRest

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
CREDENTIALS = Credentials("key-id", KEY)
FAST = RestSettings(rate=18.0, burst=5.0, timeout=5.0, backoff=Backoff(0.05, 0.5))


async def walk(rest: RestClient, selection: Selection, limit: int = PAGE_LIMIT) -> list[str]:
    tickers: list[str] = []
    for query in selection.market_walks():
        async for page in rest.walk("/markets", query, "markets", limit=limit):
            tickers.extend(m["ticker"] for m in page if selection.wants(m))
    return tickers


async def serve(nursery: trio.Nursery, exchange: KalshiRest) -> str:
    port = await nursery.start(exchange.serve)
    return f"http://127.0.0.1:{port}/trade-api/v2"


async def test_a_signed_paced_walk_lists_every_open_market_once() -> None:
    markets = KalshiMarkets()
    markets.open(f"KXBTCD-26DEC01-T{i}" for i in range(3000))
    markets.open(f"KXINX-26DEC01-B{i}" for i in range(2000))
    markets.open((f"KXMVE-1-M{i}" for i in range(500)), multivariate=True)
    for i in range(0, 3000, 3):
        markets.set_status(f"KXBTCD-26DEC01-T{i}", "closed")
    exchange = KalshiRest(markets, public_key=KEY.public_key(), api_key="key-id")
    async with trio.open_nursery() as nursery:
        base = await serve(nursery, exchange)
        async with RestClient(base, FAST, headers=CREDENTIALS.request_headers) as rest:
            every = await walk(rest, Selection(), limit=100)
            btc = await walk(rest, Selection(frozenset({"KXBTCD"})), limit=100)
        # Faster than Kalshi allows: 429s, waited out, and the same answer.
        greedy = RestSettings(rate=100.0, burst=100.0, backoff=Backoff(0.1, 0.5))
        async with RestClient(base, greedy, headers=CREDENTIALS.request_headers) as rest:
            again = await walk(rest, Selection(), limit=100)
        nursery.cancel_scope.cancel()
    assert len(every) == len(set(every)) == 4000
    assert set(every) == {t for t in markets.open_tickers() if not t.startswith("KXMVE")}
    assert set(btc) == {t for t in markets.open_tickers() if t.startswith("KXBTCD")}
    assert sorted(again) == sorted(every)
    assert rest.stats.requests["429"] > 0
    # 40 + 20 pages paced at 18/s under the exchange's 20/s: not one 429.
    assert exchange.status_counts[200] == 100
    assert exchange.status_counts[429] == rest.stats.requests["429"]
    assert all("mve_filter=exclude" in target for target in exchange.requests)


async def test_429s_and_an_outage_are_waited_out() -> None:
    markets = KalshiMarkets()
    markets.open(f"KXINX-26DEC01-B{i}" for i in range(2500))
    exchange = KalshiRest(markets, rate_limit=False)
    async with trio.open_nursery() as nursery:
        base = await serve(nursery, exchange)
        async with RestClient(base, FAST) as rest:
            exchange.fail_next(3, 429, retry_after="0")
            first = await walk(rest, Selection())
            exchange.fail_next(6, 500)
            second = await walk(rest, Selection())
        nursery.cancel_scope.cancel()
    assert len(first) == len(second) == 2500
    assert rest.stats.requests["429"] == 3 and rest.stats.requests["500"] == 6
    assert exchange.status_counts[200] == 6


async def test_an_unsigned_or_badly_signed_request_is_refused_with_401() -> None:
    exchange = KalshiRest(KalshiMarkets(), public_key=KEY.public_key(), api_key="key-id")
    other = Credentials("key-id", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    async with trio.open_nursery() as nursery:
        base = await serve(nursery, exchange)
        async with RestClient(base, FAST, headers=other.request_headers) as rest:
            try:
                await rest.get_json("/markets")
            except RestRefused as exc:
                assert exc.status == 401 and "invalid signature" in str(exc)
            else:
                raise AssertionError("a bad signature was accepted")
        nursery.cancel_scope.cancel()


async def test_trades_can_be_listed_by_window_for_a_backfill() -> None:
    from ssmd.simulators.kalshi.rest import SimTrade

    markets = KalshiMarkets()
    markets.open(["KXINX-1-B1", "KXINX-1-B2"])
    markets.trades.extend(
        SimTrade(f"t{i}", f"KXINX-1-B{1 + i % 2}", 1_700_000_000_000 + i * 1000, 40, 1, "yes")
        for i in range(2500)
    )
    exchange = KalshiRest(markets, rate_limit=False)
    async with trio.open_nursery() as nursery:
        base = await serve(nursery, exchange)
        async with RestClient(base, FAST) as rest:
            got = [
                t["trade_id"]
                async for page in rest.walk(
                    "/markets/trades",
                    {"ticker": "KXINX-1-B1", "min_ts": 1_700_000_100, "max_ts": 1_700_002_099},
                    "trades",
                    limit=1000,
                )
                for t in page
            ]
        nursery.cancel_scope.cancel()
    assert got == [f"t{i}" for i in range(100, 2100, 2)]


async def test_a_lookup_by_tickers_finds_them_in_any_status_hidden_or_not() -> None:
    markets = KalshiMarkets()
    markets.open(f"KXA-26DEC01-T{i}" for i in range(5))
    markets.set_status("KXA-26DEC01-T1", "closed")
    exchange = KalshiRest(markets, rate_limit=False)
    exchange.hide(["KXA-26DEC01-T2"], walks=1)
    source = KalshiSource(Selection())
    asked = ["KXA-26DEC01-T1", "KXA-26DEC01-T2", "KXA-NOPE"]
    async with trio.open_nursery() as nursery:
        base = await serve(nursery, exchange)
        async with RestClient(base, FAST) as rest:
            found: list[dict[str, Any]] = []
            for w in source.confirm_walks(asked):
                async for page in rest.walk(w.path, w.query, w.items_key, limit=w.limit):
                    found.extend(page)
            # The lookup began no walk: the next one still skips the hidden market.
            listed = await walk(rest, Selection())
        nursery.cancel_scope.cancel()
    assert {m["ticker"]: source.wants(m) for m in found} == {
        "KXA-26DEC01-T1": False,
        "KXA-26DEC01-T2": True,
    }
    assert "KXA-26DEC01-T2" not in listed and len(listed) == 3
