"""A simulated Kalshi exchange on a local WebSocket, so `ssmd run --demo` runs the real
connector against the protocol in kalshi-ws.md.

It checks the signed handshake (HTTP 401 on a wrong key, a bad signature or a stale
timestamp), answers `subscribe`, `unsubscribe` and `update_subscription`, and streams a
mix of `ticker`, `trade`, `orderbook_snapshot`/`orderbook_delta` and lifecycle messages
over a few dozen markets, with `seq` per sid. It pings every `ping_interval`, drops the
TCP connection about every `disconnect_every` seconds, and skips `seq` exactly once on an
orderbook sid `gap_after` seconds into the run. The choices come from `random.Random(seed)`.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any

import attrs
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer

log = logging.getLogger("ssmd.simulator")

WS_PATH = "/trade-api/ws/v2"
MAX_CLOCK_SKEW_MS = 5000
SEND_TICK_S = 0.02
PING_PAYLOAD = b"heartbeat"
CHANNELS = ("ticker", "trade", "orderbook_delta", "market_lifecycle_v2")
# Share of the message rate per channel, among the channels a connection subscribed.
CHANNEL_WEIGHTS = {"ticker": 45, "trade": 15, "orderbook_delta": 39, "market_lifecycle_v2": 1}
ERROR_UNPROCESSABLE = (1, "Unable to process message")
ERROR_UNKNOWN_COMMAND = (5, "Unknown command")
ERROR_PARAMS_REQUIRED = (2, "Params required")
ERROR_UNKNOWN_CHANNEL = (8, "Unknown channel name")
ERROR_UNKNOWN_SID = (7, "Subscription not found")
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)

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


def check_handshake(
    request: WebSocketRequest, public_key: rsa.RSAPublicKey, api_key: str
) -> str | None:
    """None when the upgrade request is signed like Kalshi wants, else why it is not."""
    headers = {name.decode().lower(): value.decode() for name, value in request.headers}
    if headers.get("kalshi-access-key") != api_key:
        return "unknown API key"
    timestamp = headers.get("kalshi-access-timestamp", "")
    if not timestamp.isdigit():
        return "missing timestamp"
    if abs(int(timestamp) - int(time.time() * 1000)) > MAX_CLOCK_SKEW_MS:
        return "stale timestamp"
    path = request.path.split("?", 1)[0]
    try:
        signature = base64.b64decode(headers.get("kalshi-access-signature", ""), validate=True)
        public_key.verify(signature, f"{timestamp}GET{path}".encode(), _PSS, hashes.SHA256())
    except (InvalidSignature, ValueError):
        return "invalid signature"
    return None


@attrs.define
class _Market:
    ticker: str
    market_id: str
    price: int
    volume: int
    open_interest: int


@attrs.define
class _Subscription:
    sid: int
    channel: str
    markets: list[str]
    seq: int = 0


@attrs.frozen
class SeqGap:
    """The deliberate gap: on `sid`, seq `expected` was due and `sent` went out instead."""

    sid: int
    expected: int
    sent: int


@attrs.define
class SimulatorStats:
    connections: int = 0
    rejected: int = 0
    messages: int = 0
    drops: int = 0


class _LostClient(Exception):
    """The client stopped answering pings."""


class _Session:
    """One accepted connection: its subscriptions, order books and the streams it is sent."""

    def __init__(
        self, exchange: SimulatedExchange, ws: WebSocketConnection, rng: random.Random
    ) -> None:
        self.exchange = exchange
        self.ws = ws
        self.rng = rng
        self.subscriptions: dict[int, _Subscription] = {}
        # Per channel: the (market, subscription) pairs that may be streamed, and their
        # cumulative popularity weights, rebuilt when subscriptions change.
        self.routes: dict[str, tuple[list[tuple[str, _Subscription]], list[float]]] = {}
        self.books: dict[str, dict[str, dict[int, int]]] = {}

    async def send(self, envelope: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(envelope, separators=(",", ":")))

    async def send_error(self, command_id: object, error: tuple[int, str]) -> None:
        code, text = error
        await self.send({"type": "error", "id": command_id, "msg": {"code": code, "msg": text}})

    def _rebuild_routes(self) -> None:
        self.routes = {}
        popularity = self.exchange.popularity
        for channel in CHANNELS:
            pairs = [
                (market, sub)
                for sub in self.subscriptions.values()
                if sub.channel == channel
                for market in (sub.markets or self.exchange.markets)
            ]
            if pairs:
                weights = itertools.accumulate(popularity[market] for market, _ in pairs)
                self.routes[channel] = (pairs, list(weights))

    async def serve_commands(self) -> None:
        while True:
            text = await self.ws.get_message()
            try:
                command = json.loads(text)
            except ValueError:
                command = None
            if not isinstance(command, dict):
                await self.send_error(None, ERROR_UNPROCESSABLE)
                continue
            try:
                await self._answer(command)
            except (TypeError, ValueError, KeyError, AttributeError):
                await self.send_error(command.get("id"), ERROR_UNPROCESSABLE)

    async def _answer(self, command: dict[str, Any]) -> None:
        command_id = command.get("id")
        params = command.get("params")
        if not isinstance(params, dict):
            params = {}
        match command.get("cmd"):
            case "subscribe":
                await self._subscribe(command_id, params)
            case "unsubscribe":
                for sid in params.get("sids") or []:
                    sub = self.subscriptions.pop(sid, None) if isinstance(sid, int) else None
                    if sub is None:
                        await self.send_error(command_id, ERROR_UNKNOWN_SID)
                        continue
                    await self.send(
                        {"type": "unsubscribed", "id": command_id, "sid": sid, "seq": sub.seq}
                    )
                self._rebuild_routes()
            case "update_subscription":
                await self._update(command_id, params)
            case _:
                await self.send_error(command_id, ERROR_UNKNOWN_COMMAND)

    async def _subscribe(self, command_id: object, params: dict[str, Any]) -> None:
        channels = params.get("channels") or []
        markets = params.get("market_tickers") or (
            [params["market_ticker"]] if params.get("market_ticker") else []
        )
        known = set(self.exchange.markets)
        markets = [m for m in dict.fromkeys(markets) if isinstance(m, str) and m in known]
        for channel in channels:
            if channel not in CHANNELS:
                await self.send_error(command_id, ERROR_UNKNOWN_CHANNEL)
                continue
            if channel == "orderbook_delta" and not markets:
                await self.send_error(command_id, ERROR_PARAMS_REQUIRED)
                continue
            sub = _Subscription(next(self.exchange.sids), channel, markets)
            await self.send(
                {
                    "type": "subscribed",
                    "id": command_id,
                    "msg": {"channel": channel, "sid": sub.sid},
                }
            )
            if channel == "orderbook_delta":
                for market in markets:
                    await self._send_snapshot(sub, market)
            self.subscriptions[sub.sid] = sub
            self._rebuild_routes()

    async def _update(self, command_id: object, params: dict[str, Any]) -> None:
        sids = params.get("sids") or []
        sub = self.subscriptions.get(sids[0]) if sids and isinstance(sids[0], int) else None
        if sub is None:
            await self.send_error(command_id, ERROR_UNKNOWN_SID)
            return
        markets = [m for m in params.get("market_tickers") or [] if m in self.exchange.markets]
        if params.get("action") == "delete_markets":
            sub.markets = [m for m in sub.markets if m not in markets]
        else:
            added = [m for m in markets if m not in sub.markets]
            sub.markets.extend(added)
            if sub.channel == "orderbook_delta":
                for market in added:
                    await self._send_snapshot(sub, market)
        self._rebuild_routes()
        await self.send(
            {
                "type": "ok",
                "id": command_id,
                "sid": sub.sid,
                "seq": sub.seq,
                "market_tickers": markets,
            }
        )

    def _book(self, market: str) -> dict[str, dict[int, int]]:
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

    async def _send_snapshot(self, sub: _Subscription, market: str) -> None:
        book = self._book(market)
        sub.seq += 1
        msg = {
            "market_ticker": market,
            "yes": [[p, n] for p, n in sorted(book["yes"].items())],
            "no": [[p, n] for p, n in sorted(book["no"].items())],
        }
        await self.send({"type": "orderbook_snapshot", "sid": sub.sid, "seq": sub.seq, "msg": msg})
        self.exchange.stats.messages += 1

    async def stream(self, rate: float) -> None:
        """Send data messages at `rate` per second over whatever is subscribed."""
        budget = 0.0
        deadline = trio.current_time()
        while True:
            deadline += SEND_TICK_S
            await trio.sleep_until(deadline)
            deadline = max(deadline, trio.current_time() - 1.0)
            if not self.routes:
                budget = 0.0
                continue
            budget = min(budget + rate * SEND_TICK_S, rate)
            while budget >= 1:
                budget -= 1
                await self.send(self._next_message())
                self.exchange.stats.messages += 1

    def _next_message(self) -> dict[str, Any]:
        rng = self.rng
        channels = list(self.routes)
        channel = rng.choices(channels, weights=[CHANNEL_WEIGHTS[c] for c in channels])[0]
        pairs, cumulative = self.routes[channel]
        market, sub = rng.choices(pairs, cum_weights=cumulative)[0]
        state = self.exchange.market_state[market]
        state.price = min(98, max(2, state.price + rng.choice((-1, 0, 0, 1))))
        if channel == "ticker":
            return {"type": "ticker", "sid": sub.sid, "msg": self._ticker(state)}
        if channel == "trade":
            sub.seq += 1
            return {"type": "trade", "sid": sub.sid, "seq": sub.seq, "msg": self._trade(state)}
        if channel == "orderbook_delta":
            sub.seq += 1 + self.exchange.deliberate_gap(sub.sid, sub.seq + 1)
            return {
                "type": "orderbook_delta",
                "sid": sub.sid,
                "seq": sub.seq,
                "msg": self._delta(market),
            }
        if rng.random() < 0.3:
            event = _event_ticker(market)
            series = event.split("-", 1)[0]
            msg: dict[str, Any] = {
                "event_ticker": event,
                "title": _SERIES_TITLES.get(series, series),
                "series_ticker": series,
            }
            return {"type": "event_lifecycle", "sid": sub.sid, "msg": msg}
        now = int(time.time())
        msg = {
            "market_ticker": market,
            "event_type": rng.choice(("activated", "close_date_updated", "deactivated")),
            "open_ts": now - now % 3600,
            "close_ts": now - now % 3600 + 3600,
        }
        return {"type": "market_lifecycle_v2", "sid": sub.sid, "msg": msg}

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
        levels = self._book(market)[side]
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

    async def ping(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            with trio.move_on_after(interval):
                await self.ws.ping(PING_PAYLOAD)
                continue
            raise _LostClient(f"no pong within {interval:g}s")

    async def drop_after(self, seconds: float) -> None:
        """Close the TCP connection with no WebSocket close handshake."""
        await trio.sleep(seconds)
        self.exchange.stats.drops += 1
        log.info("simulator: dropping a connection after %.0fs", seconds)
        # trio-websocket offers no public way to abort the transport.
        await self.ws._stream.aclose()


class SimulatedExchange:
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
    ) -> None:
        self.public_key = public_key
        self.api_key = api_key
        self.markets = list(markets) if markets is not None else simulated_markets()
        self.rate = rate
        self.ping_interval = ping_interval
        self.disconnect_every = disconnect_every
        self.gap_after = gap_after
        self.rng = random.Random(seed)
        self.stats = SimulatorStats()
        self.sids = itertools.count(1)
        self.clock = 6_598_272_994
        self.gap: SeqGap | None = None
        # A few busy markets and a long quiet tail, like the real exchange.
        self.popularity = {m: 1.0 / (rank + 1) for rank, m in enumerate(self.markets)}
        self.market_state = {
            m: _Market(
                m,
                str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
                self.rng.randint(5, 95),
                self.rng.randint(1_000, 500_000),
                self.rng.randint(500, 200_000),
            )
            for m in self.markets
        }
        self._listener: trio.SocketListener | None = None
        self._started_at: float | None = None

    @property
    def url(self) -> str:
        assert self._listener is not None, "listen() first"
        port = self._listener.socket.getsockname()[1]
        return f"ws://127.0.0.1:{port}{WS_PATH}"

    async def listen(self) -> str:
        """Bind a free loopback port; connections wait in the backlog until `serve`."""
        (self._listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        return self.url

    async def serve(self) -> None:
        if self._listener is None:
            await self.listen()
        assert self._listener is not None
        self._started_at = trio.current_time()
        server = WebSocketServer(self._handle, [self._listener])
        await server.run()

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

    async def _handle(self, request: WebSocketRequest) -> None:
        problem = check_handshake(request, self.public_key, self.api_key)
        if problem is not None:
            self.stats.rejected += 1
            log.warning("simulator: handshake rejected (401): %s", problem)
            await request.reject(401, body=problem.encode())
            return
        ws = await request.accept()
        self.stats.connections += 1
        session = _Session(self, ws, random.Random(self.rng.getrandbits(64)))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.serve_commands)
                nursery.start_soon(session.stream, self.rate)
                nursery.start_soon(session.ping, self.ping_interval)
                if self.disconnect_every is not None:
                    after = self.disconnect_every * session.rng.uniform(0.8, 1.2)
                    nursery.start_soon(session.drop_after, after)
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except* _LostClient as group:
            log.warning("simulator: %s", group.exceptions[0])
