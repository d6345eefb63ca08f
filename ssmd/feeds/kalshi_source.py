"""Kalshi's discovery source (`ssmd.feeds.discovery.DiscoverySource`): REST walks of open
markets and events, the series selection, `market_lifecycle_v2` events. The rules
themselves live in `kalshi_discovery`; this puts them behind the venue-neutral interface.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ssmd.config import KALSHI_DEMO_URL, KALSHI_PROD_URL
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds.discovery import LiveChange, Walk
from ssmd.feeds.kalshi_discovery import (
    EVENTS_PAGE_LIMIT,
    EVENTS_PATH,
    MARKETS_PATH,
    PAGE_LIMIT,
    VOLATILE_MARKET_FIELDS,
    Selection,
    lifecycle_change,
)

if TYPE_CHECKING:
    from ssmd.config import ConnectorConfig

__all__ = [
    "ALL_MARKET_CHANNELS",
    "LIFECYCLE_CHANNEL",
    "KalshiSource",
    "channel_split",
    "discovery_source",
    "kalshi_rest_url",
]

LIFECYCLE_CHANNEL = "market_lifecycle_v2"
# Channels Kalshi serves for all markets with one subscription (no market list).
ALL_MARKET_CHANNELS = frozenset({"ticker", "ticker_v2", "trade", LIFECYCLE_CHANNEL})

# Tickers per `GET /markets?tickers=` lookup (a ticker is ~30 characters: a 3 KB URL).
CONFIRM_BATCH = 100

KALSHI_REST_URLS = {
    KALSHI_PROD_URL: "https://api.elections.kalshi.com/trade-api/v2",
    KALSHI_DEMO_URL: "https://demo-api.kalshi.co/trade-api/v2",
}


def kalshi_rest_url(rest_url: str | None, ws_url: str) -> str:
    """`rest_url`, else the REST base beside the WebSocket URL."""
    if rest_url:
        return rest_url
    if ws_url in KALSHI_REST_URLS:
        return KALSHI_REST_URLS[ws_url]
    http = "https" + ws_url[3:] if ws_url.startswith("wss") else "http" + ws_url[2:]
    return http.replace("/ws/v2", "/v2")


def channel_split(channels: Sequence[str], selection: Selection) -> tuple[list[str], list[str]]:
    """(all-markets channels, channels that follow the selected markets).

    `market_lifecycle_v2` is always all-markets and always there (it is how new markets
    are learned). With every series selected, `ticker` and `trade` keep their
    all-markets form; with series named, every market-scoped channel follows them.
    """
    wanted = list(dict.fromkeys([*channels, LIFECYCLE_CHANNEL]))
    if selection.everything:
        whole = [c for c in wanted if c in ALL_MARKET_CHANNELS]
    else:
        whole = [LIFECYCLE_CHANNEL]
    return whole, [c for c in wanted if c not in whole]


class KalshiSource:
    volatile_fields = VOLATILE_MARKET_FIELDS
    key_is_unit = True
    backfills_trades = True

    def __init__(self, selection: Selection, rest_url: str | None = None) -> None:
        self.selection = selection
        self._rest_url = rest_url

    def rest_url(self, ws_url: str) -> str:
        return kalshi_rest_url(self._rest_url, ws_url)

    def channels(self, configured: Sequence[str]) -> tuple[list[str], list[str]]:
        return channel_split(configured, self.selection)

    def initial_plans(self, whole: Sequence[str]) -> list[SubscriptionPlan]:
        return [SubscriptionPlan(channel, ()) for channel in whole]

    def layout_limits(self, per_subscription: int, per_connection: int) -> tuple[int, int]:
        return per_subscription, per_connection

    def market_walks(self) -> list[Walk]:
        return [
            Walk(MARKETS_PATH, query, "markets", PAGE_LIMIT, "market", "ticker")
            for query in self.selection.market_walks()
        ]

    def catalogue_walks(self) -> list[Walk]:
        return [
            Walk(EVENTS_PATH, query, "events", EVENTS_PAGE_LIMIT, "event", "event_ticker")
            for query in self.selection.event_walks()
        ]

    def static_walks(self, markets: Sequence[str]) -> list[Walk]:
        return []  # a ticker is its own subscription unit

    def confirm_walks(self, markets: Sequence[str]) -> list[Walk]:
        return [
            Walk(
                MARKETS_PATH,
                {"tickers": ",".join(markets[i : i + CONFIRM_BATCH])},
                "markets",
                PAGE_LIMIT,
                "market",
                "ticker",
            )
            for i in range(0, len(markets), CONFIRM_BATCH)
        ]

    def market_key(self, market: Mapping[str, Any]) -> str | None:
        ticker = market.get("ticker")
        return ticker if isinstance(ticker, str) and ticker else None

    def units(self, market: Mapping[str, Any]) -> tuple[str, ...]:
        key = self.market_key(market)
        return (key,) if key else ()

    def wants(self, market: Mapping[str, Any]) -> bool:
        return self.selection.wants(market)

    def catalogued(self, market: Mapping[str, Any]) -> bool:
        return True  # every market the walks list (they list the selected series only)

    def live_change(self, event: Mapping[str, Any]) -> LiveChange | None:
        change = lifecycle_change(event, self.selection)
        if change is None:
            return None
        return LiveChange(change.market, change.add, change.reason)


def discovery_source(config: ConnectorConfig) -> KalshiSource:
    assert config.discovery is not None
    return KalshiSource(Selection(frozenset(config.discovery.series)), config.rest_url)
