"""The connector's /metrics read without a connection: a publisher that never publishes,
and connections reduced to their counters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from prometheus_client import CollectorRegistry, generate_latest

from ssmd.clock import WallClock
from ssmd.connector.metrics import connector_metrics
from ssmd.connector.publisher import Publisher
from ssmd.feeds.base import ConnectionStats
from ssmd.metrics import FunctionCollector


async def _no_publish(messages: Sequence[Any], timeout: float) -> list[Any]:
    raise AssertionError("the metrics registry never publishes")


def idle_publisher(feed: str) -> Publisher:
    """A publisher for the collectors to read (in Trio: its clock needs it)."""
    return Publisher(
        _no_publish,
        env="prod",
        feed=feed,
        clock=WallClock(),
        buffer_messages=10,
        buffer_bytes=1000,
        batch_max=10,
        timeout=1.0,
    )


@attrs.define
class Slot:
    stats: ConnectionStats
    up: bool = True


def connector_lines(feed: str, *stats: ConnectionStats) -> list[str]:
    """The /metrics lines the connector makes of its connections' counters."""
    publisher = idle_publisher(feed)
    slots: list[Any] = [Slot(s) for s in stats]
    registry = CollectorRegistry()
    registry.register(FunctionCollector(lambda: connector_metrics(feed, publisher, slots)))
    return generate_latest(registry).decode().splitlines()
