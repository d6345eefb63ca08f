"""The NATS connection's Prometheus metrics, read from the bridge at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily

from ssmd.metrics import by_label, counter
from ssmd.nats.bridge import NatsBridge


def nats_metrics(bridge: NatsBridge) -> Iterator[object]:
    yield by_label(
        CounterMetricFamily,
        "ssmd_nats_client_errors",
        "Errors nats-py reported asynchronously, by kind: an exception in a subscription "
        "callback, a slow consumer that dropped messages (the archiver rewinds over them).",
        {},
        "error",
        dict(bridge.client_errors.counts),
    )
    yield counter(
        "ssmd_nats_reconnects",
        "Times the NATS connection was re-established after it was lost.",
        {},
        bridge.reconnects,
    )
