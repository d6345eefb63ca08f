"""The connector's Prometheus metrics, read from its counters at scrape time."""

from __future__ import annotations

import collections
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily

from ssmd.connector.connection import Connection
from ssmd.connector.publisher import Publisher
from ssmd.metrics import by_label, counter, gauge


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
        dict(received),
    )
    published = p.acked_by_type()
    yield by_label(
        CounterMetricFamily,
        "ssmd_published_messages",
        "Messages JetStream acknowledged, by subject type.",
        labels,
        "type",
        dict(published),
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
    yield counter(
        "ssmd_exchange_gaps",
        "Jumps in the exchange's seq within a subscription.",
        labels,
        sum(c.stats.gaps for c in connections),
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
