"""A simulated Kraken Spot WebSocket v2 exchange (public channels), per kraken-ws.md.

On connect it sends a `status` frame. It answers `subscribe`/`unsubscribe` for `book`,
`trade` and `ticker` with one acknowledgement per symbol echoing `req_id` (unknown symbols
and channels get `success: false`), and `{"method": "ping"}` with a `pong`. One book per
symbol, shared by every connection like the real one, moves at `rate` events per second:
each connection subscribed to it gets the change as its depth sees it (levels that enter
its range, deletes, but no delete for a level an insert pushed out, as Kraken does) and
the CRC32 checksum of its top ten levels, computed with `ssmd.feeds.kraken_book`.
Trades carry a `trade_id` that grows by one per symbol, followed by a `ticker`. A
`heartbeat` goes out after a second without another frame while a subscription exists.
Prices and quantities are JSON numbers written with their full precision.

Fault switches: `break_checksum(symbol)` (the next book update carries a wrong checksum),
`lose_book_update(symbol)` (the next change is applied but not sent, so later checksums
fail as after a real loss), `jump_trade_id(symbol, n)`, `refuse_subscribe(channel,
symbol, times)` (the next `times` subscribes of that symbol get an error naming it, as
for an unknown pair), and per connection `drop()`,
`go_silent()`, `send_garbage(k)`. Every frame sent is in `sent` (see wsserver).
"""

from __future__ import annotations

import collections
import json
import random
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import attrs
import trio

from ssmd.feeds.kraken_book import DEPTHS, book_checksum
from ssmd.simulators.kraken_wire import Side, changed_levels, encode, levels_json, rfc3339, top
from ssmd.simulators.pacing import pace
from ssmd.simulators.wsserver import FrameKind, SimServer, SimSession

WS_PATH = "/v2"
CHANNELS = ("book", "trade", "ticker")
DEFAULT_SYMBOLS = ("BTC/USD", "ETH/USD", "SOL/USD")
HEARTBEAT_S = 1.0
BOOK_LEVELS = 60  # per side of the simulated book; deeper subscriptions see all of it
QTY_PLACES = Decimal("0.00000001")
_START: dict[str, tuple[Decimal, Decimal]] = {  # mid price, tick
    "BTC/USD": (Decimal("45284.0"), Decimal("0.1")),
    "ETH/USD": (Decimal("2512.35"), Decimal("0.01")),
    "SOL/USD": (Decimal("98.412"), Decimal("0.001")),
}


@attrs.define
class SymbolState:
    symbol: str
    tick: Decimal
    bids: Side
    asks: Side
    last: Decimal
    next_trade_id: int
    volume: Decimal = Decimal("0")
    corrupt_next_checksum: bool = False
    lose_next_update: bool = False


@attrs.define
class KrakenSubscriptions:
    """What one connection is subscribed to: symbols per channel, the book's depth."""

    channels: dict[str, set[str]] = attrs.Factory(lambda: {c: set() for c in CHANNELS})
    depth: dict[str, int] = attrs.Factory(dict)

    def any(self) -> bool:
        return any(self.channels.values())


class KrakenExchange(SimServer):
    path = WS_PATH

    def __init__(
        self,
        symbols: Sequence[str] = DEFAULT_SYMBOLS,
        *,
        rate: float = 100.0,
        seed: int = 0,
        heartbeat_interval: float = HEARTBEAT_S,
    ) -> None:
        super().__init__()
        self.rng = random.Random(seed)
        self.rate = rate
        self.heartbeat_interval = heartbeat_interval
        self.paused = False
        self.connection_ids = iter(range(10_000_000_000_000, 10**15))
        self.subscriptions: dict[int, KrakenSubscriptions] = {}
        self.symbols: dict[str, SymbolState] = {}
        self.refusals: collections.Counter[tuple[str, str]] = collections.Counter()
        for n, symbol in enumerate(symbols):
            mid, tick = _START.get(symbol, (Decimal(100 + 50 * n), Decimal("0.01")))
            bids = {mid - tick * (i + 1): self._qty() for i in range(BOOK_LEVELS)}
            asks = {mid + tick * (i + 1): self._qty() for i in range(BOOK_LEVELS)}
            self.symbols[symbol] = SymbolState(
                symbol, tick, bids, asks, mid, self.rng.randint(1_000_000, 90_000_000)
            )

    def _qty(self) -> Decimal:
        return (Decimal(self.rng.randint(1, 400_000_000)) * QTY_PLACES).quantize(QTY_PLACES)

    # Fault switches.
    def break_checksum(self, symbol: str) -> None:
        self.symbols[symbol].corrupt_next_checksum = True

    def lose_book_update(self, symbol: str) -> None:
        self.symbols[symbol].lose_next_update = True

    def jump_trade_id(self, symbol: str, skipped: int) -> None:
        self.symbols[symbol].next_trade_id += skipped

    def refuse_subscribe(self, channel: str, symbol: str, times: int = 1) -> None:
        self.refusals[channel, symbol] += times

    # The connection.
    async def serve_session(self, session: SimSession) -> None:
        subs = KrakenSubscriptions()
        self.subscriptions[session.index] = subs
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.pump)
                status = {
                    "channel": "status",
                    "type": "update",
                    "data": [
                        {
                            "version": "2.0.10",
                            "system": "online",
                            "api_version": "v2",
                            "connection_id": next(self.connection_ids),
                        }
                    ],
                }
                session.post(encode(status))
                nursery.start_soon(self._heartbeat, session, subs)
                while True:
                    message = await session.ws.get_message()
                    session.received.append(message)
                    self.touch()
                    self._answer(session, subs, message)
        finally:
            self.subscriptions.pop(session.index, None)

    async def _heartbeat(self, session: SimSession, subs: KrakenSubscriptions) -> None:
        while True:
            await trio.sleep_until(session.last_sent + self.heartbeat_interval)
            if subs.any() and trio.current_time() >= session.last_sent + self.heartbeat_interval:
                session.post(b'{"channel":"heartbeat"}', FrameKind.KEEPALIVE)
                session.last_sent = trio.current_time()  # queued; pump updates it again

    def _answer(self, session: SimSession, subs: KrakenSubscriptions, message: str | bytes) -> None:
        try:
            request = json.loads(message)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            error = {"error": "Malformed request", "success": False, "time_in": rfc3339()}
            session.post(encode({**error, "time_out": rfc3339()}), FrameKind.CONTROL)
            return
        method = request.get("method")
        req_id = request.get("req_id")
        if method == "ping":
            pong = {"method": "pong", "req_id": req_id, "time_in": rfc3339()}
            session.post(encode({**pong, "time_out": rfc3339()}), FrameKind.KEEPALIVE)
        elif method in ("subscribe", "unsubscribe"):
            params = request.get("params")
            self._subscription(
                session, subs, method, req_id, params if isinstance(params, dict) else {}
            )
        else:
            self._reply(session, str(method), req_id, error=f"Method not found: {method}")

    def _reply(
        self,
        session: SimSession,
        method: str,
        req_id: object,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        symbol: str | None = None,
    ) -> None:
        reply: dict[str, Any] = {"method": method}
        if req_id is not None:
            reply["req_id"] = req_id
        if error is None:
            reply |= {"success": True, "result": result or {}}
        else:
            reply |= {"success": False, "error": error}
            if symbol is not None:  # Kraken names the refused symbol of a multi-symbol request
                reply["symbol"] = symbol
        now = rfc3339()
        session.post(encode({**reply, "time_in": now, "time_out": now}), FrameKind.CONTROL)

    def _subscription(
        self,
        session: SimSession,
        subs: KrakenSubscriptions,
        method: str,
        req_id: object,
        params: dict[str, Any],
    ) -> None:
        channel = params.get("channel")
        symbols = params.get("symbol")
        if channel not in CHANNELS:
            self._reply(session, method, req_id, error=f"Channel {channel} not found")
            return
        if not isinstance(symbols, list) or not symbols:
            self._reply(session, method, req_id, error="Symbol required")
            return
        depth = params.get("depth", 10)
        if channel == "book" and depth not in DEPTHS:
            self._reply(session, method, req_id, error=f"Unsupported depth {depth}")
            return
        subscribed = subs.channels[channel]
        for symbol in symbols:
            if not isinstance(symbol, str) or symbol not in self.symbols:
                name = symbol if isinstance(symbol, str) else None
                self._reply(
                    session, method, req_id, error="Currency pair not supported", symbol=name
                )
                continue
            result: dict[str, Any] = {"channel": channel, "symbol": symbol}
            if channel == "book":
                result |= {"depth": depth, "snapshot": True}
            if method == "unsubscribe":
                if symbol not in subscribed:
                    self._reply(
                        session, method, req_id, error="Subscription Not Found", symbol=symbol
                    )
                    continue
                subscribed.discard(symbol)
                self._reply(session, method, req_id, result=result)
                continue
            if symbol in subscribed:
                self._reply(session, method, req_id, error="Already subscribed", symbol=symbol)
                continue
            if self.refusals[channel, symbol] > 0:
                self.refusals[channel, symbol] -= 1
                self._reply(
                    session, method, req_id, error="Currency pair not supported", symbol=symbol
                )
                continue
            subscribed.add(symbol)
            self._reply(session, method, req_id, result=result)
            if channel == "book":
                subs.depth[symbol] = depth
                session.post(encode(self._book_snapshot(self.symbols[symbol], depth)))
            elif channel == "ticker" and params.get("snapshot", True):
                session.post(encode(self._ticker(self.symbols[symbol], "snapshot")))
        self.touch()

    def _book_snapshot(self, state: SymbolState, depth: int) -> dict[str, Any]:
        bids = top(state.bids, depth, True)
        asks = top(state.asks, depth, False)
        data = {
            "symbol": state.symbol,
            "bids": levels_json(bids),
            "asks": levels_json(asks),
            "checksum": book_checksum(asks, bids),
        }
        return {"channel": "book", "type": "snapshot", "data": [data]}

    def _ticker(self, state: SymbolState, kind: str) -> dict[str, Any]:
        (bid, bid_qty), (ask, ask_qty) = top(state.bids, 1, True)[0], top(state.asks, 1, False)[0]
        data = {
            "symbol": state.symbol,
            "bid": bid,
            "bid_qty": bid_qty,
            "ask": ask,
            "ask_qty": ask_qty,
            "last": state.last,
            "volume": state.volume,
            "vwap": state.last,
            "low": state.last - state.tick * 50,
            "high": state.last + state.tick * 50,
            "change": state.tick * 3,
            "change_pct": Decimal("0.01"),
            "timestamp": rfc3339(),
        }
        return {"channel": "ticker", "type": kind, "data": [data]}

    # The market.
    async def stream(self) -> None:
        """Move the books and trade at `rate` events per second, forever."""
        await pace(
            lambda: self.rate, lambda: not self.paused and bool(self.subscriptions), self.step
        )

    def step(self) -> None:
        """One market event: a book change (most often) or a trade, on a random symbol."""
        state = self.symbols[self.rng.choice(list(self.symbols))]
        if self.rng.random() < 0.8:
            self.change_book(state)
        else:
            self.trade(state)

    def _subscribers(self, channel: str, symbol: str) -> list[tuple[SimSession, int]]:
        found = []
        for session in self.sessions:
            subs = self.subscriptions.get(session.index)
            if subs is not None and symbol in subs.channels[channel]:
                found.append((session, subs.depth.get(symbol, 10)))
        return found

    def change_book(self, state: SymbolState) -> int:
        """Move the symbol's book once; how many update frames went out for it."""
        subscribers = self._subscribers("book", state.symbol)
        depths = {depth for _, depth in subscribers}
        before = {d: (top(state.bids, d, True), top(state.asks, d, False)) for d in depths}
        self._mutate(state)
        lost = state.lose_next_update and bool(subscribers)
        if lost:
            state.lose_next_update = False
        frames: dict[int, bytes] = {}
        for depth in depths:
            bids = top(state.bids, depth, True)
            asks = top(state.asks, depth, False)
            bid_changes = changed_levels(before[depth][0], bids, state.bids)
            ask_changes = changed_levels(before[depth][1], asks, state.asks)
            if not bid_changes and not ask_changes:
                continue  # nothing this depth can see
            checksum = book_checksum(asks, bids)
            if state.corrupt_next_checksum and not lost:
                checksum = (checksum + 1) % 2**32
            data = {
                "symbol": state.symbol,
                "bids": levels_json(bid_changes),
                "asks": levels_json(ask_changes),
                "checksum": checksum,
                "timestamp": rfc3339(),
            }
            frames[depth] = encode({"channel": "book", "type": "update", "data": [data]})
        if lost or not frames:
            return 0
        state.corrupt_next_checksum = False
        posted = 0
        for session, depth in subscribers:
            if depth in frames:
                session.post(frames[depth])
                posted += 1
        return posted

    def _mutate(self, state: SymbolState) -> None:
        rng = self.rng
        side, best_is_highest = rng.choice(((state.bids, True), (state.asks, False)))
        prices = sorted(side, reverse=best_is_highest)
        action = rng.random()
        if action < 0.6:
            price = prices[min(len(prices) - 1, int(rng.expovariate(0.25)))]
            side[price] = self._qty()
        elif action < 0.8 and len(prices) > 2:
            del side[prices[min(len(prices) - 1, int(rng.expovariate(0.3)))]]
            # Keep the book deep: a new level at the far end.
            step = -state.tick if best_is_highest else state.tick
            side[prices[-1] + step * rng.randint(1, 3)] = self._qty()
        else:
            # A new level between the best and a few ticks behind it (or improving it
            # when the spread allows).
            other = state.asks if best_is_highest else state.bids
            best_other = min(other) if best_is_highest else max(other)
            step = -state.tick if best_is_highest else state.tick
            price = prices[0] + step * rng.randint(-1, 4)
            crossing = price >= best_other if best_is_highest else price <= best_other
            if not crossing:
                side[price] = self._qty()
        while len(side) > BOOK_LEVELS * 2:
            del side[sorted(side, reverse=best_is_highest)[-1]]

    def trade(self, state: SymbolState) -> None:
        rng = self.rng
        count = rng.choice((1, 1, 1, 2, 3))
        trades = []
        for _ in range(count):
            buy = rng.random() < 0.5
            price = min(state.asks) if buy else max(state.bids)
            qty = (self._qty() / 100).quantize(QTY_PLACES)
            state.last = price
            state.volume += qty
            trades.append(
                {
                    "symbol": state.symbol,
                    "side": "buy" if buy else "sell",
                    "price": price,
                    "qty": qty,
                    "ord_type": rng.choice(("limit", "market")),
                    "trade_id": state.next_trade_id,
                    "timestamp": rfc3339(),
                }
            )
            state.next_trade_id += 1
        frame = encode({"channel": "trade", "type": "update", "data": trades})
        for session, _ in self._subscribers("trade", state.symbol):
            session.post(frame)
        ticker = encode(self._ticker(state, "update"))
        for session, _ in self._subscribers("ticker", state.symbol):
            session.post(ticker)
