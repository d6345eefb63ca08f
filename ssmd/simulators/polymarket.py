"""A simulated Polymarket CLOB market channel and Gamma API, per polymarket-ws.md.

The WebSocket (`/ws/market`) takes the initial `{"assets_ids": [...], "type": "market",
"custom_feature_enabled": ...}` and later `{"assets_ids": [...], "operation":
"subscribe"|"unsubscribe"}`, with no acknowledgement: a `book` for each new known asset is
the only answer (`initial_dump`, default true); unknown token ids are ignored silently.
Text `PING` gets text `PONG`. Markets move at `rate` events per second: `price_change`
(both tokens of a market, `size` the new total), `last_trade_price` with a fresh `book`,
`best_bid_ask` (custom feature), and rarely `tick_size_change`; `add_market()` and
`resolve_market()` send `new_market` and `market_resolved` (custom feature). A frame is one
event or, often, a JSON array of several, written with varying whitespace so a client must
keep each element's exact bytes. Books list both sides worst to best, as live frames do.

`gamma` serves the same markets over HTTP (see gamma.py): `clobTokenIds` is a string
holding a JSON array. Faults: per connection `drop()`, `go_silent()`, `send_garbage(k)`;
`withhold_books` (token ids subscribed but never given a book);
`ping_timeout` closes a connection that stopped sending `PING`. `sent` records every frame.

Markets belong to events of three (`sim-event-{n // 3}`, the Gamma `events[].slug` and the
`new_market`'s `event_message.slug`). With `churn_every`, the exchange lists a new market
that often while it runs and, once more than the initial count are open, resolves the
oldest open one (`opened` and `resolved` list their condition ids).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from typing import Any

import trio

from ssmd.simulators.gamma import GammaServer
from ssmd.simulators.pacing import pace
from ssmd.simulators.polymarket_market import SimMarket, price_text
from ssmd.simulators.wsserver import FrameKind, SimServer, SimSession

WS_PATH = "/ws/market"
_QUESTIONS = (
    "Will Bitcoin reach $150,000 by December 31?",
    "Fed decision in March: 25 bps cut?",
    "Will it rain in NYC tomorrow?",
    "Lakers vs. Celtics: Lakers win?",
    "Will the S&P 500 close above 6,000 on Friday?",
    'Best AI model at the end of the month: "Claude"?',
)


class PolymarketExchange(SimServer):
    path = WS_PATH

    def __init__(
        self,
        markets: int = 8,
        *,
        rate: float = 100.0,
        seed: int = 0,
        ping_timeout: float | None = None,
        churn_every: float | None = None,
    ) -> None:
        super().__init__()
        self.churn_every = churn_every
        self.opened: list[str] = []
        self.resolved: list[str] = []
        self.rng = random.Random(seed)
        self.rate = rate
        self.ping_timeout = ping_timeout
        self.paused = False
        # Token ids whose subscription this exchange takes but never answers with a book.
        self.withhold_books: set[str] = set()
        self.markets: list[SimMarket] = []
        self.by_token: dict[str, SimMarket] = {}
        self.assets: dict[int, set[str]] = {}  # session index -> subscribed token ids
        self.custom: dict[int, bool] = {}
        self.gamma = GammaServer(lambda: [m.gamma() for m in self.markets])
        for _ in range(markets):
            self._new_market()
        self.keep_open = markets

    # Markets.
    def _token_id(self) -> str:
        return str(self.rng.randrange(10**76, 10**77))

    def _new_market(self) -> SimMarket:
        rng = self.rng
        n = len(self.markets)
        question = _QUESTIONS[n % len(_QUESTIONS)]
        market = SimMarket(
            gamma_id=str(500_000 + n),
            condition_id="0x" + f"{rng.getrandbits(256):064x}",
            question=question,
            slug=f"sim-market-{n}",
            tokens=(self._token_id(), self._token_id()),
            yes_cents=rng.randint(8, 92),
            event_slug=f"sim-event-{n // 3}",
        )
        for token, mid in zip(
            market.tokens, (market.yes_cents, 100 - market.yes_cents), strict=True
        ):
            market.books[token] = {
                "bids": {p: rng.randint(5, 5000) for p in range(max(1, mid - 6), mid)},
                "asks": {p: rng.randint(5, 5000) for p in range(mid + 1, min(100, mid + 7))},
            }
            self.by_token[token] = market
        self.markets.append(market)
        return market

    def add_market(self) -> SimMarket:
        """List a new market and announce it with `new_market` to custom-feature clients."""
        market = self._new_market()
        event = {
            "event_type": "new_market",
            "id": market.gamma_id,
            "market": market.condition_id,
            "condition_id": market.condition_id,
            "question": market.question,
            "slug": market.slug,
            "assets_ids": list(market.tokens),
            "clob_token_ids": list(market.tokens),
            "outcomes": ["Yes", "No"],
            "active": True,
            "order_price_min_tick_size": market.tick_size,
            "tags": ["simulated"],
            "event_message": {
                "id": market.event_slug,
                "slug": market.event_slug,
                "title": market.question,
            },
            "timestamp": self._now_ms(),
        }
        for session in self.sessions:
            if self.custom.get(session.index):
                session.post(self._encode([event]))
        self.opened.append(market.condition_id)
        return market

    def resolve_market(self, condition_id: str) -> None:
        """Close a market and send `market_resolved` to custom-feature clients."""
        market = next(m for m in self.markets if m.condition_id == condition_id)
        market.active, market.closed = False, True
        self.resolved.append(condition_id)
        event = {
            "event_type": "market_resolved",
            "id": market.gamma_id,
            "market": market.condition_id,
            "assets_ids": list(market.tokens),
            "winning_asset_id": market.tokens[0],
            "winning_outcome": "Yes",
            "tags": ["simulated"],
            "timestamp": self._now_ms(),
        }
        for session in self.sessions:
            if self.custom.get(session.index):
                session.post(self._encode([event]))

    # Frames.
    @staticmethod
    def _now_ms() -> str:
        return str(int(time.time() * 1000))

    def _encode(self, events: list[dict[str, Any]]) -> bytes:
        """One event as an object; several as an array with varying whitespace."""
        texts = [json.dumps(e, separators=(",", ":")) for e in events]
        if len(texts) == 1 and self.rng.random() < 0.7:
            return texts[0].encode()
        separator = self.rng.choice((",", ", ", ",\n  "))
        return ("[" + separator.join(texts) + "]").encode()

    def book_event(self, token: str) -> dict[str, Any]:
        market = self.by_token[token]
        book = market.books[token]
        levels = {
            side: [
                {"price": price_text(p), "size": str(s)}
                for p, s in sorted(book[side].items(), reverse=side == "asks")
            ]
            for side in ("bids", "asks")
        }
        return {
            "event_type": "book",
            "market": market.condition_id,
            "asset_id": token,
            "timestamp": self._now_ms(),
            "hash": f"{self.rng.getrandbits(160):040x}",
            "bids": levels["bids"],
            "asks": levels["asks"],
            "tick_size": market.tick_size,
            "last_trade_price": price_text(
                market.yes_cents if token == market.tokens[0] else 100 - market.yes_cents
            ),
        }

    # The connection.
    async def serve_session(self, session: SimSession) -> None:
        self.assets[session.index] = set()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.pump)
                last_ping = [trio.current_time()]
                if self.ping_timeout is not None:
                    nursery.start_soon(self._watch_pings, session, last_ping)
                while True:
                    message = await session.ws.get_message()
                    session.received.append(message)
                    self.touch()
                    if message == "PING":
                        last_ping[0] = trio.current_time()
                        session.post("PONG", FrameKind.KEEPALIVE)
                        continue
                    self._command(session, message)
        finally:
            self.assets.pop(session.index, None)
            self.custom.pop(session.index, None)

    async def _watch_pings(self, session: SimSession, last_ping: list[float]) -> None:
        assert self.ping_timeout is not None
        while True:
            await trio.sleep_until(last_ping[0] + self.ping_timeout)
            if trio.current_time() >= last_ping[0] + self.ping_timeout:
                await session.ws.aclose(code=1000, reason="no PING")
                return

    def _command(self, session: SimSession, message: str | bytes) -> None:
        try:
            command = json.loads(message)
        except ValueError:
            return
        if not isinstance(command, dict) or not isinstance(command.get("assets_ids"), list):
            return
        tokens = [t for t in command["assets_ids"] if isinstance(t, str)]
        subscribed = self.assets[session.index]
        operation = command.get("operation")
        if operation is not None:
            # The pessimistic reading of the docs: an update without the key turns the
            # custom features off.
            self.custom[session.index] = bool(command.get("custom_feature_enabled", False))
        if operation == "unsubscribe":
            subscribed.difference_update(tokens)
            return
        if operation is None:
            if str(command.get("type", "")).lower() != "market":
                return
            self.custom[session.index] = bool(command.get("custom_feature_enabled", False))
        elif operation != "subscribe":
            return
        new = [t for t in dict.fromkeys(tokens) if t not in subscribed]
        subscribed.update(tokens)
        books = [
            self.book_event(t) for t in new if t in self.by_token and t not in self.withhold_books
        ]
        if books and command.get("initial_dump", True):
            texts = [json.dumps(b, separators=(",", ":")) for b in books]
            session.post(("[" + ",".join(texts) + "]").encode())

    # The market.
    async def stream(self) -> None:
        """Send events at `rate` per second while anything is subscribed, forever."""
        await pace(
            lambda: self.rate, lambda: not self.paused and any(self.assets.values()), self.step
        )

    def step(self) -> int:
        """One burst of events on one subscribed market; how many frames went out."""
        wanted = set().union(*self.assets.values()) if self.assets else set()
        live = [m for m in self.markets if not m.closed and wanted & set(m.tokens)]
        if not live:
            return 0
        market = self.rng.choice(live)
        events = [self._event(market) for _ in range(self.rng.choice((1, 1, 1, 2, 3, 5)))]
        return self.broadcast(market, events)

    def broadcast(self, market: SimMarket, events: Sequence[dict[str, Any]]) -> int:
        """Send each connection the events it subscribed to (price changes filtered to
        its tokens), one frame per connection."""
        posted = 0
        for session in self.sessions:
            assets = self.assets.get(session.index, set())
            mine = []
            for event in events:
                if event["event_type"] == "price_change":
                    changes = [c for c in event["price_changes"] if c["asset_id"] in assets]
                    if changes:
                        mine.append({**event, "price_changes": changes})
                elif event.get("asset_id") in assets and self._sends(session, event):
                    mine.append(event)
            if mine:
                session.post(self._encode(mine))
                posted += 1
        return posted

    def _sends(self, session: SimSession, event: dict[str, Any]) -> bool:
        """Whether a one-token event goes to this (subscribed) connection."""
        if event["event_type"] == "best_bid_ask":
            return bool(self.custom.get(session.index))
        return not (event["event_type"] == "book" and event["asset_id"] in self.withhold_books)

    def _event(self, market: SimMarket) -> dict[str, Any]:
        rng = self.rng
        roll = rng.random()
        yes, no = market.tokens
        if roll < 0.6:
            return self._price_change(market)
        if roll < 0.8:
            token = rng.choice(market.tokens)
            mid = market.yes_cents if token == yes else 100 - market.yes_cents
            return {
                "event_type": "last_trade_price",
                "asset_id": token,
                "market": market.condition_id,
                "price": price_text(mid),
                "size": f"{rng.randint(1, 500_000) / 1000:.3f}",
                "fee_rate_bps": "0",
                "side": rng.choice(("BUY", "SELL")),
                "timestamp": self._now_ms(),
                "transaction_hash": "0x" + f"{rng.getrandbits(256):064x}",
            }
        if roll < 0.9:
            return self.book_event(rng.choice(market.tokens))
        if roll < 0.99:
            token = rng.choice(market.tokens)
            book = market.books[token]
            bid, ask = max(book["bids"], default=1), min(book["asks"], default=99)
            return {
                "event_type": "best_bid_ask",
                "market": market.condition_id,
                "asset_id": token,
                "best_bid": price_text(bid),
                "best_ask": price_text(ask),
                "spread": price_text(ask - bid),
                "timestamp": self._now_ms(),
            }
        old, market.tick_size = market.tick_size, "0.001" if market.tick_size == "0.01" else "0.01"
        return {
            "event_type": "tick_size_change",
            "asset_id": rng.choice((yes, no)),
            "market": market.condition_id,
            "old_tick_size": old,
            "new_tick_size": market.tick_size,
            "timestamp": self._now_ms(),
        }

    def _price_change(self, market: SimMarket) -> dict[str, Any]:
        """A change at one YES price and its mirror on NO (a bid at p is an ask at 1-p)."""
        rng = self.rng
        yes, no = market.tokens
        side = rng.choice(("bids", "asks"))
        book = market.books[yes][side]
        mid = market.yes_cents
        price = (
            rng.randint(max(1, mid - 6), mid - 1)
            if side == "bids"
            else rng.randint(mid + 1, min(99, mid + 6))
        )
        size = 0 if price in book and rng.random() < 0.2 else rng.randint(1, 5000)
        mirror_side = "asks" if side == "bids" else "bids"
        changes = []
        for token, book_side, level in ((yes, side, price), (no, mirror_side, 100 - price)):
            levels = market.books[token][book_side]
            if size:
                levels[level] = size
            else:
                levels.pop(level, None)
            token_book = market.books[token]
            changes.append(
                {
                    "asset_id": token,
                    "price": price_text(level),
                    "size": str(size),
                    "side": "BUY" if book_side == "bids" else "SELL",
                    "hash": f"{rng.getrandbits(160):040x}",
                    "best_bid": price_text(max(token_book["bids"], default=0)),
                    "best_ask": price_text(min(token_book["asks"], default=100)),
                }
            )
        return {
            "event_type": "price_change",
            "market": market.condition_id,
            "price_changes": changes,
            "timestamp": self._now_ms(),
        }

    def churn_once(self) -> None:
        """List a market; resolve the oldest open one once more than `keep_open` are."""
        self.add_market()
        open_markets = [m for m in self.markets if not m.closed]
        if len(open_markets) > self.keep_open:
            self.resolve_market(open_markets[0].condition_id)

    async def churn(self, every: float) -> None:
        while True:
            await trio.sleep(every)
            self.churn_once()

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """The WebSocket and the Gamma API together; `url` and `gamma.url` once started."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.gamma.run)
            await nursery.start(super().run)
            if self.churn_every is not None:
                nursery.start_soon(self.churn, self.churn_every)
            task_status.started()
