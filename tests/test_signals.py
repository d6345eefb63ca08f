"""SIGTERM is never lost, wherever in start-up it lands."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import sys, time, trio
    from ssmd.signals import catch_early_signals
    from ssmd.supervisor import supervise

    catch_early_signals()

    async def start_roles(sup):
        # Start-up work that does not yield to Trio (imports, key parsing): the signal
        # arrives while the supervisor's own signal task has not run yet.
        print("blocking", flush=True)
        time.sleep(1.0)
        sup.start_producer("forever", trio.sleep_forever)

    sys.exit(trio.run(lambda: supervise(start_roles, shutdown_timeout=5)))
    """
)


def test_sigterm_while_start_up_blocks_is_not_lost() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"blocking\n"
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
