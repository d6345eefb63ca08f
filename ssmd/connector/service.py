"""Wiring of the connector role: stream check, credential probe, then tasks on the supervisor.

    ws0 ─┐
    ws1 ─┼─ Inbound ─> publisher ─ publish_batch ─> JetStream
    ... ─┘

The WebSocket connections are producers; the publisher is a sink that drains and
waits for acknowledgements when the producers stop.
"""

from __future__ import annotations

import logging
from functools import partial

import attrs
import trio

from ssmd.clock import WallClock
from ssmd.config import Config, ConnectorConfig
from ssmd.connector.auth import Credentials
from ssmd.connector.connection import Connection, ConnectionSettings, describe
from ssmd.connector.metrics import connector_metrics
from ssmd.connector.publisher import Inbound, Publisher
from ssmd.connector.router import Router
from ssmd.connector.shards import plan_connections
from ssmd.connector.websocket import Connect, HandshakeRejected, connect_websocket
from ssmd.connector.wsclient import connect_fast
from ssmd.metrics import FunctionCollector
from ssmd.nats.bridge import NatsBridge
from ssmd.nats.types import StreamSpec
from ssmd.subjects import feed_prefix, pattern_covers
from ssmd.supervisor import StartupRefused, Supervisor

log = logging.getLogger("ssmd.connector")

INBOUND_CHANNEL_SIZE = 64  # batches of up to 1000 messages
PROBE_TIMEOUT_S = 10.0
STATS_INTERVAL_S = 60.0


def stream_spec(config: Config) -> StreamSpec:
    assert config.connector is not None
    limits = config.nats.stream_limits
    return StreamSpec(
        name=config.nats.stream,
        subjects=[f"{feed_prefix(config.env, config.connector.feed)}.>"],
        max_age_s=limits.max_age.seconds,
        max_bytes=limits.max_bytes.value,
        max_msgs=limits.max_msgs,
        duplicate_window_s=limits.duplicate_window.seconds,
        replicas=limits.replicas,
    )


async def ensure_stream(config: Config, bridge: NatsBridge) -> None:
    """Create the stream if missing; refuse to start if an existing one misses our subjects."""
    spec = stream_spec(config)
    wanted = spec.subjects[0]
    state, created = await bridge.ensure_stream(spec)
    if created:
        log.info("created stream %s for %s", spec.name, wanted)
        return
    if not any(pattern_covers(subject, wanted) for subject in state.subjects):
        raise StartupRefused(
            f"stream {spec.name} exists with subjects {', '.join(state.subjects) or '(none)'}, "
            f"which do not cover {wanted}; add {wanted} to the stream or set [nats] stream"
        )
    log.info("using existing stream %s (%d messages)", spec.name, state.messages)


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


def connection_settings(cc: ConnectorConfig) -> ConnectionSettings:
    return ConnectionSettings(
        liveness_timeout=cc.liveness_timeout.seconds,
        ping_interval=cc.ping_interval.seconds,
        command_timeout=cc.command_timeout.seconds,
        backoff_initial=cc.backoff_initial.seconds,
        backoff_max=cc.backoff_max.seconds,
    )


async def _report_stats(publisher: Publisher, connections: list[Connection]) -> None:
    while True:
        await trio.sleep(STATS_INTERVAL_S)
        received = sum(c.stats.messages for c in connections)
        gaps = sum(c.stats.gaps for c in connections)
        reconnects = sum(c.stats.disconnects for c in connections)
        s = publisher.stats
        log.info(
            "received %d, acknowledged %d (%d duplicates), buffered %d, dropped %d, "
            "unrouted %d, gaps %d, disconnects %d",
            received,
            s.acked,
            s.duplicates,
            publisher.buffered,
            s.dropped,
            sum(c.stats.unrouted for c in connections),
            gaps,
            reconnects,
        )


# Channels Kalshi serves only for listed market tickers.
NEEDS_MARKETS = frozenset({"orderbook_delta"})


@attrs.frozen
class ConnectorTasks:
    """What `start_connector` started, for callers that watch its counters."""

    publisher: Publisher
    connections: list[Connection]


async def start_connector(
    sup: Supervisor,
    config: Config,
    bridge: NatsBridge,
    clock: WallClock,
    credentials: Credentials,
) -> ConnectorTasks:
    cc = config.connector
    if cc is None:
        raise StartupRefused("the connector role needs a [connector] section")
    await ensure_stream(config, bridge)
    url = cc.resolved_url()
    connect: Connect = (
        connect_websocket if cc.websocket_client == "trio-websocket" else connect_fast
    )
    await probe_credentials(
        connect, url, credentials, min(cc.command_timeout.seconds, PROBE_TIMEOUT_S)
    )

    channels = list(cc.channels)
    if not cc.markets:
        for channel in sorted(NEEDS_MARKETS & set(channels)):
            log.warning(
                "connector.channels has %r but connector.markets is empty: Kalshi serves that "
                "channel only for listed markets, so it is not subscribed",
                channel,
            )
        channels = [c for c in channels if c not in NEEDS_MARKETS]
    if not channels:
        raise StartupRefused(
            "no channel can be subscribed: list connector.markets for "
            + ", ".join(sorted(NEEDS_MARKETS & set(cc.channels)))
        )
    shards = plan_connections(
        channels, cc.markets, cc.markets_per_subscription, cc.markets_per_connection
    )
    log.info(
        "connector: %d connection(s), %d subscription(s) to %s",
        len(shards),
        sum(len(s) for s in shards),
        url,
    )
    publisher = Publisher(
        bridge.publish_batch,
        env=config.env,
        feed=cc.feed,
        clock=clock,
        buffer_messages=cc.buffer_messages,
        buffer_bytes=cc.buffer_bytes.value,
        batch_max=cc.publish_window,
        timeout=cc.publish_timeout.seconds,
        linger=cc.publish_linger.seconds,
    )
    send, receive = trio.open_memory_channel[list[Inbound]](INBOUND_CHANNEL_SIZE)
    sup.start_sink("connector.publisher", publisher.run, receive)
    router = Router(config.env, cc.feed)
    settings = connection_settings(cc)
    connections = [
        Connection(
            index,
            url,
            plans,
            router=router,
            env=config.env,
            feed=cc.feed,
            clock=clock,
            settings=settings,
            headers=partial(Credentials.handshake_headers, credentials),
            connect=connect,
        )
        for index, plans in enumerate(shards)
    ]
    for connection in connections:
        sup.start_producer(
            f"connector.ws{connection.index}", connection.run, send.clone(), reports_ready=True
        )
    send.close()
    sup.start_producer("connector.stats", _report_stats, publisher, connections)
    stall_after = max(30.0, 3 * cc.publish_timeout.seconds)
    publisher.stats.last_ack_at = trio.current_time()

    def health() -> str | None:
        silent = trio.current_time() - publisher.stats.last_ack_at
        if publisher.buffered and silent > stall_after:
            return f"{publisher.buffered} messages waiting, no JetStream ack for {silent:.0f}s"
        return None

    def readiness() -> str | None:
        down = [c.index for c in connections if not c.up]
        return f"connection(s) {down} not connected and subscribed" if down else None

    sup.add_health_check("connector", health)
    sup.add_readiness_check("connector", readiness)
    sup.metrics.register(
        FunctionCollector(lambda: connector_metrics(cc.feed, publisher, connections))
    )
    return ConnectorTasks(publisher, connections)
