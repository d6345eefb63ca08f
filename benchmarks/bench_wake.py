"""What this machine charges a process for waking up, before it does anything.

A loop that only sleeps and wakes: CPU time charged per wake (`time.process_time()`),
how late each wake arrives, and the share of one core, for Trio's `sleep` at several
intervals and for a bare `epoll.poll` with no Python around it. On the build VM the
time spent coming back from idle is charged to the process that wakes, and it grows
with the idle time before it (the README's "CPU at Kalshi's rates" says why). Every
CPU figure in `bench_cpu` includes this price once per wake, so read them beside it
(`bench_cpu --only null` is the same price in ssmd's thread shape).

    .venv/bin/python benchmarks/bench_wake.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import select
import sys
import time
from dataclasses import dataclass

import trio

INTERVALS_S = (0.01, 0.1, 1.0)
# Each row's figure is a mean over at least this many wakes.
MIN_WAKES = 5


@dataclass(frozen=True)
class Wakes:
    """A loop that slept `interval` seconds `count` times."""

    what: str
    interval: float
    count: int
    cpu_s: float
    elapsed_s: float

    @property
    def cpu_per_wake_ms(self) -> float:
        return self.cpu_s / self.count * 1e3

    @property
    def late_ms(self) -> float:
        return (self.elapsed_s / self.count - self.interval) * 1e3

    @property
    def core(self) -> float:
        return self.cpu_s / self.elapsed_s

    def __str__(self) -> str:
        return (
            f"{self.what:>12} every {self.interval * 1e3:6.0f} ms: "
            f"{self.cpu_per_wake_ms:7.3f} ms CPU a wake, {self.late_ms:6.2f} ms late, "
            f"{self.core * 100:5.2f}% of a core"
        )


async def trio_wakes(seconds: float, intervals: tuple[float, ...] = INTERVALS_S) -> list[Wakes]:
    out = []
    for interval in intervals:
        count = max(MIN_WAKES, round(seconds / interval))
        cpu, start = time.process_time(), time.perf_counter()
        for _ in range(count):
            await trio.sleep(interval)
        elapsed = time.perf_counter() - start
        out.append(Wakes("trio.sleep", interval, count, time.process_time() - cpu, elapsed))
    return out


def epoll_wakes(seconds: float, interval: float = 1.0) -> Wakes:
    poller = select.epoll()
    count = max(MIN_WAKES, round(seconds / interval))
    cpu, start = time.process_time(), time.perf_counter()
    for _ in range(count):
        poller.poll(interval)
    elapsed = time.perf_counter() - start
    poller.close()
    return Wakes("epoll.poll", interval, count, time.process_time() - cpu, elapsed)


def wake_child(seconds: float) -> list[Wakes]:
    """Every row, measured in this process (run_all runs it in a fresh one)."""
    return [*trio.run(trio_wakes, seconds), epoll_wakes(seconds)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per interval")
    args = parser.parse_args()
    for wakes in wake_child(args.seconds):
        print(wakes, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
