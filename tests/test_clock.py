"""WallClock under a fake clock: sleeping until a wall time always gets there."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from ssmd.clock import NS, WallClock


async def test_sleep_until_reaches_every_target_despite_float_rounding(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps = 0
    real_sleep_until = trio.sleep_until

    async def counted(deadline: float) -> None:
        nonlocal sleeps
        sleeps += 1
        if sleeps > 100_000:
            raise AssertionError("sleep_until spins without the clock moving")
        await real_sleep_until(deadline)

    monkeypatch.setattr(trio, "sleep_until", counted)
    await trio.sleep_until(86_399.789)  # a Trio time whose floats round coarsely
    clock = WallClock(anchor_ns=1_767_225_600_123_456_789)
    rng = random.Random(5)
    for _ in range(2000):
        target = clock.now_ns() + rng.randrange(1, 3 * NS)
        await clock.sleep_until(target)
        assert clock.now_ns() >= target
    assert sleeps < 10_000
