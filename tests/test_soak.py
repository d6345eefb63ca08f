"""Soak: memory stays flat under a steady stream, and nothing leaks across rotations.

`test_soak_steady_rate_memory_stays_flat` streams SSMD_SOAK_MESSAGES messages (150,000 by
default: about 15 s of streaming; the issue's soak is `SSMD_SOAK_MESSAGES=1000000`) at
SSMD_SOAK_RATE (10,000/s) from the paced exchange process through connector and archiver
in one `ssmd` process and a real nats-server, rotating every second. It samples the
process's RSS, open files, threads and publish buffer twice a second, and ends with the
independent comparison of the archive with every frame the exchange sent.
`SSMD_SOAK_RETAIN_EVERY_MESSAGE=1` plants a leak in the ssmd process (it keeps every
message it publishes), with which the test must fail.

`test_rotation_leaks_no_file_or_task_over_120_slots` drives the archiver's writer, rotation
timer and manifest writer through 120 one-minute slots (and a day rollover) under Trio's
fake clock, counting this process's open files and live Trio tasks after every rotation.
Two companion tests run the same probe against a slot file that is never closed and a
task that is never ended, so the probe is shown to catch both.

`test_publisher_counts_stay_bounded_as_tickers_come_and_go`: the connector's per-subject
ack counts, kept for /metrics, are bounded however many tickers a long run sees.
"""

from __future__ import annotations

import gzip
import json
import os
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from ssmd.archiver.files import FileOps
from ssmd.archiver.slots import slot_label
from ssmd.clock import WallClock
from ssmd.connector import publisher as publisher_module
from ssmd.connector.metrics import connector_metrics
from ssmd.connector.publisher import Inbound, Publisher
from ssmd.nats.server import NatsServer, free_port
from ssmd.nats.types import OutgoingMessage, PublishOutcome
from tests.archive_harness import Harness, batch, utc_ns
from tests.faults.harness import FEED, Exchange, finish_and_compare, ssmd, write_config

MiB = 1024 * 1024

SOAK_MESSAGES = int(os.environ.get("SSMD_SOAK_MESSAGES", "150000"))
SOAK_RATE = float(os.environ.get("SSMD_SOAK_RATE", "10000"))
# Memory is compared from the end of warm-up: imports, caches, the thread cache and
# pymalloc's arenas have reached their working size by then.
WARMUP_FRACTION = 0.2
SAMPLE_S = 0.5
# RSS may grow after warm-up by this much, plus what a deeper publish buffer explains.
# Measured on the 2-core build machine (10k msg/s, 1 s rotation): +0.3 MiB over 1M
# messages, +3 to +4 MiB over 150k (pymalloc fragmentation after a burst of a few
# thousand buffered messages). Retaining every message costs 0.5 KiB per message after
# warm-up (measured with SSMD_SOAK_RETAIN_EVERY_MESSAGE=1: +55 to +58 MiB over 150k
# against a bound of 19 MiB), ~400 MiB over 1M.
RSS_GROWTH_BOUND = 16 * MiB
# The connector's publish buffer is bounded by configuration (`buffer_messages`), not by
# this test: when the machine is short of CPU (other suites sharing its 2 cores) it runs
# tens of thousands of messages deep, and RSS keeps the high-water mark of that (measured
# ~0.8 KiB per buffered message: +35 MiB at 45,000 deep, with Python's allocated blocks
# back to their level once it drained). So the bound grows by this much per message
# that the buffer's high-water mark rose after warm-up. It stays far below what
# retaining every message costs while the buffer stays shallow, as it does on an
# otherwise idle machine (a few thousand deep).
BUFFERED_MESSAGE_RSS = 1024
# Open files may move by the slot file, the manifest's temp file and a directory fd
# that happen to be open at the sampling instant; one leaked per rotation would not fit.
FD_GROWTH_BOUND = 3
# Trio's thread cache keeps idle workers for 10 s, so the count moves a little.
THREAD_GROWTH_BOUND = 4


@attrs.frozen
class Sample:
    wall_ns: int
    sent: int
    rss: int
    fds: int
    threads: int
    buffered: int  # the connector's publish buffer, from /metrics


def sample_process(pid: int, sent: int, metrics_port: int | None = None) -> Sample:
    """RSS (bytes), open file descriptors and threads of a live process, from /proc."""
    fields: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    rss_kib = int(fields["VmRSS"].split()[0])
    return Sample(
        wall_ns=time.time_ns(),
        sent=sent,
        rss=rss_kib * 1024,
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(fields["Threads"]),
        buffered=publish_buffer(metrics_port) if metrics_port else 0,
    )


def publish_buffer(port: int) -> int:
    """`ssmd_publish_buffer_messages` from ssmd's /metrics; 0 until it answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text: str = reply.read().decode()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("ssmd_publish_buffer_messages{"):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def finished_files(archive: Path) -> list[str]:
    """`day/name` of every finished file the manifests list."""
    out: list[str] = []
    for day in sorted(p for p in (archive / FEED).iterdir() if p.is_dir()):
        manifest = json.loads((day / "manifest.json").read_text())
        out += [f"{day.name}/{entry['name']}" for entry in manifest["files"]]
    return out


def slot_name_at(wall_ns: int) -> str:
    """`day/HHMMSS` of the 1 s slot `wall_ns` falls in: later files sort after it."""
    day = time.strftime("%Y-%m-%d", time.gmtime(wall_ns // 10**9))
    return f"{day}/{slot_label(wall_ns - wall_ns % 10**9, 1)}"


@attrs.frozen
class MemoryReport:
    base: Sample  # at the end of warm-up
    peak: Sample  # the highest RSS after it
    end: Sample
    buffer_rise: int  # how far the publish buffer's high-water mark rose after warm-up

    @classmethod
    def of(cls, samples: list[Sample], warmup: int) -> MemoryReport:
        i = next(i for i, s in enumerate(samples) if s.sent >= warmup)
        before = max(s.buffered for s in samples[: i + 1])
        after = max(s.buffered for s in samples[i:])
        peak = max(samples[i:], key=lambda s: s.rss)
        return cls(samples[i], peak, samples[-1], max(0, after - before))

    @property
    def growth(self) -> int:
        return self.peak.rss - self.base.rss

    @property
    def bound(self) -> int:
        return RSS_GROWTH_BOUND + BUFFERED_MESSAGE_RSS * self.buffer_rise


# The soak runs in the default `pytest` run in its reduced form; `-m "not slow"` skips it.
@pytest.mark.slow
def test_soak_steady_rate_memory_stays_flat(tmp_path: Path, nats_server: NatsServer) -> None:
    total = SOAK_MESSAGES
    exchange = Exchange(tmp_path / "exchange", total, SOAK_RATE)
    archive = tmp_path / "archive"
    port = free_port()
    config = write_config(
        *(tmp_path / "ssmd.toml", [nats_server.url], exchange.url, archive),
        service={"health_port": port},
        rotation="1s",
    )
    process = ssmd(config, ["connector", "archiver"])
    if os.environ.get("SSMD_SOAK_RETAIN_EVERY_MESSAGE") == "1":
        # A deliberate leak, to see the memory bound fail: the test must fail with it.
        inject_retention(tmp_path / "leak", process.env)
    samples: list[Sample] = []
    started = time.monotonic()
    process.start()
    try:
        assert process.proc is not None
        pid = process.proc.pid
        sent = 0
        while True:
            assert process.proc.poll() is None, process.log.read_text()[-3000:]
            status = exchange.status()
            sent = status["sent"]
            samples.append(sample_process(pid, sent, port))
            if status["done"]:
                break
            assert time.monotonic() - started < 60 + 10 * total / SOAK_RATE, (
                f"the exchange is stuck at {sent} of {total}: {process.log.read_text()[-3000:]}"
            )
            time.sleep(SAMPLE_S)
        # The tail of the stream through the archiver, still sampling.
        for _ in range(3):
            time.sleep(SAMPLE_S)
            samples.append(sample_process(pid, sent, port))
        streamed_s = time.monotonic() - started
        code, _ = process.terminate()
        assert code == 0, process.log.read_text()[-3000:]
    finally:
        if process.proc is not None and process.proc.poll() is None:
            process.kill9()

    result = finish_and_compare(exchange, config, archive)
    files = finished_files(archive)
    memory = MemoryReport.of(samples, int(total * WARMUP_FRACTION))
    base, after = memory.base, samples[samples.index(memory.base) :]
    progress = [next(s for s in samples if s.sent >= total * k // 10) for k in range(1, 11)]
    print(
        f"\nsoak: {total:,} messages, {streamed_s:.1f} s from start to the end of the stream "
        f"({total / streamed_s:,.0f} msg/s), "
        f"{len(samples)} samples\n"
        f"  RSS MiB: warm-up {base.rss / MiB:.1f}, max after {memory.peak.rss / MiB:.1f} "
        f"(at {memory.peak.sent:,} sent), end {memory.end.rss / MiB:.1f}; growth "
        f"{memory.growth / MiB:+.1f}, bound {memory.bound / MiB:.1f}\n"
        f"  RSS MiB at each tenth sent: {' '.join(f'{s.rss / MiB:.1f}' for s in progress)}\n"
        f"  publish buffer: max {max(s.buffered for s in samples):,} messages, "
        f"high-water mark rose {memory.buffer_rise:,} after warm-up\n"
        f"  open fds: warm-up {base.fds}, max after {max(s.fds for s in after)}, "
        f"end {memory.end.fds}; threads: warm-up {base.threads}, "
        f"max after {max(s.threads for s in after)}, end {memory.end.threads}\n"
        f"  files (1 s slots): {len(files)}, {sum(f > slot_name_at(base.wall_ns) for f in files)} "
        f"after warm-up\n  {result}"
    )

    assert result.sent == total
    assert result.lost == 0, result
    assert result.archived == total, result
    # One connection all along (its connect record, and a disconnect at shutdown), and
    # nothing the connector records when it loses or drops data.
    kinds = result.discontinuities
    assert kinds.get("connect") == 1 and kinds.get("disconnect", 0) <= 1, result
    assert not kinds.keys() & {"gap", "resubscribe", "overflow", "rejected"}, result
    assert len(files) >= 3, files  # the open-file check spans rotations
    assert memory.growth <= memory.bound, (
        f"RSS grew by {memory.growth / MiB:.1f} MiB after warm-up, over the "
        f"{memory.bound / MiB:.1f} MiB bound ({base.rss / MiB:.1f} -> "
        f"{memory.peak.rss / MiB:.1f} MiB at {memory.peak.sent:,} of {total:,})"
    )
    assert max(s.fds for s in after) - base.fds <= FD_GROWTH_BOUND, [s.fds for s in samples]
    assert max(s.threads for s in after) - base.threads <= THREAD_GROWTH_BOUND, [
        s.threads for s in samples
    ]


_RETAIN = """\
from ssmd.connector import publisher

_kept = []
_append = publisher.Publisher._append


def _retaining_append(self, item):
    _kept.append(item)
    _append(self, item)


publisher.Publisher._append = _retaining_append
"""


def inject_retention(directory: Path, env: dict[str, str] | None) -> None:
    """Make the ssmd process keep every message it publishes (a deliberate leak)."""
    assert env is not None
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_RETAIN)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(directory), env.get("PYTHONPATH")]))


# --- rotation under the fake clock -------------------------------------------------------

SLOTS = 120
WARMUP_SLOTS = 10
PER_SLOT = 40
# 22:30:30 UTC: 120 one-minute slots run to 00:29 the next day, through a day rollover.
START = (2026, 1, 5, 22, 30, 30)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fds_under(root: Path) -> int:
    """This process's open descriptors on files or directories under `root` (the
    archive): unlike a count of all descriptors, other tests' sockets that close in the
    same pytest worker do not move it."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(str(root))
    return count


def live_tasks() -> int:
    """Every task of this Trio run, found by walking the nursery tree from the root."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    count = 0
    stack = [root]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


@attrs.frozen
class RotationRun:
    fds: list[int]  # after each slot's rotation
    tasks: list[int]
    archive_fds: list[int]  # a second into each slot, its file open
    fds_before: int
    fds_after: int
    exit_code: int

    def fd_growth(self) -> int:
        return max(self.fds[WARMUP_SLOTS:]) - self.fds[WARMUP_SLOTS - 1]

    def task_growth(self) -> int:
        return max(self.tasks[WARMUP_SLOTS:]) - self.tasks[WARMUP_SLOTS - 1]


async def run_slots(
    h: Harness, slots: int, each_slot: Callable[[Harness], None] | None = None
) -> RotationRun:
    """One batch in each of `slots` one-minute slots; probes after every rotation."""
    fds: list[int] = []
    tasks: list[int] = []
    archive_fds: list[int] = []
    fds_before = open_fds()
    async with trio.open_nursery() as nursery:
        await h.start(nursery, WallClock(utc_ns(*START)))
        for slot in range(slots):
            first = slot * PER_SLOT + 1
            await h.send.send(batch(first, first + PER_SLOT - 1, ticker=f"KX-{slot % 3}"))
            await trio.sleep(1)
            archive_fds.append(fds_under(h.root))
            await trio.sleep(59)
            # Half a minute into the next slot: the rotation tick has closed this one
            # and, the clock being virtual, every task is idle again.
            fds.append(open_fds())
            tasks.append(live_tasks())
            if each_slot is not None:
                each_slot(h)
        exit_code = await h.stop()
    return RotationRun(fds, tasks, archive_fds, fds_before, open_fds(), exit_code)


async def test_rotation_leaks_no_file_or_task_over_120_slots(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    h = Harness(tmp_path, interval_s=60)
    run = await run_slots(h, SLOTS)
    assert run.exit_code == 0
    assert run.fd_growth() == 0, run.fds
    assert run.task_growth() == 0, run.tasks
    assert run.fds_after <= run.fds_before, run
    assert min(run.archive_fds) >= 1, run.archive_fds  # what the last check counts
    assert fds_under(tmp_path) == 0, "the archiver left files open after it stopped"
    assert h.status.writer.files == SLOTS

    # Every slot is exactly one finished file holding exactly its batch.
    expected: dict[str, list[str]] = {}
    for slot in range(SLOTS):
        start_ns = utc_ns(*START) - 30 * 10**9 + slot * 60 * 10**9
        day = time.strftime("%Y-%m-%d", time.gmtime(start_ns // 10**9))
        expected.setdefault(day, []).append(f"{slot_label(start_ns, 60)}.jsonl.gz")
    assert sorted(expected) == ["2026-01-05", "2026-01-06"]
    slot = 0
    for day, names in expected.items():
        on_disk = sorted(p.name for p in h.day_dir(day).iterdir())
        assert on_disk == sorted([*names, "manifest.json"])
        manifest = h.manifest(day)
        assert [f["name"] for f in manifest["files"]] == names
        for entry in manifest["files"]:
            first = slot * PER_SLOT + 1
            seqs = list(range(first, first + PER_SLOT))
            with gzip.open(h.day_dir(day) / entry["name"]) as f:
                lines = [json.loads(line) for line in f]
            assert [r["_seq"] for r in lines] == seqs, entry["name"]
            assert {r["msg"]["market_ticker"] for r in lines} == {f"KX-{slot % 3}"}
            assert (entry["records"], entry["nats_start_seq"], entry["nats_end_seq"]) == (
                PER_SLOT,
                seqs[0],
                seqs[-1],
            )
            slot += 1
    assert slot == SLOTS


class UnclosedSlotFiles(FileOps):
    """A slot file that is never closed: what the open-file probe must catch."""

    def __init__(self) -> None:
        self.partials: set[int] = set()
        self.leaked: list[int] = []

    def create(self, path: Path) -> int:
        fd = super().create(path)
        if path.name.endswith(".partial"):
            self.partials.add(fd)
        return fd

    def close(self, fd: int) -> None:
        if fd in self.partials:
            self.partials.discard(fd)
            self.leaked.append(fd)
        else:
            super().close(fd)


async def test_rotation_probe_catches_a_slot_file_never_closed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ops = UnclosedSlotFiles()
    h = Harness(tmp_path, interval_s=60, ops=ops)
    try:
        run = await run_slots(h, 2 * WARMUP_SLOTS)
    finally:
        for fd in ops.leaked:
            os.close(fd)
    assert run.exit_code == 0
    assert run.fd_growth() == WARMUP_SLOTS, run.fds
    assert run.task_growth() == 0


async def test_rotation_probe_catches_a_task_never_ended(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    def leak_a_task(h: Harness) -> None:
        assert h.sup is not None
        h.sup.start_producer("leak", trio.sleep_forever)

    h = Harness(tmp_path, interval_s=60)
    run = await run_slots(h, 2 * WARMUP_SLOTS, leak_a_task)
    assert run.exit_code == 0
    assert run.task_growth() == WARMUP_SLOTS, run.tasks
    assert run.fd_growth() == 0


# --- connector counters under ticker churn -----------------------------------------------


async def test_publisher_counts_stay_bounded_as_tickers_come_and_go(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """Markets are listed and expire all day; a long run sees ever more tickers. The
    per-subject ack counts (kept for the metrics) must not grow with them forever."""
    limit = 50
    monkeypatch.setattr(publisher_module, "SUBJECT_COUNT_LIMIT", limit)

    async def publish_batch(
        messages: Sequence[OutgoingMessage], timeout: float
    ) -> list[PublishOutcome]:
        await trio.sleep(0.001)
        return [PublishOutcome(stream_seq=1) for _ in messages]

    publisher = Publisher(
        publish_batch,
        env="prod",
        feed="kalshi",
        clock=WallClock(utc_ns(2026, 1, 5, 12, 0)),
        buffer_messages=10_000,
        buffer_bytes=10**8,
        batch_max=20,
        timeout=5.0,
    )
    tickers = 40 * limit
    most = 0
    send, receive = trio.open_memory_channel[list[Inbound]](0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.run, receive)
        async with send:
            for i in range(tickers):
                kind = "trade" if i % 4 else "ticker"
                subject = f"prod.kalshi.json.{kind}.KXBTCD-26JAN05{i:05d}-T100"
                await send.send([Inbound(subject, b"{}", i)])
                await trio.sleep(0.01)  # virtual: the batch in flight is acknowledged
                most = max(most, len(publisher.stats.acked_subjects))
    assert publisher.stats.acked == tickers
    assert most <= limit and len(publisher.stats.acked_subjects) <= limit
    by_type = {"ticker": tickers // 4, "trade": tickers - tickers // 4}
    assert publisher.stats.acked_by_type() == by_type
    (published,) = (
        family
        for family in connector_metrics("kalshi", publisher, [])
        if getattr(family, "name", "") == "ssmd_published_messages"
    )
    samples = published.samples  # type: ignore[attr-defined]
    assert {s.labels["type"]: s.value for s in samples if s.name.endswith("_total")} == by_type
