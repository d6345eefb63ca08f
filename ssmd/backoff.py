"""One retry policy for every loop that waits out a failure.

`Backoff` is the value (built from config or a constant); `Retry` is one loop's use of
it: count a failure, sleep the next delay, reset after a success. Delays double from
`initial` up to `maximum`; with `jitter`, each is drawn from the upper `jitter` fraction
of its step, so many clients that failed together do not retry together.
"""

from __future__ import annotations

import random

import attrs
import trio

# 2**62 times any positive initial delay exceeds every useful maximum; a larger exponent
# would overflow a float after about a thousand failures.
_MAX_DOUBLINGS = 62


@attrs.frozen
class Backoff:
    initial: float
    maximum: float
    jitter: float = 0.0

    def __attrs_post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {self!r}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"backoff jitter is a fraction in [0, 1], got {self.jitter}")

    def step(self, failures: int) -> float:
        """The un-jittered delay after `failures` consecutive failures (0 = the first)."""
        return min(self.maximum, self.initial * 2.0 ** min(failures, _MAX_DOUBLINGS))

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        step = self.step(failures)
        if not self.jitter:
            return step
        return (rng or random).uniform(step * (1.0 - self.jitter), step)

    def retry(self, rng: random.Random | None = None) -> Retry:
        return Retry(self, rng or random.Random())


@attrs.define
class Retry:
    """A loop's failure count under one `Backoff`."""

    policy: Backoff
    rng: random.Random = attrs.field(factory=random.Random)
    failures: int = 0

    def next_delay(self) -> float:
        """The delay to wait now, counting one more failure."""
        delay = self.policy.delay(self.failures, self.rng)
        self.failures += 1
        return delay

    async def wait(self) -> float:
        """Count a failure and sleep its delay; returns the delay slept."""
        delay = self.next_delay()
        await trio.sleep(delay)
        return delay

    def reset(self) -> None:
        self.failures = 0
