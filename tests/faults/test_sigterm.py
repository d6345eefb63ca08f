"""SIGTERM at random moments, from mid-startup to full flow: every time a clean exit 0
within the shutdown deadline, and an archive that still compares clean at the end."""

from __future__ import annotations

import random
import signal
import time
from functools import partial
from pathlib import Path

from ssmd.nats.server import NatsServer
from tests.faults.harness import finish_and_compare, is_published, reaped, scenario, ssmd
from tests.procs import wait_until

# More than the exchange can send before the last stop, so data flows at every stop
# that waits for it; after the stops, half a second more and the exchange ends its
# stream (`end_after`).
TOTAL = 1_000_000
RATE = 10_000
STOPS = 10
SHUTDOWN_TIMEOUT_S = 5.0


def test_sigterm_at_random_moments_exits_0_within_the_deadline(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    rng = random.Random(6)
    exchange, config, archive = scenario(
        tmp_path,
        [nats_server.url],
        TOTAL,
        RATE,
        service={"shutdown_timeout": f"{SHUTDOWN_TIMEOUT_S:g}s"},
    )
    process = ssmd(config, ["connector", "archiver"])
    exits: list[tuple[int, float]] = []
    with reaped(process):
        for stop in range(STOPS):
            process.start()
            # Before ssmd's first line runs, SIGTERM can only kill the interpreter.
            wait_until(lambda: process.catches(signal.SIGTERM), 30, "catching SIGTERM")
            if stop % 2:
                # Half the stops land while data flows, however slow start-up is.
                process.wait_ready()
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                # Start-up takes ~0.6 s to /ready on an idle machine: most of these
                # land during it, the rest just after.
                time.sleep(rng.uniform(0.0, 1.0))
            exits.append(process.terminate(timeout=SHUTDOWN_TIMEOUT_S + 10))
        process.start()
        sent = exchange.end_after(RATE // 2, timeout=120)
        wait_until(partial(is_published, process), 60, "all published")
        exits.append(process.terminate())
    assert [code for code, _ in exits] == [0] * (STOPS + 1), process.log.read_text()[-3000:]
    # The deadline, plus the interpreter's own exit.
    # The grace is the interpreter's own exit on a loaded machine; a shield that outlasts
    # the deadline costs 5 s or more.
    assert max(seconds for _, seconds in exits) < SHUTDOWN_TIMEOUT_S + 2.5, exits
    result = finish_and_compare(exchange, config, archive)
    assert result.sent == sent
    # A clean stop publishes a disconnect record for every connection it had, and one
    # that stopped after subscribing (at least the STOPS // 2 that waited for /ready)
    # unsubscribed first and lost nothing.
    assert result.discontinuities["disconnect"] >= result.discontinuities["connect"] - 1, result
    assert result.discontinuities["clean stop"] >= STOPS // 2, result
    print(exits, result)
