"""What a connection's counters become on /metrics: gaps by reason, control frames by
kind, refused subscriptions, repairs and lost messages, per feed."""

from __future__ import annotations

from ssmd.feeds.base import ConnectionStats
from tests.metrics_probe import connector_lines


async def test_connection_counters_are_exported_with_their_labels() -> None:
    a, b = ConnectionStats(), ConnectionStats()
    a.gap("checksum")
    a.gap("trade_id")
    b.gap("checksum")
    a.control["heartbeat"] += 5
    b.control["pong"] += 2
    a.subscribe_errors, a.resubscribes, b.lost = 3, 1, 7
    lines = connector_lines("kraken", a, b)
    for line in (
        'ssmd_exchange_gaps_total{feed="kraken",reason="checksum"} 2.0',
        'ssmd_exchange_gaps_total{feed="kraken",reason="trade_id"} 1.0',
        'ssmd_control_messages_total{feed="kraken",kind="heartbeat"} 5.0',
        'ssmd_control_messages_total{feed="kraken",kind="pong"} 2.0',
        'ssmd_subscribe_errors_total{feed="kraken"} 3.0',
        'ssmd_resubscribes_total{feed="kraken"} 1.0',
        'ssmd_lost_messages_total{feed="kraken"} 7.0',
    ):
        assert line in lines, (line, lines)
