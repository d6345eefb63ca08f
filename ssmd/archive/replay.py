"""Replay: archived records in stream order, paced by their receive times.

`speed` 1 replays in real time, N times as fast with N, and `None` as fast as the sink
takes them. Pacing uses Trio's clock (`trio.sleep_until`), so tests drive it with
MockClock. A record received earlier than one before it (a late retry) goes out right
after it: order is the stream's, never re-sorted by time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence

import trio

from ssmd.archive.records import Record
from ssmd.nats.bridge import NatsBridge
from ssmd.nats.types import CoreMessage

Sink = Callable[[Sequence[Record]], Awaitable[None]]
MAX_BATCH = 1000


async def replay(records: Iterable[Record], sink: Sink, speed: float | None = 1.0) -> int:
    """Send every record to `sink` (in batches of those due at once); returns the count."""
    if speed is not None and speed <= 0:
        raise ValueError("speed must be positive")
    start_trio: float | None = None
    start_ns: int | None = None
    due = 0.0
    batch: list[Record] = []
    sent = 0
    for record in records:
        if speed is not None and record.recv_ns is not None:
            if start_ns is None or start_trio is None:
                start_ns, start_trio = record.recv_ns, trio.current_time()
            due = max(due, start_trio + (record.recv_ns - start_ns) / 1e9 / speed)
            if due > trio.current_time():
                if batch:
                    await sink(batch)
                    sent += len(batch)
                    batch = []
                await trio.sleep_until(due)
        batch.append(record)
        if len(batch) >= MAX_BATCH:
            await sink(batch)
            sent += len(batch)
            batch = []
            await trio.lowlevel.checkpoint()
    if batch:
        await sink(batch)
        sent += len(batch)
    return sent


def nats_sink(bridge: NatsBridge, prefix: str | None = None) -> Sink:
    """Publish each record's payload on its original subject (under `prefix.`), with its
    receive time in `Ssmd-Recv-Ns` (a record without one is published without it) and,
    for a backfilled record, `Ssmd-Backfilled`: replayed, it reads as it did live."""

    async def publish(records: Sequence[Record]) -> None:
        await bridge.publish_core(
            [
                CoreMessage(
                    f"{prefix}.{r.subject}" if prefix else r.subject,
                    r.payload_bytes(),
                    r.recv_ns,
                    r.backfilled,
                )
                for r in records
            ]
        )

    return publish
