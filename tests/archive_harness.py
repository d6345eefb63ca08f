"""Drive the archiver pipeline from memory channels, under Trio's fake clock.

The fetcher is replaced by a channel the test feeds; file I/O runs inline (no worker
thread), so virtual time only moves when the test sleeps.
"""

from __future__ import annotations

import calendar
import errno
import gzip
import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

from ssmd.archiver.fetcher import Batch, RotateTick
from ssmd.archiver.files import FileOps
from ssmd.archiver.recovery import lock_feed_dir, recover_feed
from ssmd.archiver.service import ArchiverStatus, PipelineSettings, start_pipeline
from ssmd.clock import WallClock
from ssmd.nats.types import FetchedMessage
from ssmd.supervisor import Supervisor, supervise

NS = 1_000_000_000


def utc_ns(year: int, month: int, day: int, hour: int, minute: int, second: float = 0) -> int:
    return int((calendar.timegm((year, month, day, hour, minute, 0)) + second) * NS)


async def run_inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def message(
    seq: int, ticker: str = "KXBTCD-26FEB14-T100000", kind: str = "trade"
) -> FetchedMessage:
    payload = json.dumps({"type": kind, "sid": 1, "seq": seq, "msg": {"market_ticker": ticker}})
    return FetchedMessage(
        subject=f"prod.kalshi.json.{kind}.{ticker.replace('.', '%2E')}",
        data=payload.encode(),
        stream_seq=seq,
        consumer_seq=seq,
        delivered=1,
        recv_ns=1_700_000_000_000_000_000 + seq,
        reply=f"ack.{seq}",
    )


def batch(first: int, last: int, **kwargs: Any) -> Batch:
    msgs = [message(s, **kwargs) for s in range(first, last + 1)]
    return Batch(msgs, msgs[-1].reply if msgs else None)


def write_archive(root: Path, start_ns: int, *steps: Batch | float) -> None:
    """The archive the archiver writes under `root` on a fake clock set to `start_ns`: each
    Batch of `steps` is sent in turn, each number is that many seconds slept."""

    async def build() -> None:
        h = Harness(root)
        async with trio.open_nursery() as nursery:
            await h.start(nursery, WallClock(start_ns))
            for step in steps:
                if isinstance(step, Batch):
                    await h.send.send(step)
                else:
                    await trio.sleep(step)
            assert await h.stop() == 0

    trio.run(build, clock=trio.testing.MockClock(autojump_threshold=0))


class RecordingOps(FileOps):
    """Real file operations that remember what was durable at each fsync, and can fail."""

    def __init__(self) -> None:
        self.durable: dict[int, bytes] = {}
        self.paths: dict[int, Path] = {}
        self.full_writes = 0
        self.fsync_calls = 0

    def create(self, path: Path) -> int:
        fd = super().create(path)
        self.paths[fd] = path
        return fd

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        if self.full_writes > 0:
            self.full_writes -= 1
            # Write part of the block, as a real full disk may, then fail.
            super().pwrite(fd, data[: len(data) // 2], offset)
            raise OSError(errno.ENOSPC, "No space left on device")
        super().pwrite(fd, data, offset)

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        self.fsync_calls += 1
        with open(self.paths[fd], "rb") as f:
            self.durable[fd] = f.read()

    def durable_seqs(self) -> set[int]:
        seqs: set[int] = set()
        for data in self.durable.values():
            text = zlib.decompressobj(31).decompress(data)
            for line in text.split(b"\n"):
                if line:
                    seqs.add(json.loads(line)["_seq"])
        return seqs


class Harness:
    def __init__(
        self, root: Path, interval_s: int = 900, ops: FileOps | None = None, feed: str = "kalshi"
    ) -> None:
        self.root = root
        self.feed = feed
        self.feed_dir = root / feed
        self.interval_s = interval_s
        self.ops = ops or FileOps()
        self.status = ArchiverStatus()
        self.acked: list[str] = []
        self.ack_check: Callable[[str], None] | None = None
        self.sup: Supervisor | None = None
        self.exit_code: int | None = None
        self.send: trio.MemorySendChannel[Batch]
        self._receive: trio.MemoryReceiveChannel[Batch]
        self.send, self._receive = trio.open_memory_channel[Batch](0)
        self.done = trio.Event()
        self.clock: WallClock

    async def _ack(self, reply: str) -> None:
        if self.ack_check is not None:
            self.ack_check(reply)
        self.acked.append(reply)

    async def _source(self, send: trio.MemorySendChannel[Batch | RotateTick]) -> None:
        async with send:
            async for item in self._receive:
                await send.send(item)

    async def start(
        self, nursery: trio.Nursery, clock: WallClock, shutdown_timeout: float = 5
    ) -> None:
        self.clock = clock
        report = recover_feed(
            self.feed_dir, self.feed, self.interval_s, f"{self.interval_s}s", 6, self.ops
        )
        self.status.cursor = report.cursor
        lock_fd = lock_feed_dir(self.feed_dir)
        settings = PipelineSettings(
            self.feed_dir, self.feed, self.interval_s, f"{self.interval_s}s"
        )
        started = trio.Event()

        async def start_roles(sup: Supervisor) -> None:
            self.sup = sup
            start_pipeline(
                sup,
                settings,
                clock,
                self._source,
                self._ack,
                self.status,
                ops=self.ops,
                run_sync=run_inline,
                on_exit=lambda: __import__("os").close(lock_fd),
            )
            started.set()

        async def runner() -> None:
            self.exit_code = await supervise(
                start_roles, shutdown_timeout=shutdown_timeout, handle_signals=False
            )
            self.done.set()

        nursery.start_soon(runner)
        await started.wait()

    async def stop(self) -> int:
        """End the input (as a cancelled fetcher would), then wait for the drain."""
        await self.send.aclose()
        await self.done.wait()
        assert self.exit_code is not None
        return self.exit_code

    def day_dir(self, day: str) -> Path:
        return self.feed_dir / day

    def manifest(self, day: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.day_dir(day) / "manifest.json").read_text())
        return result

    def lines(self, day: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for entry in self.manifest(day)["files"]:
            with gzip.open(self.day_dir(day) / entry["name"]) as g:
                out.extend(json.loads(line) for line in g)
        return out
