"""What a connection's counters become on /metrics: gaps by reason, control frames by
kind, refused subscriptions, repairs and lost messages, per feed."""

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
    raise AssertionError("never publishes")


@attrs.define
class Slot:
    stats: ConnectionStats
    up: bool = True


async def test_connection_counters_are_exported_with_their_labels() -> None:
    publisher = Publisher(
        _no_publish,
        env="prod",
        feed="kraken",
        clock=WallClock(),
        buffer_messages=10,
        buffer_bytes=1000,
        batch_max=10,
        timeout=1.0,
    )
    a, b = ConnectionStats(), ConnectionStats()
    a.gap("checksum")
    a.gap("trade_id")
    b.gap("checksum")
    a.control["heartbeat"] += 5
    b.control["pong"] += 2
    a.subscribe_errors, a.resubscribes, b.lost = 3, 1, 7
    slots: list[Any] = [Slot(a), Slot(b)]
    registry = CollectorRegistry()
    registry.register(FunctionCollector(lambda: connector_metrics("kraken", publisher, slots)))
    text = generate_latest(registry).decode()
    for line in (
        'ssmd_exchange_gaps_total{feed="kraken",reason="checksum"} 2.0',
        'ssmd_exchange_gaps_total{feed="kraken",reason="trade_id"} 1.0',
        'ssmd_control_messages_total{feed="kraken",kind="heartbeat"} 5.0',
        'ssmd_control_messages_total{feed="kraken",kind="pong"} 2.0',
        'ssmd_subscribe_errors_total{feed="kraken"} 3.0',
        'ssmd_resubscribes_total{feed="kraken"} 1.0',
        'ssmd_lost_messages_total{feed="kraken"} 7.0',
    ):
        assert line in text.splitlines(), (line, text)
