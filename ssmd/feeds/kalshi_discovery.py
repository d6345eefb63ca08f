"""Kalshi market discovery as logic without I/O: what to ask REST, which markets are
wanted, what a lifecycle event changes, and which trades a backfill still lacks.

See `../shared/reference/kalshi-ws.md`: REST market statuses are named differently from
the `status` filter (`open` lists markets whose status is `active`), `mve_filter=exclude`
keeps the ~2,000 combo markets created per hour out, and no WebSocket event marks a
market closing at its close time.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

MARKETS_PATH = "/markets"
EVENTS_PATH = "/events"
TRADES_PATH = "/markets/trades"
PAGE_LIMIT = 1000
EVENTS_PAGE_LIMIT = 200
TRADES_PAGE_LIMIT = 1000

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


@attrs.frozen
class BackfillWindow:
    """Trades to ask REST for: `[min_ts, max_ts]` in Unix seconds, for some markets (all
    markets when `markets` is empty, as for an all-markets trade subscription)."""

    min_ts: int
    max_ts: int
    markets: tuple[str, ...] = ()

    def queries(self) -> list[dict[str, str | int]]:
        base: dict[str, str | int] = {"min_ts": self.min_ts, "max_ts": self.max_ts}
        if not self.markets:
            return [base]
        return [{**base, "ticker": market} for market in self.markets]


def backfill_window(
    last_trade_ns: int | None, lost_ns: int, resumed_ns: int, markets: Iterable[str] = ()
) -> BackfillWindow:
    """The window a loss left open: from the last trade received before it (or the loss
    itself, a second early) to a second after receiving resumed; whole seconds, widened,
    since REST filters by the exchange's second-resolution timestamps."""
    start_ns = min(lost_ns, last_trade_ns) if last_trade_ns is not None else lost_ns
    return BackfillWindow(
        start_ns // 1_000_000_000 - 1, resumed_ns // 1_000_000_000 + 1, tuple(markets)
    )


class TradeLedger:
    """The trade ids received live, recent ones only, so a backfill publishes exactly the
    trades the recorder missed. Bounded: it forgets the oldest ids past `capacity`."""

    def __init__(self, capacity: int = 200_000) -> None:
        self._capacity = capacity
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, trade_id: object) -> bool:
        return trade_id in self._ids

    def seen(self, trade_id: str) -> bool:
        """Note a trade id; True when it was already known (a duplicate)."""
        if trade_id in self._ids:
            return True
        self._ids[trade_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return False

    def missing(self, trades: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The REST trades not received live (nor in an earlier backfill), in the order
        given, each noted so a second backfill of an overlapping window adds nothing."""
        fresh = []
        for trade in trades:
            trade_id = trade.get("trade_id")
            if isinstance(trade_id, str) and trade_id and not self.seen(trade_id):
                fresh.append(trade)
        return fresh
