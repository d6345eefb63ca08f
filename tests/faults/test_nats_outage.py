"""nats-server killed (SIGKILL) and restarted twice while the exchange keeps streaming.

The connector holds what it reads in its buffer and republishes with the same
Nats-Msg-Id; the archiver waits and resumes from its durable consumer. Nothing is lost,
because the outages are far shorter than the buffer.
"""

from __future__ import annotations

import time
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
# last outage (`end_after`).
TOTAL = 1_000_000
RATE = 10_000
OUTAGE_EVERY = 20_000  # frames sent before each outage


def test_nats_server_killed_and_restarted_twice(tmp_path: Path, nats_server: NatsServer) -> None:
    exchange, config, archive = scenario(tmp_path, [nats_server.url], TOTAL, RATE)
    process = ssmd(config, ["connector", "archiver"]).start()
    with reaped(process):
        exchange.wait_connected()
        for outage in (1, 2):
            exchange.wait_sent(outage * OUTAGE_EVERY)
            nats_server.stop(kill=True)
            time.sleep(1.5)
            assert process.proc is not None and process.proc.poll() is None
            nats_server.start()
        sent = exchange.end_after(RATE // 2)
        stop_when_sent(exchange, process)
    result = finish_and_compare(exchange, config, archive)
    assert result.sent == result.archived == sent, result
    assert result.lost == 0
    # One connection throughout: NATS outages are not exchange discontinuities.
    assert result.discontinuities == {"connect": 1, "disconnect": 1, "clean stop": 1}, result
