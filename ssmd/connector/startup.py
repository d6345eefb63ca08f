"""Start-up checks of one configured connector: the ones without network for every feed
before any starts (venue, credentials present, discovery source, channels, static
markets as configured), the credential probe in the feed's own task; and the
connection settings the venue allows.
"""

from __future__ import annotations

import logging

import attrs
import trio

from ssmd.config import ConnectorConfig
from ssmd.connector.auth import Credentials
from ssmd.connector.connection import ConnectionSettings, describe
from ssmd.connector.websocket import Connect, HandshakeRejected, connect_websocket
from ssmd.connector.wsclient import connect_fast
from ssmd.feeds import VenueUnavailable, load_venue
from ssmd.feeds.base import Venue
from ssmd.feeds.discovery import DiscoverySource, discovery_source
from ssmd.supervisor import StartupRefused

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
        read_interval=cc.read_interval.seconds,
    )


def load(cc: ConnectorConfig) -> Venue:
    try:
        return load_venue(cc.venue)
    except VenueUnavailable as exc:
        raise StartupRefused(f"connector for feed {cc.feed!r}: {exc}") from None


@attrs.frozen
class FeedPlan:
    """One configured connector, checked before any feed starts: its venue and its
    discovery source (with `[connector.discovery]`). Its static markets are resolved
    and its credentials probed in the feed's own tasks."""

    cc: ConnectorConfig
    venue: Venue
    source: DiscoverySource | None


def connect_for(cc: ConnectorConfig) -> Connect:
    return connect_websocket if cc.websocket_client == "trio-websocket" else connect_fast


def plan_feed(cc: ConnectorConfig, credentials: Credentials | None) -> FeedPlan:
    """Everything about a feed that can refuse the start without the network, before
    any feed connects: its venue, credentials present, discovery source, channels and
    static markets as configured. What needs the network (the credential probe, a
    venue's market lookup) runs in the feed's own tasks: a slow venue holds up no
    other feed."""
    venue = load(cc)
    if venue.needs_credentials and credentials is None:
        raise StartupRefused(
            f"the {cc.venue} connector for feed {cc.feed!r} needs credentials "
            "(KALSHI_API_KEY and KALSHI_PRIVATE_KEY or KALSHI_PRIVATE_KEY_PATH)"
        )
    if cc.discovery is not None:
        source = discovery_source(cc.venue, cc)
        if source is None:
            raise StartupRefused(f"connector {cc.feed!r}: {cc.venue} has no market discovery")
        return FeedPlan(cc, venue, source)
    venue.plan(cc, list(cc.markets))  # channels and markets as configured
    return FeedPlan(cc, venue, None)


async def probe_feed(cc: ConnectorConfig, credentials: Credentials) -> None:
    """The feed's credential probe (rejected: `StartupRefused`, exit 2)."""
    await probe_credentials(
        connect_for(cc),
        cc.resolved_url(),
        credentials,
        min(cc.command_timeout.seconds, PROBE_TIMEOUT_S),
    )


async def check_credentials(
    cc: ConnectorConfig,
    credentials: Credentials,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A discovering feed's credential probe, beside its connections (which open at
    once); ready once it has answered. Then idle until the stop."""
    await probe_feed(cc, credentials)
    task_status.started()
    await trio.sleep_forever()
