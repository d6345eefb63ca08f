"""A crash right after the consumer is recreated loses nothing (real nats-server).

nats-server gives a consumer created at sequence S an ack floor of S-1 at once, so
creating one acts as an ack. The fetcher recreates its consumer on a reconnect; if it
did so after what it had forwarded rather than what the writer had fsynced, a crash
before the queued batches reached the disk would resume past them, with no gap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from ssmd.archiver.files import FileOps
from ssmd.archiver.service import ArchiverStatus, start_archiver
from ssmd.clock import WallClock
from ssmd.config import Config, load_config
from ssmd.nats.bridge import NatsBridge, open_bridge
from ssmd.nats.server import NatsServer
from ssmd.supervisor import EXIT_FAILURE, EXIT_OK, Supervisor, supervise
from tests.archive_harness import utc_ns
from tests.procs import (
    archived_records,
    check_manifests,
    publish_range,
    stream_spec,
    wait_for_ack_floor,
    write_config,
)

pytestmark = pytest.mark.trio

STREAM = "MARKETDATA"
CONSUMER = "archiver-kalshi"
# A minute into a 15-minute slot: no rotation while a test runs.
ANCHOR_NS = utc_ns(2026, 2, 14, 12, 1)


class SimulatedCrash(Exception):
    pass


class StallingOps(FileOps):
    """Real file operations; once `hold` is set, the next fsync stalls until `release`,
    then the process "dies" there: the writer fails, and nothing after that block is
    ever written (what is queued for the writer dies with it, as under kill -9)."""

    def __init__(self) -> None:
        self.hold = threading.Event()
        self.stalled = threading.Event()
        self.release = threading.Event()

    def fsync(self, fd: int) -> None:
        if self.hold.is_set():
            self.stalled.set()
            self.release.wait(120)
            raise SimulatedCrash("killed before this fsync returned")
        super().fsync(fd)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


class ArchiverRun:
    """One archiver "process" inside the test, on the test's bridge."""

    def __init__(self, config: Config, bridge: NatsBridge, ops: FileOps) -> None:
        self.config = config
        self.bridge = bridge
        self.ops = ops
        self.status = ArchiverStatus()
        self.sup: Supervisor | None = None
        self.exit_code: int | None = None
        self.done = trio.Event()

    async def start(self, nursery: trio.Nursery) -> None:
        started = trio.Event()

        async def roles(sup: Supervisor) -> None:
            self.sup = sup
            await start_archiver(
                sup,
                self.config,
                self.bridge,
                WallClock(ANCHOR_NS),
                status=self.status,
                ops=self.ops,
            )
            started.set()

        async def run() -> None:
            self.exit_code = await supervise(roles, shutdown_timeout=20.0, handle_signals=False)
            self.done.set()

        nursery.start_soon(run)
        await started.wait()

    async def stop(self) -> int:
        assert self.sup is not None
        self.sup.request_stop("test")
        await self.done.wait()
        assert self.exit_code is not None
        return self.exit_code


def archive_config(tmp_path: Path, nats_server: NatsServer) -> tuple[Config, Path]:
    """The archiver's config on `nats_server`, and the Kalshi feed's archive directory."""
    config = load_config(
        write_config(tmp_path / "ssmd.toml", nats_server.url, tmp_path / "archive")
    )
    return config, tmp_path / "archive" / "kalshi"


async def archive_until_acked(config: Config, bridge: NatsBridge, seq: int) -> None:
    """A fresh archiver run, stopped cleanly once the ack floor reaches `seq`."""
    run = ArchiverRun(config, bridge, FileOps())
    async with trio.open_nursery() as nursery:
        await run.start(nursery)
        await wait_for_ack_floor(bridge, seq)
        assert await run.stop() == EXIT_OK


def archived_seqs(feed_dir: Path) -> list[int]:
    return [r["_seq"] for r in archived_records(feed_dir)]


async def test_a_crash_after_a_reconnect_with_batches_in_flight_loses_nothing(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    config, feed_dir = archive_config(tmp_path, nats_server)
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.kalshi.json.>"]))
        await publish_range(bridge, 1, 50)
        ops = StallingOps()
        first = ArchiverRun(config, bridge, ops)
        async with trio.open_nursery() as nursery:
            await first.start(nursery)
            try:
                await until(lambda: first.status.writer.durable_seq == 50, "1..50 fsynced")
                # The writer stalls in the fsync of 51..60; 61..70 queue behind it.
                ops.hold.set()
                await publish_range(bridge, 51, 60)
                await until(ops.stalled.is_set, "the writer stalled")
                await publish_range(bridge, 61, 70)
                await until(lambda: first.status.fetcher.fetched == 70, "61..70 forwarded")
                # NATS reconnects: the fetcher recreates its consumer.
                resets = first.status.fetcher.consumer_resets
                bridge.reconnects += 1
                await until(lambda: first.status.fetcher.consumer_resets > resets, "reopened")
                floor = await bridge.consumer_ack_floor(STREAM, CONSUMER)
                durable = first.status.writer.durable_seq
                assert floor is not None and durable == 50
                assert floor <= durable, "recreating the consumer acked what is not on disk"
            finally:
                ops.release.set()  # the process dies in that fsync
            await first.done.wait()
        assert first.exit_code == EXIT_FAILURE

        await archive_until_acked(config, bridge, 70)
    seqs = archived_seqs(feed_dir)
    assert sorted(seqs) == list(range(1, 71)), "a message was lost"
    assert len(seqs) == len(set(seqs)), "a message was archived twice"
    assert check_manifests(feed_dir)["gaps"] == []


@pytest.mark.parametrize(
    ("kept_from", "gaps"),
    [
        # The stream still holds everything: 51..70 are archived, no gap.
        (None, []),
        # The stream has since dropped 51..60: a gap of 10 after 50 is recorded.
        (61, [(50, 10)]),
    ],
)
async def test_start_up_resumes_after_the_archive_not_a_higher_ack_floor(
    tmp_path: Path, nats_server: NatsServer, kept_from: int | None, gaps: list[tuple[int, int]]
) -> None:
    """A consumer whose ack floor is past the archive's end (here one recreated at 71
    while the archive ends at 50, as a crash after a reconnect leaves it) does not say
    51..70 are archived: start-up resumes after the archive, re-takes what the stream
    still holds and records what it no longer does as a gap."""
    config, feed_dir = archive_config(tmp_path, nats_server)
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.kalshi.json.>"]))
        await publish_range(bridge, 1, 50)
        first = ArchiverRun(config, bridge, FileOps())
        async with trio.open_nursery() as nursery:
            await first.start(nursery)
            await until(lambda: first.status.writer.durable_seq == 50, "1..50 archived")
            assert await first.stop() == EXIT_OK
        await publish_range(bridge, 51, 80)
        consumer = await bridge.reset_consumer(
            STREAM, CONSUMER, "prod.kalshi.json.>", 71, 60.0, max_ack_pending=1000
        )
        await consumer.close()
        assert await bridge.consumer_ack_floor(STREAM, CONSUMER) == 70
        if kept_from is not None:
            await bridge._call(bridge._js.purge_stream, STREAM, kept_from)
            state = await bridge.stream_state(STREAM)
            assert state is not None and state.first_seq == kept_from

        await archive_until_acked(config, bridge, 80)
    seqs = archived_seqs(feed_dir)
    kept = range(51, 81) if kept_from is None else range(kept_from, 81)
    assert seqs == [*range(1, 51), *kept]
    recorded = check_manifests(feed_dir)["gaps"]
    assert [(g["after_seq"], g["missing_count"]) for g in recorded] == gaps
