"""One clock that turns Trio time into UTC wall time.

Everything time-driven (slot rotation, receive stamps, backoff) reads this clock, so a
`trio.testing.MockClock` drives wall-clock behaviour in tests as well.
"""

from __future__ import annotations

import math
import time

import trio

NS = 1_000_000_000
_RESYNC_THRESHOLD_NS = NS // 2


class WallClock:
    """UTC nanoseconds derived from `trio.current_time()` and a wall-clock anchor.

    Built with `anchor_ns`, it is fully virtual (tests). Built without, it anchors to
    the system clock and `resync()` re-anchors when the two drift apart (NTP steps).
    Must be created inside `trio.run`.
    """

    def __init__(self, anchor_ns: int | None = None) -> None:
        self._follows_system = anchor_ns is None
        self._anchor_trio = trio.current_time()
        self._anchor_ns = time.time_ns() if anchor_ns is None else anchor_ns

    def now_ns(self) -> int:
        return self._anchor_ns + int((trio.current_time() - self._anchor_trio) * NS)

    def trio_time_at(self, wall_ns: int) -> float:
        return self._anchor_trio + (wall_ns - self._anchor_ns) / NS

    async def sleep_until(self, wall_ns: int) -> None:
        """Sleep until the wall clock reads at least `wall_ns`."""
        while self.now_ns() < wall_ns:
            target = self.trio_time_at(wall_ns)
            now = trio.current_time()
            if target <= now:
                # Float rounding left the wall clock a nanosecond short at the computed
                # time: step past it, or this loop would spin without time moving.
                target = max(math.nextafter(now, math.inf), now + 1e-9)
            await trio.sleep_until(target)
            self.resync()

    def resync(self) -> None:
        if not self._follows_system:
            return
        drift = time.time_ns() - self.now_ns()
        if abs(drift) > _RESYNC_THRESHOLD_NS:
            self._anchor_trio = trio.current_time()
            self._anchor_ns = time.time_ns()
