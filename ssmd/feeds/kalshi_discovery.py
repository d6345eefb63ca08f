"""Kalshi market discovery as logic without I/O: what to ask REST, which markets are
wanted, what a lifecycle event changes, and which trades a backfill still lacks.

See `../shared/reference/kalshi-ws.md`: REST market statuses are named differently from
the `status` filter (`open` lists markets whose status is `active`), `mve_filter=exclude`
keeps the ~2,000 combo markets created per hour out, and no WebSocket event marks a
market closing at its close time.
"""

from __future__ import annotations

import collections
import datetime
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

MARKETS_PATH = "/markets"
EVENTS_PATH = "/events"
TRADES_PATH = "/markets/trades"
PAGE_LIMIT = 1000
EVENTS_PAGE_LIMIT = 200
TRADES_PAGE_LIMIT = 1000
NS = 1_000_000_000

# REST market `status` values that mean trading is open (2026 name, and the filter's).
OPEN_STATUSES = frozenset({"active", "open"})

ADDING_EVENTS = frozenset({"created", "activated"})
REMOVING_EVENTS = frozenset({"determined", "settled", "deactivated"})

# Market fields that move with trading, not with what the market is: left out when
# deciding whether a catalogue record changed (both the retired and the 2026 forms).
VOLATILE_MARKET_FIELDS = frozenset(
    {
        "yes_bid",
        "yes_ask",
        "no_bid",
        "no_ask",
        "last_price",
        "previous_yes_bid",
        "previous_yes_ask",
        "previous_price",
        "volume",
        "volume_24h",
        "open_interest",
        "liquidity",
        "notional_value",
        "yes_bid_dollars",
        "yes_ask_dollars",
        "no_bid_dollars",
        "no_ask_dollars",
        "last_price_dollars",
        "previous_yes_bid_dollars",
        "previous_yes_ask_dollars",
        "previous_price_dollars",
        "liquidity_dollars",
        "notional_value_dollars",
        "volume_fp",
        "volume_24h_fp",
        "open_interest_fp",
        "yes_bid_size_fp",
        "yes_ask_size_fp",
        "dollar_volume",
        "dollar_open_interest",
        "updated_time",
    }
)


def series_of(event_or_market_ticker: str) -> str:
    """`KXBTCD` from `KXBTCD-26MAR1213` or `KXBTCD-26MAR1213-T69499.99`."""
    return event_or_market_ticker.split("-", 1)[0]


@attrs.frozen
class Selection:
    """The markets a connector follows: every open one, or those of named series."""

    series: frozenset[str] = frozenset()

    @property
    def everything(self) -> bool:
        return not self.series

    def matches(self, ticker: str, event_ticker: str | None = None) -> bool:
        if self.everything:
            return True
        return series_of(event_ticker or ticker) in self.series

    def wants(self, market: Mapping[str, Any]) -> bool:
        """Whether a REST market object is open and selected."""
        ticker = market.get("ticker")
        if not isinstance(ticker, str) or not ticker:
            return False
        if market.get("status") not in OPEN_STATUSES:
            return False
        event = market.get("event_ticker")
        return self.matches(ticker, event if isinstance(event, str) else None)

    def market_walks(self) -> list[dict[str, str]]:
        """The `GET /markets` query of each full walk (one per series when named)."""
        base = {"status": "open", "mve_filter": "exclude"}
        if self.everything:
            return [base]
        return [{**base, "series_ticker": series} for series in sorted(self.series)]

    def event_walks(self) -> list[dict[str, str]]:
        base = {"status": "open"}
        if self.everything:
            return [base]
        return [{**base, "series_ticker": series} for series in sorted(self.series)]


@attrs.frozen
class LifecycleChange:
    market: str
    add: bool
    reason: str  # `lifecycle:<event_type>`


def lifecycle_change(envelope: Mapping[str, Any], selection: Selection) -> LifecycleChange | None:
    """What a `market_lifecycle_v2` message changes in the selected set, if anything."""
    if envelope.get("type") != "market_lifecycle_v2":
        return None
    body = envelope.get("msg")
    if not isinstance(body, dict):
        return None
    event_type = body.get("event_type")
    ticker = body.get("market_ticker")
    if not isinstance(event_type, str) or not isinstance(ticker, str) or not ticker:
        return None
    metadata = body.get("additional_metadata")
    event = metadata.get("event_ticker") if isinstance(metadata, dict) else None
    if not selection.matches(ticker, event if isinstance(event, str) else None):
        return None
    if event_type in ADDING_EVENTS:
        if event_type == "activated" and body.get("is_deactivated") is True:
            return LifecycleChange(ticker, False, "lifecycle:deactivated")
        return LifecycleChange(ticker, True, f"lifecycle:{event_type}")
    if event_type in REMOVING_EVENTS:
        if event_type == "deactivated" and body.get("is_deactivated") is False:
            return LifecycleChange(ticker, True, "lifecycle:activated")
        return LifecycleChange(ticker, False, f"lifecycle:{event_type}")
    return None


# Kalshi stamps trades in whole seconds and its clock is not ours: every window edge
# taken from a receive time is widened by this much (NTP keeps skew well under it).
BACKFILL_MARGIN_NS = 2 * NS


@attrs.frozen
class BackfillWindow:
    """Trades to ask REST for: `[min_ts, max_ts]` in Unix seconds, for some markets (all
    markets when `markets` is empty, as for an all-markets trade subscription). `cause`
    is what lost them: `disconnect`, `gap` (a `seq` jump) or `error:25`."""

    min_ts: int
    max_ts: int
    markets: tuple[str, ...] = ()
    cause: str = ""

    def queries(self) -> list[dict[str, str | int]]:
        base: dict[str, str | int] = {"min_ts": self.min_ts, "max_ts": self.max_ts}
        if not self.markets:
            return [base]
        return [{**base, "ticker": market} for market in self.markets]

    def settled_ns(self) -> int:
        """When the live tape has passed the window: a trade stamped `max_ts` or earlier
        that still comes live has come by then (it was received within the margin)."""
        return (self.max_ts + 1) * NS + BACKFILL_MARGIN_NS


def backfill_window(
    since_ns: int, resumed_ns: int, markets: Iterable[str] = (), cause: str = ""
) -> BackfillWindow:
    """The window a loss left open on one trade subscription: from `since_ns` (the last
    trade it received, or its start when it received none) to `resumed_ns` (the resubscribe
    reply, or the frame that showed a gap), each widened by the margin, in whole seconds."""
    return BackfillWindow(
        (since_ns - BACKFILL_MARGIN_NS) // NS,
        (resumed_ns + BACKFILL_MARGIN_NS) // NS,
        tuple(markets),
        cause,
    )


def trade_ts(trade: Mapping[str, Any]) -> int | None:
    """A REST trade's exchange time in Unix seconds (`ts`, else `created_time`)."""
    ts = trade.get("ts")
    if isinstance(ts, int) and not isinstance(ts, bool):
        return ts
    created = trade.get("created_time")
    if isinstance(created, str):
        try:
            return int(datetime.datetime.fromisoformat(created).timestamp())
        except ValueError:
            return None
    return None


class TradeLedger:
    """The trade ids received live (and those backfilled), recent ones only, so a backfill
    publishes exactly the trades the recorder missed. Bounded: it forgets the oldest ids
    past `capacity`, and `horizon_ns` says from when on it still knows every one.

    Shared by every connection of a feed, it also keeps each connection's tape clock, so
    a backfill can wait for the live tape to pass the end of its window before it
    deduplicates: the newest exchange time its frames carried (`exchange_ns`; a reader
    running behind receives a trade long after it was done), and the receive time of
    its last frame (`tape_ns`) less how far behind the last stamped frame was (`lag_ns`)."""

    def __init__(self, capacity: int = 200_000) -> None:
        self._capacity = capacity
        # trade_id -> (time noted, ns: receive time or exchange time; backfilled)
        self._ids: collections.OrderedDict[str, tuple[int, bool]] = collections.OrderedDict()
        self.horizon_ns = 0
        self.doubled = 0  # live trades that a backfill had already published
        # Live trades without a `trade_id`: not deduplicable (a backfill would double them).
        self.unnamed = 0
        self.tape_ns: dict[int, int] = {}
        self.exchange_ns: dict[int, int] = {}
        self.lag_ns: dict[int, int] = {}  # receive time minus exchange time, last seen
        # conn -> (tape time, what to call when the connection's tape passes it)
        self.waiting: dict[int, tuple[int, Callable[[], None]]] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, trade_id: object) -> bool:
        return trade_id in self._ids

    def heard(self, conn: int, recv_ns: int, exchange_ns: int | None = None) -> None:
        """A frame came on `conn` (any frame: the tape moved), stamped `exchange_ns` by
        the exchange when it carries a time."""
        self.tape_ns[conn] = recv_ns
        if exchange_ns is not None:
            self.lag_ns[conn] = max(0, recv_ns - exchange_ns)
            if exchange_ns > self.exchange_ns.get(conn, 0):
                self.exchange_ns[conn] = exchange_ns
        waiter = self.waiting.get(conn)
        if waiter is not None and self.passed(conn, waiter[0]):
            del self.waiting[conn]
            waiter[1]()

    def passed(self, conn: int, at_ns: int) -> bool:
        """Whether `conn`'s tape has passed `at_ns`: a frame stamped by the exchange past
        it, or one received past it plus how far behind the last stamped frame was (the
        frames of a quiet connection, or of a channel without stamps)."""
        if self.exchange_ns.get(conn, 0) >= at_ns:
            return True
        return self.tape_ns.get(conn, 0) >= at_ns + self.lag_ns.get(conn, 0)

    def seen(self, trade_id: str, at_ns: int = 0) -> bool:
        """Note a trade id received live; True when it was already known (a duplicate:
        counted in `doubled` when a backfill had published it)."""
        known = self._ids.get(trade_id)
        if known is not None:
            if known[1]:
                self.doubled += 1
            return True
        self._note(trade_id, at_ns, backfilled=False)
        return False

    def _note(self, trade_id: str, at_ns: int, *, backfilled: bool) -> None:
        self._ids[trade_id] = (at_ns, backfilled)
        if len(self._ids) > self._capacity:
            _, (forgotten_ns, _) = self._ids.popitem(last=False)
            self.horizon_ns = max(self.horizon_ns, forgotten_ns + 1)

    def first_ts(self) -> int:
        """The earliest second a backfill may ask for: a trade stamped earlier may have
        been received before the horizon and forgotten, so it could not be deduplicated."""
        if not self.horizon_ns:
            return 0
        return -(-(self.horizon_ns + BACKFILL_MARGIN_NS) // NS)

    def missing(self, trades: Iterable[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], int]:
        """The REST trades not received live (nor in an earlier backfill), in the order
        given, and how many had no `trade_id` (left out: they cannot be deduplicated).
        All are checked before any is noted, so noting cannot evict an id still to be
        checked; then each is noted, so an overlapping window adds nothing."""
        fresh: dict[str, Mapping[str, Any]] = {}
        skipped = 0
        for trade in trades:
            trade_id = trade.get("trade_id")
            if not isinstance(trade_id, str) or not trade_id:
                skipped += 1
            elif trade_id not in self._ids:
                fresh.setdefault(trade_id, trade)
        for trade_id, trade in fresh.items():
            self._note(trade_id, (trade_ts(trade) or 0) * NS, backfilled=True)
        return list(fresh.values()), skipped
