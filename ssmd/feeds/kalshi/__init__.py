"""Kalshi: signed handshake, sid/seq subscriptions, routing by `market_ticker`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ssmd.config import KALSHI_DEMO_URL, KALSHI_PROD_URL
from ssmd.connector.shards import SubscriptionPlan, plan_connections
from ssmd.feeds.base import SessionContext, Venue, VenueLimits
from ssmd.feeds.kalshi.seq import SNAPSHOT_CHANNELS
from ssmd.feeds.kalshi.session import KalshiSession
from ssmd.supervisor import StartupRefused

if TYPE_CHECKING:
    from ssmd.config import ConnectorConfig
    from ssmd.connector.auth import Credentials

__all__ = ["NEEDS_MARKETS", "SNAPSHOT_CHANNELS", "VENUE", "KalshiSession", "KalshiVenue"]

log = logging.getLogger("ssmd.connector")

# Channels Kalshi serves only for listed market tickers.
NEEDS_MARKETS = frozenset({"orderbook_delta"})


class KalshiVenue:
    kind = "kalshi"
    needs_credentials = True
    limits = VenueLimits(markets_per_subscription=200, markets_per_connection=2000)

    def default_url(self, environ: Mapping[str, str]) -> str:
        if environ.get("KALSHI_USE_DEMO", "").strip().lower() in ("1", "true", "yes"):
            return KALSHI_DEMO_URL
        return KALSHI_PROD_URL

    def handshake_headers(self, url: str, credentials: Credentials | None) -> list[tuple[str, str]]:
        if credentials is None:
            raise StartupRefused("the Kalshi connector needs KALSHI_API_KEY and a private key")
        return credentials.handshake_headers(url)

    async def subscription_markets(self, config: ConnectorConfig) -> list[str]:
        return list(config.markets)

    def plan(self, config: ConnectorConfig, markets: Sequence[str]) -> list[list[SubscriptionPlan]]:
        channels = list(config.channels)
        if not markets:
            for channel in sorted(NEEDS_MARKETS & set(channels)):
                log.warning(
                    "connector.channels has %r but connector.markets is empty: Kalshi serves "
                    "that channel only for listed markets, so it is not subscribed",
                    channel,
                )
            channels = [c for c in channels if c not in NEEDS_MARKETS]
        if not channels:
            raise StartupRefused(
                "no channel can be subscribed: list connector.markets for "
                + ", ".join(sorted(NEEDS_MARKETS & set(config.channels)))
            )
        return plan_connections(
            channels,
            list(markets),
            config.markets_per_subscription or self.limits.markets_per_subscription,
            config.markets_per_connection or self.limits.markets_per_connection,
        )

    def session(self, context: SessionContext, plans: Sequence[SubscriptionPlan]) -> KalshiSession:
        return KalshiSession(context, plans)


VENUE: Venue = KalshiVenue()
