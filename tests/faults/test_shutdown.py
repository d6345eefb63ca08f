"""Honest shutdown of one process running connector and archiver.

- SIGTERM mid-flow: the archive holds every message the stream acknowledged, the final
  `disconnect` record last, with no second run to drain it; `ssmd data verify` passes.
- SIGTERM while NATS is hung (SIGSTOP): the process still exits within
  `service.shutdown_timeout`, though nothing can be acknowledged.
"""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from tests.faults.harness import (
    CLEAN_STOP,
    STREAM,
    Exchange,
    archive_records,
    compare,
    reaped,
    run_verify,
    scenario,
    ssmd,
)
from tests.procs import SsmdProcess, http_get, metric, wait_until

TOTAL = 200_000
RATE = 3_000
SHUTDOWN_TIMEOUT_S = 5.0
# The interpreter's own exit path and the test's polling, on a loaded 2-core machine; a
# shield that overstays the deadline costs 5 s or more.
EXIT_MARGIN_S = 2.5


def _combined(tmp_path: Path, nats_url: str) -> tuple[Exchange, Path, SsmdProcess]:
    """The paced exchange, and one process running connector and archiver:
    (exchange, archive root, process)."""
    exchange, config, archive = scenario(
        tmp_path,
        [nats_url],
        TOTAL,
        RATE,
        service={"shutdown_timeout": f"{SHUTDOWN_TIMEOUT_S:g}s"},
    )
    return exchange, archive, ssmd(config, ["connector", "archiver"])


def _publish_buffer(process: SsmdProcess) -> float:
    """Messages awaiting a JetStream ack, from the process's /metrics."""
    _, text = http_get(process.health_port, "/metrics")
    return metric(text, "ssmd_publish_buffer_messages")


async def _stream_last_seq(url: str) -> int:
    async with open_bridge([url]) as bridge:
        state = await bridge.stream_state(STREAM)
    assert state is not None
    return state.last_seq


def test_sigterm_archives_everything_acknowledged_before_exit(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    exchange, archive, process = _combined(tmp_path, nats_server.url)
    with reaped(process):
        process.start()
        process.wait_ready()
        # Mid-flow: messages arrive at the moment of the stop.
        exchange.wait_sent(6_000, timeout=60)
        code, seconds = process.terminate(timeout=SHUTDOWN_TIMEOUT_S + 10)
    log = process.log.read_text()
    assert code == 0, log[-3000:]
    assert seconds < SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S, seconds
    exchange.close()

    # No second run: what this process left is what the archive holds.
    last_seq = trio.run(_stream_last_seq, nats_server.url)
    records = archive_records(archive)
    assert [r["_seq"] for r in records] == list(range(1, last_seq + 1)), (
        f"archived up to {records[-1]['_seq'] if records else None} of {last_seq}"
    )
    final = records[-1]
    assert final["type"] == "ssmd_disconnect", final
    assert str(final["reason"]).startswith(CLEAN_STOP), final
    run_verify(archive)
    result = compare(archive, exchange.sent_log)
    assert result.archived >= 6_000 and result.lost == 0, result
    print(f"stopped in {seconds:.2f}s; archived {len(records)} = stream last seq {last_seq}")


def test_sigterm_with_nats_hung_exits_within_the_shutdown_timeout(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    exchange, _, process = _combined(tmp_path, nats_server.url)
    assert nats_server.process is not None
    try:
        with reaped(process):
            process.start()
            process.wait_ready()
            exchange.wait_sent(3_000, timeout=60)
            nats_server.process.send_signal(signal.SIGSTOP)
            # Publishes stuck inside the bridge: the buffer grows past what is normally
            # in flight (a few hundred messages at this rate).
            wait_until(lambda: _publish_buffer(process) > 1_000, 60, "publishes stuck")
            code, seconds = process.terminate(timeout=SHUTDOWN_TIMEOUT_S + 20)
    finally:
        nats_server.process.send_signal(signal.SIGCONT)
        exchange.close()
    log = process.log.read_text()
    # Nothing can be acknowledged: a forced stop (exit 1), but on time.
    assert code in (0, 1), log[-3000:]
    assert seconds < SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S, (seconds, log[-3000:])
    print(f"exit {code} after {seconds:.2f}s with NATS stopped")
