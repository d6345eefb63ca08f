"""How long a batch waits to fill: the linger, stretched at a trickle.

A linger (`archiver.linger`, `connector.publish_linger`) lets messages that arrive
close together cross the bridge, and reach the disk, as one batch. Each batch costs
thread wakeups and, in the archiver, an fsync, whatever its size; at Kalshi's quiet
rates a batch of one or two messages per linger made that per-batch cost most of the
CPU. So when a linger gathers at most half of `TRICKLE_BATCH` messages, the wait goes
on for as long as the observed rate needs to bring that many, up to `TRICKLE_STRETCH`
lingers in all. At 1,000 msg/s a default linger gathers more than that and nothing
changes (the latency goal is kept there); at 100 msg/s batches come 5x less often,
for up to 4 lingers more latency.
"""

from __future__ import annotations

TRICKLE_BATCH = 10
TRICKLE_STRETCH = 5


def stretch(linger: float, gathered: int) -> float:
    """Seconds more to wait after a linger of `linger` seconds gathered `gathered`
    messages (0: hand over now)."""
    if linger <= 0 or 2 * gathered > TRICKLE_BATCH:
        # Near the target a short extension would cost a wakeup of its own and gain
        # little: at 1,000 msg/s a 10 ms publish linger gathers 8 to 12.
        return 0.0
    per_message = linger / max(gathered, 1)
    return min((TRICKLE_BATCH - gathered) * per_message, (TRICKLE_STRETCH - 1) * linger)
