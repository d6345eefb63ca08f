"""End-to-end latency: WebSocket receive -> fsync-durable (and acknowledged) archive.

The connector (reader, router, publisher) and the archiver (`start_archiver`, unchanged)
run in one Trio process against one nats-server, while `ssmd.simulators.kalshi.raw` streams Kalshi
trade frames at a fixed rate. Every archive line carries `_recv_ns`, the connector's
`clock.now_ns()` taken when the WebSocket frame was read.

How the "durable" time of each message is taken, without touching ssmd's code:
`start_archiver(ops=...)` accepts a `FileOps`; `TimedOps` subclasses it and, for every
fsync of a `.partial` slot file, records the file offset the fsync covered (the end of
the preceding pwrite) and `time.perf_counter()` right after `os.fsync` returned. The
writer compresses each batch as one block ending in a zlib sync flush, so after the run
the archive is decompressed block by block along those recorded offsets: every line
that comes out of block k became durable at the end of fsync k. Latency per message is
that instant minus its `_recv_ns`, both on the same clock (the perf-counter timestamp is
converted through the `WallClock` the connector used, which is Trio's perf-counter clock
plus a wall anchor). Nothing is sampled: every message of the run is counted.

A second figure, "acked", wraps `bridge.ack` (the callable start_archiver hands to its
acker) and timestamps when the AckAll for stream sequence S had been handed to the
bridge, which sends it with the consumer's next pull traffic (`PendingAck`); each
message's acked time is that of the first ack covering its sequence.

Both lingers are at their defaults (`connector.publish_linger`, `archiver.linger`).
"""

from __future__ import annotations

import bisect
import json
import math
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio
from bench_connector import bench_connector_tasks

from ssmd.archiver.files import FileOps
from ssmd.archiver.lines import read_prefix
from ssmd.archiver.service import ArchiverStatus, start_archiver
from ssmd.clock import WallClock
from ssmd.config import ConnectorConfig, parse_config
from ssmd.connector.publisher import Inbound
from ssmd.metrics import LatencyHistogram
from ssmd.nats.bridge import open_bridge
from ssmd.nats.types import StreamSpec
from ssmd.supervisor import Supervisor, supervise

STREAM = "BENCH"
SUBJECTS = "bench.kalshi.json.>"


class TimedOps(FileOps):
    """FileOps that remembers, per slot file, which offset each fsync made durable and when."""

    def __init__(self) -> None:
        self._paths: dict[int, Path] = {}
        self._written: dict[int, int] = {}
        self.durable: dict[Path, list[tuple[int, float]]] = {}
        self.fsync_s: list[float] = []

    def create(self, path: Path) -> int:
        fd = super().create(path)
        self._paths[fd] = path
        return fd

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        super().pwrite(fd, data, offset)
        self._written[fd] = offset + len(data)

    def fsync(self, fd: int) -> None:
        started = time.perf_counter()
        super().fsync(fd)
        done = time.perf_counter()
        path = self._paths.get(fd)
        if path is not None and path.name.endswith(".partial") and fd in self._written:
            self.durable.setdefault(path, []).append((self._written[fd], done))
            self.fsync_s.append(done - started)

    def close(self, fd: int) -> None:
        super().close(fd)
        self._paths.pop(fd, None)
        self._written.pop(fd, None)


def ack_stream_seq(reply: str) -> int:
    """The stream sequence in a JetStream ack subject (v1 or v2 token layout)."""
    tokens = reply.split(".")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def histogram_summary(hist: LatencyHistogram) -> dict[str, float]:
    """Mean and the upper bound of the bucket holding the 99th percentile."""
    total = sum(hist.counts)
    out = {"batches": float(total), "mean_s": hist.sum / total if total else math.nan}
    running = 0
    bounds = [*hist.buckets, math.inf]
    for bound, count in zip(bounds, hist.counts, strict=True):
        running += count
        if running >= 0.99 * total:
            out["p99_bucket_s"] = bound
            break
    return out


def per_message_latency(
    ops: TimedOps, to_wall_ns: Any, acks: list[tuple[int, float]], rate: float
) -> tuple[list[float], list[float], list[float], int, float]:
    """(durable, acked, sent-to-durable latencies) in ms for every archived data line, in
    stream order; acks not found; seconds from the first receive to the last line durable.

    "Sent" is when the paced exchange's schedule sent the frame: frame `seq` (Kalshi's
    `seq`, from 1) goes out `(seq - 1) / rate` seconds after the first. The start is
    taken as the latest one every frame's stamp allows, so a figure can only be low by
    the shortest wait of any frame in the socket (one read as it arrived: ~0). Unlike
    the stamp, it counts the time a frame waited in the socket before it was read."""
    ack_seqs = [s for s, _ in acks]
    first_recv, last_done = 0, 0
    durable: list[float] = []
    frames: list[tuple[int, int, int]] = []
    acked: list[float] = []
    unmatched = 0
    for partial, blocks in ops.durable.items():
        final = partial.with_name(partial.name.removesuffix(".partial"))
        data = (final if final.exists() else partial).read_bytes()
        decomp = zlib.decompressobj(31)
        pos, tail = 0, b""
        for end, done in blocks:
            out = decomp.decompress(data[pos:end])
            pos = end
            lines = (tail + out).split(b"\n")
            tail = lines.pop()
            done_ns = to_wall_ns(done)
            for line in lines:
                prefix = read_prefix(line)
                if prefix is None or ".trade." not in prefix[1]:
                    continue
                seq, _, recv = prefix
                if recv is None:
                    continue
                recv_ns = recv
                first_recv = first_recv or recv_ns
                last_done = done_ns
                durable.append((done_ns - recv_ns) / 1e6)
                frames.append((json.loads(line)["seq"], recv_ns, done_ns))
                i = bisect.bisect_left(ack_seqs, seq)
                if i < len(acks):
                    acked.append((to_wall_ns(acks[i][1]) - recv_ns) / 1e6)
                else:
                    unmatched += 1
    # Frame k leaves at start + (k - 1) / rate and is stamped no earlier, so every
    # frame bounds the start from above; the tightest bound is a frame read as it came.
    start_ns = min(recv - (seq - 1) / rate * 1e9 for seq, recv, _ in frames)
    sent_durable = [(done - start_ns - (seq - 1) / rate * 1e9) / 1e6 for seq, _, done in frames]
    return durable, acked, sent_durable, unmatched, (last_done - first_recv) / 1e9


async def run_e2e(
    nats_url: str, ws_url: str, count: int, archive: Path, rate: float
) -> dict[str, Any]:
    clock = WallClock()
    before = time.perf_counter()
    wall = clock.now_ns()
    ref_perf = (before + time.perf_counter()) / 2

    def to_wall_ns(perf: float) -> int:
        return wall + round((perf - ref_perf) * 1e9)

    ops = TimedOps()
    status = ArchiverStatus()
    acks: list[tuple[int, float]] = []
    cpu: list[float] = []
    config = parse_config(
        {
            "env": "bench",
            "nats": {"url": nats_url, "stream": STREAM},
            "archiver": {"consumer": "e2e", "filter": SUBJECTS},
            "storage": {"path": str(archive)},
        }
    )
    async with open_bridge([nats_url]) as bridge:
        await bridge.ensure_stream(StreamSpec(STREAM, [SUBJECTS], 3600, 0, -1, 120, 1))
        original_ack = bridge.ack

        async def timed_ack(reply: str) -> None:
            await original_ack(reply)
            acks.append((ack_stream_seq(reply), time.perf_counter()))

        bridge.ack = timed_ack  # type: ignore[method-assign]
        # The default publish linger, as the archiver's config has its default linger.
        publisher, connection = bench_connector_tasks(
            bridge.publish_batch,
            clock,
            ws_url,
            ConnectorConfig(feed="kalshi").publish_linger.seconds,
        )

        async def connector() -> None:
            while status.fetcher.consumer_resets == 0:  # archiver positioned first
                await trio.sleep(0.001)
            cpu.append(time.process_time())
            send, receive = trio.open_memory_channel[list[Inbound]](64)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publisher.run, receive)
                nursery.start_soon(connection.run, send)

        async def start_roles(sup: Supervisor) -> None:
            await start_archiver(sup, config, bridge, clock, status=status, ops=ops)
            sup.start_producer("bench.connector", connector)

            async def until_done() -> None:
                last, idle = -1, 0.0
                while not (acks and acks[-1][0] >= count + 1):
                    await trio.sleep(0.01)
                    if status.writer.records == last:
                        idle += 0.01
                        if idle > 30:
                            raise RuntimeError(f"stalled at {last} records of {count + 1}")
                    else:
                        last, idle = status.writer.records, 0.0
                cpu.append(time.process_time())
                sup.request_stop("benchmark done")

            sup.start_sink("bench.watch", until_done)

        await supervise(start_roles, shutdown_timeout=30, handle_signals=False)
    assert connection.stats.gaps == 0, "the benchmark exchange skipped seq"
    durable, acked, sent, unmatched, span_s = per_message_latency(ops, to_wall_ns, acks, rate)
    tail = sorted(durable[-max(1, len(durable) // 10) :])
    durable.sort()
    acked.sort()
    sent.sort()
    fsyncs = sorted(ops.fsync_s)
    return {
        "messages": len(durable),
        "span_s": span_s,
        "cpu_s": cpu[1] - cpu[0],
        "last_tenth_p50_ms": percentile(tail, 0.5),
        "unmatched_acks": unmatched,
        "durable_ms": [percentile(durable, p) for p in (0.5, 0.99, 0.999)],
        "acked_ms": [percentile(acked, p) for p in (0.5, 0.99, 0.999)] if acked else [],
        "sent_durable_ms": [percentile(sent, p) for p in (0.5, 0.99, 0.999)],
        "fsync_hist": histogram_summary(status.writer.fsync_seconds),
        "fsync_exact_p99_s": percentile(fsyncs, 0.99) if fsyncs else math.nan,
        "records": status.writer.records,
    }
