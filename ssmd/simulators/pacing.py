"""The market clock of the simulated venues: events at a rate, in small ticks."""

from __future__ import annotations

from collections.abc import Callable

import trio

SEND_TICK_S = 0.02


async def pace(
    rate: Callable[[], float], active: Callable[[], bool], step: Callable[[], object]
) -> None:
    """Call `step` `rate()` times a second while `active()`, forever (never when the rate
    is 0 at the start). Ticks of SEND_TICK_S; a late tick catches up at most one second,
    and an idle one banks nothing."""
    if rate() <= 0:
        await trio.sleep_forever()
    budget = 0.0
    deadline = trio.current_time()
    while True:
        deadline += SEND_TICK_S
        await trio.sleep_until(deadline)
        deadline = max(deadline, trio.current_time() - 1.0)
        if not active():
            budget = 0.0
            continue
        budget = min(budget + rate() * SEND_TICK_S, rate())
        while budget >= 1:
            budget -= 1
            step()
