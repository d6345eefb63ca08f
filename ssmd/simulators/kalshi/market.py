"""The demo's market: a `KalshiExchange` that streams a realistic mix over a few dozen
markets, so `ssmd run --demo` runs the real connector against the real protocol.

It streams `ticker`, `trade`, `orderbook_snapshot`/`orderbook_delta` and lifecycle
messages at `rate` per second over whatever a connection subscribed, pings every
`ping_interval`, drops the TCP connection about every `disconnect_every` seconds, and
skips `seq` exactly once on an orderbook sid `gap_after` seconds into the run. The
choices come from `random.Random(seed)`.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import attrs
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.simulators.http import HttpServer
from ssmd.simulators.kalshi.exchange import ExchangeSession, KalshiExchange, Subscription
from ssmd.simulators.kalshi.rest import REST_PREFIX, KalshiMarkets, KalshiRest

log = logging.getLogger("ssmd.simulators.kalshi")

SEND_TICK_S = 0.02
CHANNELS = ("ticker", "trade", "orderbook_delta", "market_lifecycle_v2")
# Share of the message rate per channel, among the channels a connection subscribed.
CHANNEL_WEIGHTS = {"ticker": 45, "trade": 15, "orderbook_delta": 39, "market_lifecycle_v2": 1}

_SERIES_TITLES = {
    "KXBTCD": "Bitcoin price today at 1pm EDT",
    "KXETHD": "Ethereum price today at 1pm EDT",
    "KXHIGHNY": "Highest temperature in NYC today",
    "INXD": "S&P 500 close today",
    "KXNBAGAME": "Professional basketball game",
    "KXFEDDECISION": "Fed decision in March",
    "KXRANKLISTGOOGLESEARCH": "Top Google search this month",
}


def simulated_markets() -> list[str]:
    """34 market tickers shaped like Kalshi's; the crypto and index strikes contain dots."""
    return [
        *(f"KXBTCD-26MAR1213-T{68499.99 + 500 * i:.2f}" for i in range(8)),
        *(f"KXETHD-26MAR1213-T{2399.99 + 50 * i:.2f}" for i in range(6)),
        *(f"KXHIGHNY-26MAR12-B{40.5 + 2 * i}" for i in range(5)),
        *(f"INXD-26MAR12-B{5712.5 + 25 * i}" for i in range(4)),
        "KXNBAGAME-26MAR12LALBOS-LAL",
        "KXNBAGAME-26MAR12LALBOS-BOS",
        "KXNBAGAME-26MAR12GSWDEN-GSW",
        "KXNBAGAME-26MAR12GSWDEN-DEN",
        "KXFEDDECISION-26MAR-H0",
        "KXFEDDECISION-26MAR-H25",
        "KXFEDDECISION-26MAR-C25",
        "KXRANKLISTGOOGLESEARCH-26MAR-BIA",
        "KXRANKLISTGOOGLESEARCH-26MAR-CHA",
        "KXRANKLISTGOOGLESEARCH-26MAR-TAY",
    ]


def _event_ticker(market: str) -> str:
    return market.rsplit("-", 1)[0]


def _dollars(cents: int) -> str:
    return f"{cents / 100:.4f}"


def _rfc3339_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


@attrs.define
class _Market:
    ticker: str
    market_id: str
    price: int
    volume: int
    open_interest: int


@attrs.frozen
class SeqGap:
    """The deliberate gap: on `sid`, seq `expected` was due and `sent` went out instead."""

    sid: int
    expected: int
    sent: int


class _Feed:
    """What one connection is streamed: routes over its subscriptions, and its books."""

    def __init__(self, exchange: MarketExchange, session: ExchangeSession) -> None:
        self.exchange = exchange
        self.session = session
        self.rng = session.rng
        # Per channel: the (market, subscription) pairs that may be streamed, and their
        # cumulative popularity weights, rebuilt when subscriptions change.
        self.routes: dict[str, tuple[list[tuple[str, Subscription]], list[float]]] = {}
        self.books: dict[str, dict[str, dict[int, int]]] = {}

    def rebuild_routes(self) -> None:
        self.routes = {}
        popularity = self.exchange.popularity
        active = [s for s in self.session.subscriptions.values() if s.active]
        for channel in CHANNELS:
            pairs = [
                (market, sub)
                for sub in active
                if sub.channel == channel
                for market in (sub.markets or self.exchange.markets)
            ]
            if pairs:
                weights = itertools.accumulate(popularity[market] for market, _ in pairs)
                self.routes[channel] = (pairs, list(weights))

    def book(self, market: str) -> dict[str, dict[int, int]]:
        book = self.books.get(market)
        if book is None:
            price = self.exchange.market_state[market].price
            rng = self.rng
            book = {
                "yes": {p: rng.randint(10, 900) for p in range(max(1, price - 6), price)},
                "no": {p: rng.randint(10, 900) for p in range(max(1, 94 - price), 100 - price)},
            }
            self.books[market] = book
        return book

    async def send_snapshot(self, sub: Subscription, market: str) -> None:
        book = self.book(market)
        msg = {
            "market_ticker": market,
            "yes": [[p, n] for p, n in sorted(book["yes"].items())],
            "no": [[p, n] for p, n in sorted(book["no"].items())],
        }
        await self.session.send_data("orderbook_snapshot", sub.sid, msg)

    async def stream(self) -> None:
        """Send data messages at the exchange's `rate` per second (read every tick, so
        setting it to 0 quiesces a running connection) over whatever is subscribed."""
        budget = 0.0
        deadline = trio.current_time()
        while True:
            deadline += SEND_TICK_S
            await trio.sleep_until(deadline)
            deadline = max(deadline, trio.current_time() - 1.0)
            if not self.routes:
                budget = 0.0
                continue
            rate = self.exchange.rate
            budget = min(budget + rate * SEND_TICK_S, rate)
            # Subscriptions may end while a burst is being sent.
            while budget >= 1 and self.routes:
                budget -= 1
                message_type, sid, msg, with_seq = self._next_message()
                await self.session.send_data(message_type, sid, msg, with_seq=with_seq)

    def _next_message(self) -> tuple[str, int, dict[str, Any], bool]:
        rng = self.rng
        channels = list(self.routes)
        channel = rng.choices(channels, weights=[CHANNEL_WEIGHTS[c] for c in channels])[0]
        pairs, cumulative = self.routes[channel]
        market, sub = rng.choices(pairs, cum_weights=cumulative)[0]
        state = self.exchange.market_state[market]
        state.price = min(98, max(2, state.price + rng.choice((-1, 0, 0, 1))))
        if channel == "ticker":
            return "ticker", sub.sid, self._ticker(state), False
        if channel == "trade":
            return "trade", sub.sid, self._trade(state), True
        if channel == "orderbook_delta":
            next_seq = self.session.seq.get(sub.sid, 0) + 1
            self.session.skip_seq(sub.sid, self.exchange.deliberate_gap(sub.sid, next_seq))
            return "orderbook_delta", sub.sid, self._delta(market), True
        if rng.random() < 0.3:
            event = _event_ticker(market)
            series = event.split("-", 1)[0]
            msg: dict[str, Any] = {
                "event_ticker": event,
                "title": _SERIES_TITLES.get(series, series),
                "series_ticker": series,
            }
            return "event_lifecycle", sub.sid, msg, False
        now = int(time.time())
        msg = {
            "market_ticker": market,
            # Never one that opens or ends a market: that is `open_markets`' job.
            "event_type": rng.choice(("close_date_updated", "metadata_updated")),
            "open_ts": now - now % 3600,
            "close_ts": now - now % 3600 + 3600,
        }
        return "market_lifecycle_v2", sub.sid, msg, False

    def _ticker(self, state: _Market) -> dict[str, Any]:
        self.exchange.clock += self.rng.randint(1, 50)
        price = state.price
        return {
            "market_id": state.market_id,
            "market_ticker": state.ticker,
            "price": price,
            "yes_bid": price - 1,
            "yes_ask": price,
            "price_dollars": _dollars(price),
            "yes_bid_dollars": _dollars(price - 1),
            "yes_ask_dollars": _dollars(price),
            "volume": state.volume,
            "open_interest": state.open_interest,
            "dollar_volume": state.volume * price // 100,
            "dollar_open_interest": state.open_interest * price // 100,
            "ts": int(time.time()),
            "Clock": self.exchange.clock,
        }

    def _trade(self, state: _Market) -> dict[str, Any]:
        rng = self.rng
        count = rng.choice((1, 1, 2, 3, 5, 10, 25, 100))
        state.volume += count
        state.open_interest += rng.choice((-count, count, count))
        yes_price = state.price
        return {
            "trade_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "market_ticker": state.ticker,
            "yes_price": yes_price,
            "no_price": 100 - yes_price,
            "yes_price_dollars": _dollars(yes_price),
            "no_price_dollars": _dollars(100 - yes_price),
            "count": count,
            "count_fp": f"{count}.00",
            "taker_side": rng.choice(("yes", "no")),
            "ts": int(time.time()),
        }

    def _delta(self, market: str) -> dict[str, Any]:
        rng = self.rng
        side = rng.choice(("yes", "no"))
        levels = self.book(market)[side]
        best = self.exchange.market_state[market].price
        if side == "no":
            best = 100 - best
        price = min(99, max(1, best - rng.randint(1, 6)))
        size = levels.get(price, 0)
        delta = rng.randint(-size, 500) if size else rng.randint(1, 500)
        if size + delta:
            levels[price] = size + delta
        else:
            levels.pop(price, None)
        return {
            "market_ticker": market,
            "price": price,
            "delta": delta,
            "side": side,
            "ts": _rfc3339_now(),
        }


class MarketExchange(KalshiExchange):
    """Listen with `listen()`, then run `serve()` as a task; `url` is where to connect."""

    def __init__(
        self,
        public_key: rsa.RSAPublicKey,
        api_key: str,
        *,
        markets: Sequence[str] | None = None,
        rate: float = 300.0,
        seed: int = 0,
        ping_interval: float = 10.0,
        disconnect_every: float | None = 45.0,
        gap_after: float | None = 2.0,
        catalogue: KalshiMarkets | None = None,
        churn_every: float | None = None,
    ) -> None:
        if markets is not None:
            market_list = list(markets)
        elif catalogue is not None:
            market_list = catalogue.open_tickers()
        else:
            market_list = simulated_markets()
        if catalogue is None:
            # The REST side serves the same markets (`rest_url` once listening).
            catalogue = KalshiMarkets()
            catalogue.open(market_list)
        super().__init__(
            public_key,
            api_key,
            markets=market_list,
            ping_interval=ping_interval,
            seed=seed,
            catalogue=catalogue,
        )
        self.markets = market_list
        self.rate = rate
        self.disconnect_every = disconnect_every
        self.gap_after = gap_after
        self.clock = 6_598_272_994
        self.gap: SeqGap | None = None
        # A few busy markets and a long quiet tail, like the real exchange.
        self.popularity = {m: 1.0 / (rank + 1) for rank, m in enumerate(market_list)}
        self.market_state = {
            m: _Market(
                m,
                str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
                self.rng.randint(5, 95),
                self.rng.randint(1_000, 500_000),
                self.rng.randint(500, 200_000),
            )
            for m in market_list
        }
        self._feeds: dict[int, _Feed] = {}
        self._started_at: float | None = None
        self.churn_every = churn_every
        self.rest = KalshiRest(catalogue, public_key=public_key, api_key=api_key)
        self._rest_server = HttpServer(self.rest.handle)
        self._churned: list[str] = []

    @property
    def rest_url(self) -> str:
        assert self._rest_server.port is not None, "listen() or serve() first"
        return f"http://127.0.0.1:{self._rest_server.port}{REST_PREFIX}"

    async def listen(self) -> str:
        await self._rest_server.listen()
        return await super().listen()

    async def serve(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """The WebSocket, the REST API and (with `churn_every`) markets opening and
        settling while it runs."""
        if self._rest_server.port is None:
            await self._rest_server.listen()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._rest_server.serve)
            if self.churn_every is not None:
                nursery.start_soon(self._churn, self.churn_every)
            await nursery.start(super().serve)
            task_status.started()

    run = serve

    async def _churn(self, every: float) -> None:
        """Every `every` seconds a new market opens in the event of an existing one; the
        oldest market opened this way settles once three are open."""
        count = 0
        while True:
            await trio.sleep(every)
            count += 1
            event = _event_ticker(self.rng.choice(self.markets[: len(simulated_markets())]))
            ticker = f"{event}-C{count}"
            await self.open_markets([ticker])
            self._churned.append(ticker)
            log.info("simulator: market %s opened", ticker)
            if len(self._churned) > 3:
                gone = self._churned.pop(0)
                await self.settle_markets([gone])
                log.info("simulator: market %s settled", gone)

    async def started(self) -> None:
        self._started_at = trio.current_time()

    def deliberate_gap(self, sid: int, next_seq: int) -> int:
        """How many `seq` to skip on an orderbook sid now: a few, exactly once per run."""
        if (
            self.gap is not None
            or self.gap_after is None
            or self._started_at is None
            or trio.current_time() - self._started_at < self.gap_after
        ):
            return 0
        skipped = self.rng.randint(3, 9)
        self.gap = SeqGap(sid, next_seq, next_seq + skipped)
        log.info("simulator: skipping seq %d..%d on sid %d", next_seq, next_seq + skipped - 1, sid)
        return skipped

    def markets_changed(self, opened: list[str], finished: list[str]) -> None:
        gone = set(finished)
        for market in opened:
            if market not in self.market_state:
                self.market_state[market] = _Market(
                    market,
                    str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
                    self.rng.randint(5, 95),
                    0,
                    0,
                )
                self.popularity[market] = 1.0 / (len(self.popularity) + 1)
        self.markets[:] = [m for m in self.markets if m not in gone] + [
            m for m in opened if m not in self.markets
        ]
        for feed in self._feeds.values():
            feed.rebuild_routes()

    def _feed(self, session: ExchangeSession) -> _Feed:
        feed = self._feeds.get(id(session))
        if feed is None:
            feed = self._feeds[id(session)] = _Feed(self, session)
        return feed

    async def accepted_session(self, session: ExchangeSession, nursery: trio.Nursery) -> None:
        feed = self._feed(session)
        nursery.start_soon(self._stream_until_closed, session, feed)
        if self.disconnect_every is not None:
            after = self.disconnect_every * session.rng.uniform(0.8, 1.2)
            nursery.start_soon(self._drop_after, session, after)

    async def _stream_until_closed(self, session: ExchangeSession, feed: _Feed) -> None:
        try:
            await feed.stream()
        finally:
            self._feeds.pop(id(session), None)

    async def _drop_after(self, session: ExchangeSession, seconds: float) -> None:
        await trio.sleep(seconds)
        log.info("simulator: dropping a connection after %.0fs", seconds)
        await session.drop()

    async def subscribed(self, session: ExchangeSession, sub: Subscription) -> None:
        feed = self._feed(session)
        if sub.channel == "orderbook_delta":
            for market in sub.markets:
                await feed.send_snapshot(sub, market)
        feed.rebuild_routes()
        await super().subscribed(session, sub)

    async def unsubscribed(self, session: ExchangeSession, sub: Subscription) -> None:
        self._feed(session).rebuild_routes()

    async def updated(self, session: ExchangeSession, sub: Subscription, added: list[str]) -> None:
        feed = self._feed(session)
        if sub.channel == "orderbook_delta":
            for market in added:
                await feed.send_snapshot(sub, market)
        feed.rebuild_routes()
