"""The disk under the archiver fills up, or turns slow, while the exchange keeps sending.

The real `ssmd` process (connector and archiver in one) runs through
`tests.faults.faulty_ssmd`, which hands the archiver a FileOps that the test steers with
files: `disk-full` (create, pwrite and fsync fail with ENOSPC) and `fsync-delay`.
Meanwhile `JetStreamWatch` samples the durable consumer and the stream from JetStream
itself (nats-py, not ssmd's bridge) and the process's RSS from /proc.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import nats
import nats.js.errors

from ssmd.archiver.files import PARTIAL_SUFFIX, GzipLines, line_identity
from ssmd.nats.server import NatsServer, free_port
from tests.faults.faulty_ssmd import DISK_FULL, ENOSPC_MARK, FAULT_DIR_ENV, FSYNC_DELAY
from tests.faults.harness import (
    CONSUMER,
    FEED,
    ROOT,
    STREAM,
    Exchange,
    finish_and_compare,
    reaped,
    ssmd,
    write_config,
)
from tests.procs import SsmdProcess, http_get, metric, wait_until

RATE = 5_000
BATCH = 500
QUEUE_BATCHES = 4
# What start_archiver asks of JetStream: at most this many delivered and not yet acked.
MAX_ACK_PENDING = BATCH * (QUEUE_BATCHES + 4)


@attrs.frozen
class Sample:
    t: float
    ack_floor: int
    delivered: int  # highest stream sequence delivered to the archiver
    num_pending: int  # matching messages not yet delivered: the backlog left in JetStream
    num_ack_pending: int  # delivered, not yet acknowledged: what the process may hold
    last_seq: int  # the stream's last sequence: what the connector has recorded
    stream_bytes: int  # what JetStream stores for the stream's messages
    redelivered: int
    rss_kib: int


class JetStreamWatch:
    """Samples the archiver's consumer, the stream and the process RSS every `every` s.

    A thread of its own with its own asyncio loop and nats-py connection, so the test's
    view of JetStream does not go through the code under test.
    """

    def __init__(self, nats_url: str, every: float = 0.1) -> None:
        self.nats_url = nats_url
        self.every = every
        self.pid: int | None = None
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> JetStreamWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._error is not None and exc_info[0] is None:
            raise self._error

    def latest(self) -> Sample:
        assert self.samples, "no sample yet"
        return self.samples[-1]

    def since(self, t: float) -> list[Sample]:
        return [s for s in self.samples if s.t >= t]

    def wait(self, predicate: Callable[[Sample], bool], timeout: float, what: str) -> Sample:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.samples and predicate(self.samples[-1]):
                return self.samples[-1]
            time.sleep(self.every / 2)
        raise TimeoutError(f"not {what} within {timeout}s; last {self.samples[-1:]}")

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._sample_until_stopped())
        except BaseException as exc:
            self._error = exc
        finally:
            loop.close()

    async def _sample_until_stopped(self) -> None:
        nc = await nats.connect(self.nats_url)
        js = nc.jetstream()
        try:
            while not self._stop.is_set():
                try:
                    consumer = await js.consumer_info(STREAM, CONSUMER)
                    stream = await js.stream_info(STREAM)
                except nats.js.errors.NotFoundError:
                    await asyncio.sleep(self.every)
                    continue
                self.samples.append(
                    Sample(
                        t=time.monotonic(),
                        ack_floor=int(consumer.ack_floor.stream_seq or 0),
                        delivered=int(consumer.delivered.stream_seq or 0),
                        num_pending=int(consumer.num_pending or 0),
                        num_ack_pending=int(consumer.num_ack_pending or 0),
                        last_seq=int(stream.state.last_seq),
                        stream_bytes=int(stream.state.bytes),
                        redelivered=int(consumer.num_redelivered or 0),
                        rss_kib=rss_kib(self.pid),
                    )
                )
                await asyncio.sleep(self.every)
        finally:
            await nc.close()


def rss_kib(pid: int | None, field: str = "VmRSS") -> int:
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def faulty_ssmd(config: Path, fault_dir: Path) -> SsmdProcess:
    """Connector and archiver in one process, on the disk the test controls."""
    process = ssmd(config, ["connector", "archiver"], module="tests.faults.faulty_ssmd")
    assert process.env is not None
    fault_dir.mkdir(exist_ok=True)
    process.env[FAULT_DIR_ENV] = str(fault_dir)
    process.env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), process.env.get("PYTHONPATH", "")) if p
    )
    return process


def highest_seq_on_disk(archive: Path) -> int:
    """The highest `_seq` readable from every archive file, finished or partial."""
    highest = 0
    for path in (archive / FEED).rglob("*.jsonl.gz*"):
        if not (path.name.endswith(PARTIAL_SUFFIX) or path.name.endswith(".jsonl.gz")):
            continue
        for line in GzipLines(path):
            ident = line_identity(line)
            if ident is not None:
                highest = max(highest, ident[0])
    return highest


def stop_cleanly(process: SsmdProcess) -> None:
    code, _ = process.terminate()
    assert code == 0, process.log.read_text()[-3000:]


# A cap the run never reaches: the exchange ends its stream half a second after
# archiving resumed (`end_after`).
DISK_FULL_TOTAL = 1_000_000
DISK_FULL_S = 4.0


def test_full_disk_pauses_archiving_unready_and_resumes_with_nothing_lost(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    faults = tmp_path / "faults"
    port = free_port()
    exchange = Exchange(tmp_path / "exchange", DISK_FULL_TOTAL, RATE)
    archive = tmp_path / "archive"
    config = write_config(
        tmp_path / "ssmd.toml",
        [nats_server.url],
        exchange.url,
        archive,
        # The disk stays full longer than ack_wait: JetStream's redeliveries of what
        # the stuck archiver holds must not end up archived twice.
        archiver={"batch_size": BATCH, "queue_batches": QUEUE_BATCHES, "ack_wait": "2s"},
        service={"health_port": port},
    )
    process = faulty_ssmd(config, faults)
    with JetStreamWatch(nats_server.url) as watch, reaped(process):
        process.start()
        assert process.proc is not None
        watch.pid = process.proc.pid
        process.wait_ready()
        watch.wait(lambda s: s.ack_floor >= 5_000, 30, "archiving")

        (faults / DISK_FULL).touch()
        wait_until(lambda: "disk full" in http_get(port, "/ready")[1], 10, "unready")
        assert http_get(port, "/ready")[0] == 503
        assert metric(http_get(port, "/metrics")[1], "ssmd_archive_disk_full") == 1
        # An ack sent just before the failed write may still land; then nothing moves.
        time.sleep(1.0)
        full_since = time.monotonic()
        floor = watch.latest().ack_floor
        recorded_at_full = watch.latest().last_seq
        while time.monotonic() - full_since < DISK_FULL_S:
            status, body = http_get(port, "/ready")
            assert status == 503 and "disk full" in body, (status, body)
            time.sleep(0.25)
        full = watch.since(full_since)
        assert {s.ack_floor for s in full} == {floor}, "acknowledged while the disk was full"
        # Everything acknowledged is on disk (only fsynced blocks survive a failed write).
        assert highest_seq_on_disk(archive) >= floor
        # The connector went on recording into JetStream, where the backlog waits.
        assert full[-1].last_seq - recorded_at_full > RATE * DISK_FULL_S / 2, full[-1]
        assert full[-1].num_pending > full[0].num_pending
        assert max(s.num_ack_pending for s in full) <= MAX_ACK_PENDING
        # The fault injector's own mark, one per failed write (not ssmd's log).
        retries = process.log.read_text().count(ENOSPC_MARK)
        assert retries >= 3, "the archiver should keep retrying the write"

        (faults / DISK_FULL).unlink()
        wait_until(lambda: http_get(port, "/ready")[0] == 200, 40, "ready again")
        recovered = http_get(port, "/metrics")[1]
        assert metric(recovered, "ssmd_archive_disk_full") == 0
        # One pause for the whole outage, however many writes were retried.
        assert metric(recovered, "ssmd_archive_disk_full_events_total") == 1
        watch.wait(lambda s: s.ack_floor > floor, 10, "acknowledging again")
        sent = exchange.end_after(RATE // 2)
        caught_up = watch.wait(
            lambda s: s.ack_floor == s.last_seq and s.num_pending == 0, 30, "caught up"
        )
        stop_cleanly(process)
    peak_pending = max(s.num_pending for s in watch.samples)
    redelivered = max(s.redelivered for s in watch.samples)
    result = finish_and_compare(exchange, config, archive)
    assert result.sent == sent
    assert result.lost == 0, result
    assert result.archived == sent
    assert result.discontinuities.get("connect") == 1, result
    assert redelivered > 0, "the pause outlasted ack_wait: JetStream should have redelivered"
    print(
        f"ack floor held at {floor} for {DISK_FULL_S:.0f}s while the stream grew to "
        f"{full[-1].last_seq}; {retries} ENOSPC injected; peak pending {peak_pending}; "
        f"{redelivered} redelivered; caught up at seq {caught_up.last_seq}; {result}"
    )


SLOW_TOTAL = 100_000
SLOW_RATE = 8_000
FSYNC_DELAY_S = 0.5
# Once the archiver holds its full window (MAX_ACK_PENDING messages delivered and not
# acked: ~0.6 KiB each as Python objects, ~2.4 MiB) a growing backlog must not grow the
# process. The bound leaves room for allocator noise (0.5-2.6 MiB seen) and is well under
# what holding the backlog would take (checked below: at least twice the bound). An
# archiver patched to pull without limit fails all three checks: ~2k pending left in
# JetStream, 84k delivered and unacked, RSS +64 MiB.
RSS_GROWTH_BOUND_KIB = 8 * 1024


def test_slow_disk_holds_the_backlog_in_jetstream_not_in_memory(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    faults = tmp_path / "faults"
    port = free_port()
    exchange = Exchange(tmp_path / "exchange", SLOW_TOTAL, SLOW_RATE)
    archive = tmp_path / "archive"
    config = write_config(
        tmp_path / "ssmd.toml",
        [nats_server.url],
        exchange.url,
        archive,
        archiver={"batch_size": BATCH, "queue_batches": QUEUE_BATCHES},
        service={"health_port": port},
    )
    process = faulty_ssmd(config, faults)
    with JetStreamWatch(nats_server.url) as watch, reaped(process):
        process.start()
        assert process.proc is not None
        watch.pid = process.proc.pid
        process.wait_ready()
        watch.wait(lambda s: s.ack_floor >= 5_000, 30, "archiving")
        before = watch.latest()

        (faults / FSYNC_DELAY).write_text(str(FSYNC_DELAY_S))
        slow_since = time.monotonic()
        # At most BATCH messages per fsync: the archiver keeps up with an eighth of the
        # exchange's rate, and the rest has to wait somewhere.
        exchange.wait(lambda s: s["done"], timeout=60)
        status, body = http_get(port, "/ready")
        assert status == 200, body  # slow is not broken
        lifted_at = time.monotonic()
        (faults / FSYNC_DELAY).unlink()
        caught_up = watch.wait(
            lambda s: s.ack_floor == s.last_seq and s.num_pending == 0, 60, "caught up"
        )
        metrics = http_get(port, "/metrics")[1]
        peak_rss = rss_kib(watch.pid, "VmHWM")
        stop_cleanly(process)

    slow = [s for s in watch.since(slow_since) if s.t <= lifted_at]
    after = watch.since(slow_since)
    peak = max(slow, key=lambda s: s.num_pending)
    # Backpressure reached the fetcher: the backlog piled up in JetStream...
    assert peak.num_pending > 5 * MAX_ACK_PENDING, peak
    # ...while the archiver never held more than its window, lagging or catching up.
    assert max(s.num_ack_pending for s in after) <= MAX_ACK_PENDING
    assert max(s.delivered - s.ack_floor for s in after) <= MAX_ACK_PENDING
    # Memory follows the window, not the backlog: nothing grows once the window is full.
    window_full = next(s for s in slow if s.num_ack_pending >= 0.95 * MAX_ACK_PENDING)
    growth = max(s.rss_kib for s in after) - window_full.rss_kib
    assert growth < RSS_GROWTH_BOUND_KIB, (growth, window_full, peak)
    # The scenario can tell: in memory, the backlog would take at least what JetStream
    # stores for it, at least twice the bound.
    backlog_kib = (peak.num_pending - window_full.num_pending) * peak.stream_bytes
    backlog_kib //= peak.last_seq * 1024
    assert backlog_kib > 2 * RSS_GROWTH_BOUND_KIB, backlog_kib
    fsyncs = metric(metrics, "ssmd_archive_fsync_seconds_count")
    fsync_s = metric(metrics, "ssmd_archive_fsync_seconds_sum")
    result = finish_and_compare(exchange, config, archive)
    assert result.sent == SLOW_TOTAL
    assert result.lost == 0, result
    assert result.archived == SLOW_TOTAL
    print(
        f"before: {before}; window full: {window_full}; peak: {peak}; "
        f"ack pending max {max(s.num_ack_pending for s in after)}; RSS growth after the "
        f"window filled {growth} KiB (backlog stored {backlog_kib} KiB), max "
        f"{max(s.rss_kib for s in after)} KiB, VmHWM {peak_rss} KiB; {fsyncs:.0f} fsyncs, "
        f"{fsync_s:.1f}s in fsync; caught up at {caught_up.last_seq} "
        f"{caught_up.t - lifted_at:.1f}s after the delay was lifted; {result}"
    )
