from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from ssmd.backoff import Backoff


def test_steps_double_up_to_the_maximum() -> None:
    policy = Backoff(0.5, 4.0)
    assert [policy.step(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_long_outage_never_overflows() -> None:
    assert Backoff(0.1, 30.0).step(5000) == 30.0


def test_jitter_stays_in_the_upper_fraction_of_the_step() -> None:
    policy = Backoff(1.0, 8.0, jitter=0.5)
    rng = random.Random(7)
    delays = [policy.delay(3, rng) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 100


@pytest.mark.parametrize(
    ("initial", "maximum", "jitter"), [(0.0, 1.0, 0.0), (2.0, 1.0, 0.0), (1.0, 2.0, 1.5)]
)
def test_nonsense_policies_are_refused(initial: float, maximum: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial, maximum, jitter)


async def test_retry_sleeps_its_delays_and_resets(autojump_clock: trio.testing.MockClock) -> None:
    retry = Backoff(1.0, 4.0).retry()
    start = trio.current_time()
    slept = [await retry.wait() for _ in range(4)]
    assert slept == [1.0, 2.0, 4.0, 4.0]
    assert trio.current_time() - start == pytest.approx(11.0)
    retry.reset()
    assert retry.next_delay() == 1.0
