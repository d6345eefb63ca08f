"""Start-up checks of one configured connector, done for every feed before any starts:
its venue, credentials (a probe handshake), discovery source, channels and static
markets; and the connection settings the venue allows.
"""

from __future__ import annotations

import logging

import attrs
import trio

from ssmd.config import ConnectorConfig
from ssmd.connector.auth import Credentials
from ssmd.connector.connection import ConnectionSettings, describe
from ssmd.connector.shards import SubscriptionPlan
from ssmd.connector.websocket import Connect, HandshakeRejected, connect_websocket
from ssmd.connector.wsclient import connect_fast
from ssmd.feeds import VenueUnavailable, load_venue
from ssmd.feeds.base import Venue
from ssmd.feeds.discovery import DiscoverySource, discovery_source
from ssmd.supervisor import StartupRefused, StartupUnavailable

log = logging.getLogger("ssmd.connector")

PROBE_TIMEOUT_S = 10.0


async def probe_credentials(
    connect: Connect, url: str, credentials: Credentials, timeout: float
) -> None:
    """One handshake at startup: rejected credentials refuse the start (exit 2).

    Any other failure (exchange unreachable) is only logged: the connections retry.
    """
    try:
        with trio.fail_after(timeout):
            async with connect(url, credentials.handshake_headers(url), timeout):
                pass
    except HandshakeRejected as exc:
        if exc.status_code in (401, 403):
            raise StartupRefused(
                f"Kalshi rejected the credentials (HTTP {exc.status_code}) for API key "
                f"{credentials.api_key_hint} at {url}; check KALSHI_API_KEY and the private key"
            ) from None
        log.warning("credential check at %s: %s; connecting anyway", url, exc)
    except Exception as exc:
        log.warning("cannot reach %s yet (%s); will keep retrying", url, describe(exc))


def ping_interval(cc: ConnectorConfig, venue: Venue | None = None) -> float:
    """`ping_interval`, at most the venue's `max_ping_interval` (Polymarket closes a
    connection that sent no `PING` for about 10 s, so 10 s pings are too late)."""
    configured = cc.ping_interval.seconds
    cap = getattr(venue, "max_ping_interval", None)
    if isinstance(cap, float | int) and configured > cap:
        log.info(
            "connector %s: ping_interval %gs lowered to %gs, the most %s allows",
            cc.feed,
            configured,
            cap,
            cc.venue,
        )
        return float(cap)
    return configured


def connection_settings(cc: ConnectorConfig, venue: Venue | None = None) -> ConnectionSettings:
    return ConnectionSettings(
        liveness_timeout=cc.liveness_timeout.seconds,
        ping_interval=ping_interval(cc, venue),
        command_timeout=cc.command_timeout.seconds,
        backoff_initial=cc.backoff_initial.seconds,
        backoff_max=cc.backoff_max.seconds,
        change_interval=1.0 / cc.discovery.change_rate if cc.discovery else 0.0,
    )


def load(cc: ConnectorConfig) -> Venue:
    try:
        return load_venue(cc.venue)
    except VenueUnavailable as exc:
        raise StartupRefused(f"connector for feed {cc.feed!r}: {exc}") from None


@attrs.frozen
class FeedPlan:
    """One configured connector, checked before any feed starts: its venue, its
    discovery source (with `[connector.discovery]`), and its static subscriptions (None:
    the market list is still to be resolved, in the feed's own task)."""

    cc: ConnectorConfig
    venue: Venue
    source: DiscoverySource | None
    shards: list[list[SubscriptionPlan]] | None


def connect_for(cc: ConnectorConfig) -> Connect:
    return connect_websocket if cc.websocket_client == "trio-websocket" else connect_fast


async def plan_feed(cc: ConnectorConfig, credentials: Credentials | None) -> FeedPlan:
    """Everything about a feed that can refuse the start, before any feed connects:
    its venue, credentials, discovery source, channels and static markets."""
    venue = load(cc)
    if venue.needs_credentials:
        if credentials is None:
            raise StartupRefused(
                f"the {cc.venue} connector for feed {cc.feed!r} needs credentials "
                "(KALSHI_API_KEY and KALSHI_PRIVATE_KEY or KALSHI_PRIVATE_KEY_PATH)"
            )
        await probe_credentials(
            connect_for(cc),
            cc.resolved_url(),
            credentials,
            min(cc.command_timeout.seconds, PROBE_TIMEOUT_S),
        )
    if cc.discovery is not None:
        source = discovery_source(cc.venue, cc)
        if source is None:
            raise StartupRefused(f"connector {cc.feed!r}: {cc.venue} has no market discovery")
        return FeedPlan(cc, venue, source, None)
    try:
        markets = await venue.subscription_markets(cc)
    except StartupUnavailable as exc:
        venue.plan(cc, list(cc.markets))  # channels and markets as configured, checked now
        # Other feeds must not wait or stop for it: retried in this feed's own task.
        log.warning("connector %s: %s; retrying while the other feeds run", cc.feed, exc)
        return FeedPlan(cc, venue, None, None)
    return FeedPlan(cc, venue, None, venue.plan(cc, markets))
