"""The connector's Prometheus metrics, read from its counters at scrape time."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ssmd.connector.connection import Connection
from ssmd.connector.publisher import Publisher
from ssmd.feeds.base import DynamicSession
from ssmd.message_types import type_labels
from ssmd.metrics import by_label, counter, gauge

if TYPE_CHECKING:
    from ssmd.connector.backfill import TradeBackfill
    from ssmd.connector.discovery import DiscoveryStats
    from ssmd.connector.rest import RestStats


def connector_metrics(
    feed: str, publisher: Publisher, connections: list[Connection]
) -> Iterator[object]:
    labels = {"feed": feed}
    received: collections.Counter[str] = collections.Counter()
    for c in connections:
        received.update(c.stats.by_type)
    p = publisher.stats
    yield by_label(
        CounterMetricFamily,
        "ssmd_received_messages",
        "Exchange messages read from the WebSocket, by exchange type.",
        labels,
        "type",
        type_labels(received),
    )
    published = p.acked_by_type()
    yield by_label(
        CounterMetricFamily,
        "ssmd_published_messages",
        "Messages JetStream acknowledged, by subject type.",
        labels,
        "type",
        type_labels(published),
    )
    yield counter(
        "ssmd_publish_duplicates",
        "Retries the stream recognised as duplicates.",
        labels,
        p.duplicates,
    )
    yield counter(
        "ssmd_publish_retries", "Messages published again after a failure.", labels, p.retried
    )
    yield counter(
        "ssmd_publish_dropped", "Messages dropped because the buffer was full.", labels, p.dropped
    )
    yield counter(
        "ssmd_publish_rejected", "Messages JetStream refused for good.", labels, p.rejected
    )
    yield gauge(
        "ssmd_publish_buffer_messages",
        "Messages waiting for a JetStream ack.",
        labels,
        publisher.buffered,
    )
    yield counter(
        "ssmd_reconnects",
        "WebSocket disconnects (each followed by a reconnect).",
        labels,
        sum(c.stats.disconnects for c in connections),
    )
    gaps: collections.Counter[str] = collections.Counter()
    control: collections.Counter[str] = collections.Counter()
    for c in connections:
        gaps.update(c.stats.gap_reasons)
        control.update(c.stats.control)
    yield by_label(
        CounterMetricFamily,
        "ssmd_exchange_gaps",
        "Breaks in the exchange's own continuity (gap records), by reason: seq (Kalshi), "
        "checksum and trade_id (Kraken).",
        labels,
        "reason",
        dict(gaps),
    )
    yield by_label(
        CounterMetricFamily,
        "ssmd_control_messages",
        "Exchange frames that are not data (replies, pongs, heartbeats), by kind.",
        labels,
        "kind",
        {str(kind): n for kind, n in control.items()},
    )
    yield counter(
        "ssmd_trade_ids_behind",
        "Trades whose trade_id repeats or precedes the symbol's last one (Kraken): no gap.",
        labels,
        sum(c.stats.trade_ids_behind for c in connections),
    )
    yield counter(
        "ssmd_subscribe_errors",
        "Subscriptions the exchange refused (each retried with backoff).",
        labels,
        sum(c.stats.subscribe_errors for c in connections),
    )
    yield counter(
        "ssmd_resubscribes",
        "Resubscriptions made to repair a book (e.g. after a Kraken checksum mismatch).",
        labels,
        sum(c.stats.resubscribes for c in connections),
    )
    yield counter(
        "ssmd_lost_messages",
        "Messages read but never handed to the publisher (it stopped taking them).",
        labels,
        sum(c.stats.lost for c in connections),
    )
    yield counter(
        "ssmd_unrouted_messages",
        "Messages kept on the fallback subject.",
        labels,
        sum(c.stats.unrouted for c in connections),
    )
    yield gauge(
        "ssmd_connections_up",
        "Connections connected and subscribed.",
        labels,
        sum(c.up for c in connections),
    )
    last = max((c.stats.last_message_ns for c in connections), default=0)
    yield gauge(
        "ssmd_last_received_timestamp_seconds",
        "Wall time of the last exchange message.",
        labels,
        last / 1e9,
    )
    yield p.ack_seconds.family(
        "ssmd_publish_ack_seconds",
        "Time from publishing a batch to its last JetStream ack.",
        labels,
    )


def discovery_metrics(
    feed: str,
    stats: DiscoveryStats,
    rest: RestStats,
    refresh_s: float,
    selected: int,
    planned: dict[str, int],
    connections: list[Connection],
    backfill: TradeBackfill | None = None,
) -> Iterator[object]:
    """Market discovery: the market counts, REST requests, subscription changes."""
    labels = {"feed": feed}
    yield by_label(
        GaugeMetricFamily,
        "ssmd_discovery_markets",
        "Markets by state: known (open on the exchange, last walk), selected (followed).",
        labels,
        "state",
        {"known": stats.known, "selected": selected},
    )
    subscribed: collections.Counter[str] = collections.Counter()
    per_sid = GaugeMetricFamily(
        "ssmd_subscription_markets",
        "Markets on each live subscription (0: an all-markets subscription).",
        labels=["feed", "conn", "sid", "channel"],
    )
    per_conn = GaugeMetricFamily(
        "ssmd_connection_markets",
        "Markets on each connection's market-scoped subscriptions, per channel summed.",
        labels=["feed", "conn"],
    )
    changes: collections.Counter[str] = collections.Counter()
    for c in connections:
        changes.update(c.stats.changes)
        session = c.session
        if not isinstance(session, DynamicSession):
            continue
        on_conn = 0
        for sid, (channel, count) in session.sid_markets().items():
            subscribed[channel] += count
            on_conn += count
            per_sid.add_metric([feed, str(c.index), str(sid), channel], count)
        per_conn.add_metric([feed, str(c.index)], on_conn)
    yield by_label(
        GaugeMetricFamily,
        "ssmd_subscribed_markets",
        "Markets the exchange confirmed on subscriptions, per channel.",
        labels,
        "channel",
        dict(subscribed),
    )
    yield by_label(
        GaugeMetricFamily,
        "ssmd_planned_markets",
        "Markets the subscription planner has placed, per channel.",
        labels,
        "channel",
        planned,
    )
    yield per_sid
    yield per_conn
    yield by_label(
        CounterMetricFamily,
        "ssmd_rest_requests",
        "REST requests of market discovery and backfill, by HTTP status (or error/timeout).",
        labels,
        "status",
        dict(rest.requests),
    )
    yield by_label(
        CounterMetricFamily,
        "ssmd_subscription_commands",
        "Live subscription changes sent, by outcome (ok, error:<code>).",
        labels,
        "outcome",
        dict(changes),
    )
    yield gauge(
        "ssmd_discovery_last_reconcile_timestamp_seconds",
        "Wall time the last full REST walk of the open markets completed (0: none yet).",
        labels,
        stats.last_reconcile_ns / 1e9,
    )
    yield gauge(
        "ssmd_discovery_refresh_seconds",
        "The configured interval between REST walks.",
        labels,
        refresh_s,
    )
    yield counter(
        "ssmd_discovery_lifecycle_events",
        "Lifecycle events that changed the selected market set.",
        labels,
        stats.lifecycle_events,
    )
    yield counter(
        "ssmd_discovery_lifecycle_dropped",
        "Lifecycle events dropped because discovery was behind (reconciliation repairs).",
        labels,
        stats.lifecycle_dropped,
    )
    if backfill is not None:
        yield from backfill.metrics(labels)
