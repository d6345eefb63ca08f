"""The exchange misbehaves in one run: garbage frames, a dropped TCP connection, a seq
break, and a half-open connection that stays up but carries nothing (pings go
unanswered)."""

from __future__ import annotations

from pathlib import Path

from ssmd.nats.server import NatsServer
from tests.faults.harness import (
    finish_and_compare,
    reaped,
    scenario,
    ssmd,
    stop_when_sent,
)

# A cap the run never reaches: the exchange ends its stream half a second after the
# last fault (`end_after`).
TOTAL = 1_000_000
RATE = 10_000
GARBAGE = 20
# Only what was on the wire when a connection broke may be missing: under 1% of it.
LOST_SHARE = 0.01


def test_garbage_drop_seq_break_and_half_open_in_one_run(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    exchange, config, archive = scenario(tmp_path, [nats_server.url], TOTAL, RATE)
    process = ssmd(config, ["connector", "archiver"]).start()
    with reaped(process):
        exchange.wait_connected()
        exchange.wait_sent(5_000)
        assert exchange.command(f"garbage {GARBAGE}")["garbage"] == GARBAGE

        exchange.wait_sent(10_000)
        assert exchange.command("drop")["dropped"]
        exchange.wait(lambda s: s["sessions"] == 2 and s["connected"])

        exchange.wait_sent(15_000)
        assert exchange.command("gap 3")["gap"] == 3  # on trades: recorded, no resubscribe

        exchange.wait_sent(20_000)
        assert exchange.command("silent")["silenced"]
        # Only the connector's liveness check (2 s here) can notice this one.
        exchange.wait(lambda s: s["sessions"] == 3 and s["connected"], timeout=30)
        assert exchange.command(f"garbage {GARBAGE}")["garbage"] == GARBAGE

        sent = exchange.end_after(RATE // 2)
        stop_when_sent(exchange, process)
    result = finish_and_compare(exchange, config, archive)
    assert result.sent == sent + 2 * GARBAGE
    assert result.lost < LOST_SHARE * result.sent, result
    # Garbage is kept, byte for byte, not dropped.
    assert result.garbage_archived == 2 * GARBAGE, result
    assert result.discontinuities["connect"] == 3, result
    assert result.discontinuities["gap"] == 1, result
    assert "resubscribe" not in result.discontinuities, result
    # The drop, the half-open connection, and the final stop.
    assert result.discontinuities["disconnect"] == 3, result
    print(result)
