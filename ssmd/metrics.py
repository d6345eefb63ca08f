"""Prometheus metrics, read from the roles' own counters at scrape time.

The hot paths only bump plain integers (and a histogram per batch); these collectors
turn them into Prometheus families when `/metrics` is scraped, so metrics cost nothing
per message.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

# Seconds: from sub-millisecond fsyncs on SSD to multi-second stalls.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class LatencyHistogram:
    """A cumulative histogram updated once per batch."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds

    def family(
        self, name: str, documentation: str, labels: dict[str, str]
    ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=list(labels))
        cumulative = []
        running = 0
        for bound, count in zip([*map(str, self.buckets), "+Inf"], self.counts, strict=True):
            running += count
            cumulative.append((bound, float(running)))
        family.add_metric(list(labels.values()), cumulative, self.sum)
        return family


class FunctionCollector(Collector):
    """Adapts a function yielding metric families to a prometheus-client collector."""

    def __init__(self, collect: Callable[[], Iterator[object]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        return self._collect()


def counter(
    name: str, documentation: str, labels: dict[str, str], value: float
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def gauge(name: str, documentation: str, labels: dict[str, str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def by_label(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    documentation: str,
    labels: dict[str, str],
    label: str,
    values: dict[str, int],
) -> CounterMetricFamily | GaugeMetricFamily:
    family = kind(name, documentation, labels=[*labels, label])
    for key, value in sorted(values.items()):
        family.add_metric([*labels.values(), key], value)
    return family


def merge_families(families: Iterable[Any]) -> Iterator[Any]:
    """Families of the same name (one per feed) as one family with all their samples,
    so the exposition names each metric once."""
    merged: dict[str, Any] = {}
    for family in families:
        first = merged.get(family.name)
        if first is None:
            merged[family.name] = family
        else:
            first.samples.extend(family.samples)
    return iter(merged.values())
