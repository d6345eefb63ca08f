"""Wiring of the connector role: stream check, credential probe, then tasks on the supervisor.

    ws0 ─┐
    ws1 ─┼─ Inbound ─> publisher ─ publish_batch ─> JetStream      (one per configured feed)
    ... ─┘

Each connection speaks its venue's protocol through the venue module (`ssmd.feeds`).

The WebSocket connections are producers; the publisher is a sink that drains and
waits for acknowledgements when the producers stop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING

import attrs
import trio

from ssmd.backoff import Backoff
from ssmd.clock import WallClock
from ssmd.config import Config
from ssmd.connector.auth import Credentials
from ssmd.connector.backfill import TradeBackfill
from ssmd.connector.connection import Connection
from ssmd.connector.metrics import connector_metrics
from ssmd.connector.publisher import Inbound, Publisher
from ssmd.connector.shards import SubscriptionPlan
from ssmd.connector.startup import (
    FeedPlan,
    check_credentials,
    connect_for,
    plan_feed,
    probe_feed,
)
from ssmd.connector.startup import connection_settings as connection_settings  # re-exported
from ssmd.feeds.base import ConnectionStats, SessionContext, Subjects
from ssmd.feeds.kalshi_discovery import BackfillWindow, TradeLedger
from ssmd.metrics import FunctionCollector, merge_families
from ssmd.nats.bridge import NatsBridge
from ssmd.nats.types import StreamSpec
from ssmd.subjects import feed_prefix, pattern_covers
from ssmd.supervisor import StartupRefused, StartupUnavailable, Supervisor

if TYPE_CHECKING:
    from ssmd.connector.discovery import Discovery

log = logging.getLogger("ssmd.connector")

INBOUND_CHANNEL_SIZE = 64  # batches of up to 1000 messages
STATS_INTERVAL_S = 60.0
MARKETS_RETRY = Backoff(1.0, 60.0, jitter=0.5)


def stream_spec(config: Config) -> StreamSpec:
    """The stream the connector creates: every configured feed's subjects."""
    limits = config.nats.stream_limits
    return StreamSpec(
        name=config.nats.stream,
        subjects=[f"{feed_prefix(config.env, cc.feed)}.>" for cc in config.connectors],
        max_age_s=limits.max_age.seconds,
        max_bytes=limits.max_bytes.value,
        max_msgs=limits.max_msgs,
        duplicate_window_s=limits.duplicate_window.seconds,
        replicas=limits.replicas,
    )


async def ensure_stream(config: Config, bridge: NatsBridge) -> None:
    """Create the stream if missing; refuse to start if an existing one misses a feed."""
    spec = stream_spec(config)
    state, created = await bridge.ensure_stream(spec)
    if created:
        log.info("created stream %s for %s", spec.name, ", ".join(spec.subjects))
        return
    missing = [
        wanted
        for wanted in spec.subjects
        if not any(pattern_covers(subject, wanted) for subject in state.subjects)
    ]
    if missing:
        raise StartupRefused(
            f"stream {spec.name} exists with subjects {', '.join(state.subjects) or '(none)'}, "
            f"which do not cover {', '.join(missing)}; add them to the stream or set "
            "[nats] stream"
        )
    log.info("using existing stream %s (%d messages)", spec.name, state.messages)


async def _report_stats(feed: str, publisher: Publisher, connections: list[Connection]) -> None:
    while True:
        await trio.sleep(STATS_INTERVAL_S)
        s = publisher.stats
        log.info(
            "%s: received %d, acknowledged %d (%d duplicates), buffered %d, dropped %d, "
            "unrouted %d, gaps %d, disconnects %d",
            feed,
            sum(c.stats.messages for c in connections),
            s.acked,
            s.duplicates,
            publisher.buffered,
            s.dropped,
            sum(c.stats.unrouted for c in connections),
            sum(c.stats.gaps for c in connections),
            sum(c.stats.disconnects for c in connections),
        )


@attrs.frozen
class FeedTasks:
    """One configured connector: its publisher, its connections (discovery may add
    more while it runs) and its discovery task, if any."""

    feed: str
    publisher: Publisher
    connections: list[Connection]
    discovery: Discovery | None = None


@attrs.frozen
class ConnectorTasks:
    """What `start_connector` started, for callers that watch its counters."""

    feeds: list[FeedTasks]

    @property
    def publisher(self) -> Publisher:
        """The first (with one connector, the only) feed's publisher."""
        return self.feeds[0].publisher

    @property
    def connections(self) -> list[Connection]:
        """Every feed's connections."""
        return [c for feed in self.feeds for c in feed.connections]


async def _start_feed(
    sup: Supervisor,
    config: Config,
    feed_plan: FeedPlan,
    bridge: NatsBridge,
    clock: WallClock,
    credentials: Credentials | None,
) -> FeedTasks:
    cc, venue, source = feed_plan.cc, feed_plan.venue, feed_plan.source
    name = "connector" if len(config.connectors) == 1 else f"connector.{cc.feed}"
    probe = credentials if venue.needs_credentials else None
    if probe is not None and source is not None:
        sup.start_producer(f"{name}.credentials", check_credentials, cc, probe, reports_ready=True)
    url = cc.resolved_url()
    connect = connect_for(cc)
    discovery_config = cc.discovery if source is not None else None
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
    sup.start_sink(f"{name}.publisher", publisher.run, receive)
    settings = connection_settings(cc, venue)
    discovery: Discovery | None = None
    # Trade backfill is Kalshi's trade REST; `backfill_trades` means nothing elsewhere.
    backfills = source is not None and source.backfills_trades
    trades = (
        TradeLedger()
        if backfills and discovery_config is not None and discovery_config.backfill_trades
        else None
    )

    def on_event(payload: bytes) -> None:
        if discovery is not None:
            discovery.on_event(payload)

    def units_of(market: str) -> tuple[str, ...]:
        return discovery.units_of(market) if discovery is not None else (market,)

    def on_backfill(conn: int, window: BackfillWindow) -> None:
        if discovery is not None and discovery.backfill is not None:
            discovery.backfill.request(conn, window)

    def make_connection(index: int, plans: list[SubscriptionPlan]) -> Connection:
        context = SessionContext(
            index,
            Subjects(config.env, cc.feed),
            ConnectionStats(),
            cc,
            events=on_event if discovery_config is not None else None,
            trades=trades,
            backfill=on_backfill if trades is not None else None,
            units=units_of if discovery_config is not None else None,
        )
        return Connection(
            index,
            url,
            venue,
            plans,
            config=cc,
            env=config.env,
            clock=clock,
            settings=settings,
            headers=partial(venue.handshake_headers, credentials=credentials),
            connect=connect,
            context=context,
        )

    def plan_connections(shards: list[list[SubscriptionPlan]]) -> list[Connection]:
        log.info(
            "connector %s (%s): %d connection(s), %d subscription(s) to %s",
            cc.feed,
            venue.kind,
            len(shards),
            sum(len(s) for s in shards),
            url,
        )
        return [make_connection(index, plans) for index, plans in enumerate(shards)]

    async def resolve_then_connect(*, task_status: trio.TaskStatus[None]) -> None:
        """Resolve the market list (retried until it comes), then run the connections
        (not ready until they are up); a definitive refusal (StartupRefused) stops the
        process with exit 2. Other feeds do not wait for it."""
        with send:
            if probe is not None:  # before the first connection: one handshake if refused
                await probe_feed(cc, probe)
            retry = MARKETS_RETRY.retry()
            while True:
                try:
                    resolved = await venue.subscription_markets(cc)
                    break
                except StartupUnavailable as exc:
                    log.warning(
                        "connector %s: %s; retrying while the other feeds run", cc.feed, exc
                    )
                await retry.wait()
            if retry.failures:
                log.info("connector %s: markets resolved after %d retries", cc.feed, retry.failures)
            late = plan_connections(venue.plan(cc, resolved))
            connections.extend(late)
            async with trio.open_nursery() as nursery:
                for connection in late:
                    await nursery.start(connection.run, send.clone())
                task_status.started()

    connections: list[Connection] = []
    if source is not None:
        whole, following = source.channels(cc.channels)
        connections = plan_connections([source.initial_plans(whole)])
    else:
        sup.start_producer(f"{name}.markets", resolve_then_connect, reports_ready=True)
    for connection in connections:
        sup.start_producer(
            f"{name}.ws{connection.index}", connection.run, send.clone(), reports_ready=True
        )
    if source is not None and discovery_config is not None:
        # Imported here: httpx and the rest load only for a connector that discovers.
        from ssmd.connector.discovery import Discovery
        from ssmd.connector.layout import SubscriptionLayout
        from ssmd.connector.rest import RestClient, RestSettings

        def open_connection(index: int, out: trio.MemorySendChannel[list[Inbound]]) -> Connection:
            connection = make_connection(index, [])
            sup.start_producer(f"{name}.ws{index}", connection.run, out)
            return connection

        per_subscription, per_connection = source.layout_limits(
            cc.markets_per_subscription or venue.limits.markets_per_subscription,
            cc.markets_per_connection or venue.limits.markets_per_connection,
        )
        rest = RestClient(
            source.rest_url(url),
            RestSettings(
                rate=discovery_config.rest_rate,
                burst=max(1.0, discovery_config.rest_rate),
                timeout=discovery_config.rest_timeout.seconds,
            ),
            # Signed only for a venue that needs the credentials (Kalshi): never to Gamma.
            headers=(
                credentials.request_headers
                if venue.needs_credentials and credentials is not None
                else None
            ),
            label=f"{cc.feed} REST",
        )
        discovery = Discovery(
            source=source,
            layout=(
                SubscriptionLayout(following, per_subscription, per_connection)
                if following
                else None
            ),
            rest=rest,
            subjects=Subjects(config.env, cc.feed),
            clock=clock,
            refresh=discovery_config.refresh.seconds,
            connections=connections,
            open_connection=open_connection,
            static_markets=cc.markets,
            backfill=(
                TradeBackfill(
                    rest=rest,
                    subjects=Subjects(config.env, cc.feed),
                    clock=clock,
                    trades=trades,
                    publisher=publisher,
                )
                if trades is not None
                else None
            ),
        )
        sup.start_producer(f"{name}.discovery", discovery.run, send.clone())
        sup.add_readiness_check(f"{name}.discovery", discovery.not_ready)
    if source is not None:
        send.close()
    sup.start_producer(f"{name}.stats", _report_stats, cc.feed, publisher, connections)
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

    sup.add_health_check(name, health)
    sup.add_readiness_check(name, readiness)
    return FeedTasks(cc.feed, publisher, connections, discovery)


async def start_connector(
    sup: Supervisor,
    config: Config,
    bridge: NatsBridge,
    clock: WallClock,
    credentials: Credentials | None,
) -> ConnectorTasks:
    if not config.connectors:
        raise StartupRefused("the connector role needs a [connector] section")
    # Every feed checked before any starts: a bad third feed refuses the start before
    # the first one connects. Network lookups run in each feed's own tasks.
    plans = [plan_feed(cc, credentials) for cc in config.connectors]
    await ensure_stream(config, bridge)
    feeds = [await _start_feed(sup, config, plan, bridge, clock, credentials) for plan in plans]

    def families(feed: FeedTasks) -> Iterator[object]:
        yield from connector_metrics(feed.feed, feed.publisher, feed.connections)
        if feed.discovery is not None:
            yield from feed.discovery.metrics(feed.feed)

    def collect() -> Iterator[object]:
        return merge_families(family for feed in feeds for family in families(feed))

    sup.metrics.register(FunctionCollector(collect))
    return ConnectorTasks(feeds)
