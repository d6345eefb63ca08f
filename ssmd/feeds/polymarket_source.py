"""Polymarket's discovery source (`ssmd.feeds.discovery.DiscoverySource`): Gamma keyset
walks of the active markets, the event-slug selection, `new_market`/`market_resolved`.

- **Walk**: `GET /markets/keyset?active=true&closed=false&limit=100`, following
  `next_cursor` (see polymarket-ws.md: the offset-paged `/markets` list is sunset). A page
  that repeats the cursor ends the walk.
- **A market** is its condition id (`conditionId`, the WS `market`): the planner places
  condition ids, the `ssmd.subscription` records name them, and the session subscribes
  the market's token ids (`clobTokenIds`, a JSON string or an array), both tokens of a
  market on one connection. Wanted: active, not closed, `enableOrderBook`, with token ids.
- **Selection** (`[connector.discovery] series`): empty, every such market; else the
  slugs of Polymarket *events* (a Gamma market's `events[].slug`; a `new_market`'s
  `event_message.slug`), e.g. `["fed-decision-in-march"]`: that event's markets only.
- **Live events** (the `custom_feature_enabled` messages): `new_market` adds a selected
  market with the token ids it names, `market_resolved` removes it. Each connection may
  deliver its own copy; the set changes are idempotent, and a market once resolved is
  never added again by a late copy of its `new_market`.
- **Limits**: `markets_per_connection` counts token ids, as without discovery (default
  200): the planner puts `markets_per_connection // 2` markets on a connection (CLOB
  markets are binary: two tokens each).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds.discovery import LiveChange, Walk

if TYPE_CHECKING:
    from ssmd.config import ConnectorConfig

__all__ = [
    "KEYSET_PATH",
    "PAGE_LIMIT",
    "TOKENS_PER_MARKET",
    "VOLATILE_MARKET_FIELDS",
    "PolymarketSource",
    "discovery_source",
    "event_slugs",
    "token_ids",
]

GAMMA_URL = "https://gamma-api.polymarket.com"
KEYSET_PATH = "/markets/keyset"
PAGE_LIMIT = 100  # the keyset endpoint's most
IDS_PER_REQUEST = 100  # `condition_ids` values per request
TOKENS_PER_MARKET = 2
RESOLVED_MEMORY = 100_000

# Gamma market (and embedded event) fields that move with trading, not with what the
# market is; dropped at any depth before deciding whether a market changed.
VOLATILE_MARKET_FIELDS = frozenset(
    {
        "outcomePrices",
        "bestBid",
        "bestAsk",
        "spread",
        "lastTradePrice",
        "oneHourPriceChange",
        "oneDayPriceChange",
        "oneWeekPriceChange",
        "oneMonthPriceChange",
        "oneYearPriceChange",
        "volume",
        "volumeNum",
        "volumeClob",
        "volumeAmm",
        "volume24hr",
        "volume24hrClob",
        "volume24hrAmm",
        "volume1wk",
        "volume1wkClob",
        "volume1wkAmm",
        "volume1mo",
        "volume1moClob",
        "volume1moAmm",
        "volume1yr",
        "volume1yrClob",
        "volume1yrAmm",
        "liquidity",
        "liquidityNum",
        "liquidityClob",
        "liquidityAmm",
        "competitive",
        "updatedAt",
        # Also inside the embedded `events[]` (dropped at any depth).
        "openInterest",
        "commentCount",
    }
)


def _strings(raw: object) -> list[str]:
    """A list of ids given as a JSON-encoded string or a real array."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else []
        except ValueError:
            return []
    if not isinstance(raw, list):
        return []
    return [str(item) for item in raw if isinstance(item, str | int) and str(item)]


def token_ids(market: Mapping[str, Any]) -> list[str]:
    """A Gamma market's CLOB token ids (`clobTokenIds`: a JSON string or an array)."""
    return _strings(market.get("clobTokenIds"))


def event_slugs(market: Mapping[str, Any]) -> frozenset[str]:
    """The slugs of the events a Gamma market belongs to (`events[].slug`)."""
    events = market.get("events")
    if not isinstance(events, list):
        return frozenset()
    return frozenset(
        e["slug"] for e in events if isinstance(e, dict) and isinstance(e.get("slug"), str)
    )


class PolymarketSource:
    volatile_fields = VOLATILE_MARKET_FIELDS
    key_is_unit = False
    backfills_trades = False

    def __init__(self, events: Sequence[str] = (), rest_url: str | None = None) -> None:
        self.events = frozenset(events)
        self._rest_url = rest_url
        # Condition ids resolved in this run, newest last: a late `new_market` copy
        # from another connection must not bring one back.
        self._resolved: collections.OrderedDict[str, None] = collections.OrderedDict()

    @property
    def everything(self) -> bool:
        return not self.events

    def rest_url(self, ws_url: str) -> str:
        return self._rest_url or GAMMA_URL

    def channels(self, configured: Sequence[str]) -> tuple[list[str], list[str]]:
        return [], ["market"]

    def initial_plans(self, whole: Sequence[str]) -> list[SubscriptionPlan]:
        # Connection 0 opens with no asset, custom features on: it hears `new_market`
        # while the first walk runs (or Gamma is down).
        return []

    def layout_limits(self, per_subscription: int, per_connection: int) -> tuple[int, int]:
        markets = max(1, per_connection // TOKENS_PER_MARKET)
        return markets, markets

    def market_walks(self) -> list[Walk]:
        query = {"active": "true", "closed": "false"}
        return [
            Walk(KEYSET_PATH, query, "markets", PAGE_LIMIT, "market", "conditionId", "next_cursor")
        ]

    def catalogue_walks(self) -> list[Walk]:
        return []

    def static_walks(self, markets: Sequence[str]) -> list[Walk]:
        wanted = list(dict.fromkeys(markets))
        return [
            Walk(
                KEYSET_PATH,
                {"condition_ids": wanted[start : start + IDS_PER_REQUEST]},
                "markets",
                PAGE_LIMIT,
                "market",
                "conditionId",
                "next_cursor",
            )
            for start in range(0, len(wanted), IDS_PER_REQUEST)
        ]

    def market_key(self, market: Mapping[str, Any]) -> str | None:
        key = market.get("conditionId")
        return key if isinstance(key, str) and key else None

    def units(self, market: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(token_ids(market)))

    def selected(self, market: Mapping[str, Any]) -> bool:
        return self.everything or bool(self.events & event_slugs(market))

    def wants(self, market: Mapping[str, Any]) -> bool:
        key = self.market_key(market)
        if key is None or key in self._resolved or not token_ids(market):
            return False
        if market.get("active") is False or market.get("closed") is True:
            return False
        if market.get("enableOrderBook") is not True:
            return False
        return self.selected(market)

    def catalogued(self, market: Mapping[str, Any]) -> bool:
        return self.selected(market)

    def live_change(self, event: Mapping[str, Any]) -> LiveChange | None:
        kind = event.get("event_type")
        key = event.get("market") or event.get("condition_id")
        if not isinstance(key, str) or not key:
            return None
        if kind == "market_resolved":
            self._resolved[key] = None
            self._resolved.move_to_end(key)
            if len(self._resolved) > RESOLVED_MEMORY:
                self._resolved.popitem(last=False)
            return LiveChange(key, False, "lifecycle:market_resolved")
        if kind != "new_market" or key in self._resolved or event.get("active") is False:
            return None
        units = tuple(
            dict.fromkeys(
                _strings(event.get("assets_ids")) or _strings(event.get("clob_token_ids"))
            )
        )
        if not units:
            return None
        if not self.everything:
            message = event.get("event_message")
            slug = message.get("slug") if isinstance(message, dict) else None
            if slug not in self.events:
                return None
        return LiveChange(key, True, "lifecycle:new_market", units)


def discovery_source(config: ConnectorConfig) -> PolymarketSource:
    assert config.discovery is not None
    return PolymarketSource(config.discovery.series, config.rest_url)
