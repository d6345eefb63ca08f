"""CPU at Kalshi's real rates: connector + archiver in one process, beside a bare recorder.

Both recorders do the same job against the same paced exchange
(`ssmd.simulators.kalshi.raw.paced_exchange_process`, one Kalshi trade frame at a time):
WebSocket receive -> JetStream publish, acknowledged -> pull from the stream -> gzip
block + fsync -> ack. The CPU figure is `time.process_time()` (every thread of the
recording process) over a fixed wall-clock window after a warm-up, divided by the
window: the share of one core. After the exchange has sent everything and the archive
holds it all, the same is measured with the connection open and nothing arriving
("idle").

* ssmd: the production `Publisher` and `Connection` and `start_archiver`, with every
  setting at its default (lingers included).
* floor: only ssmd's WebSocket client reading the same exchange and stamping each read
  (no routing, NATS or disk): what any recorder that stamps frames as they are read pays
  in one Trio thread before doing anything with them.
* null: ssmd's thread shape doing nothing: a Trio thread and the bridge's asyncio thread
  (`ssmd.nats.loop.AsyncioThread`), waking on the connector's read grid
  (`connector.read_interval`; with none, at the paced rate, as ssmd then reads) and
  crossing to the asyncio thread once per wake, then, "idle", once per archiver
  `fetch_timeout`. No socket, NATS or disk. It is what this machine charges for waking
  alone in that shape. ssmd wakes more threads more often per read, so its figure minus
  this one is expected to overstate the work ssmd does (not measured: an estimate).
* bare: what one might write with nats-py in one asyncio loop: asyncio streams and
  ssmd's own frame parser (`wsclient.FrameParser`, no I/O) for the WebSocket,
  `json.loads` of each frame to route it, `js.publish_async` with the same headers and
  the acks awaited per read, a pull subscription with `fetch(1000)`, one gzip block per
  fetch written and fsynced in the loop, then an ack of the last message (AckAll).

    .venv/bin/python benchmarks/bench_cpu.py [--rate 1000] [--seconds 10] [--read-interval 0]
        [--only ssmd|bare|floor|null]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import nats
import trio
from nats.js.api import AckPolicy, ConsumerConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssmd.archiver.service import ArchiverStatus, start_archiver
from ssmd.clock import WallClock
from ssmd.config import ArchiverConfig, ConnectorConfig, parse_config
from ssmd.config.units import Duration
from ssmd.connector.connection import Connection
from ssmd.connector.pacing import next_read_at
from ssmd.connector.publisher import Inbound, Publisher
from ssmd.connector.service import connection_settings
from ssmd.connector.shards import SubscriptionPlan
from ssmd.connector.wsclient import OP_TEXT, FrameParser, connect_fast, encode_frame
from ssmd.feeds.kalshi import VENUE as KALSHI
from ssmd.nats.bridge import open_bridge
from ssmd.nats.loop import AsyncioThread
from ssmd.nats.server import NatsServer
from ssmd.nats.types import StreamSpec
from ssmd.simulators.kalshi.raw import paced_exchange_process
from ssmd.subjects import encode_token
from ssmd.supervisor import Supervisor, supervise

STREAM = "BENCH"
SUBJECTS = "bench.kalshi.json.>"


def frames_needed(rate: float, warm_s: float, window_s: float) -> int:
    """Enough frames that the exchange is still sending when the busy window closes."""
    return int(rate * (warm_s + window_s + 2))


@dataclass(frozen=True)
class Run:
    """One recorder's run: where it connects, the exchange's pace and the windows."""

    nats_url: str
    ws_url: str
    rate: float
    warm_s: float
    window_s: float
    idle_s: float
    archive: Path
    # connector.read_interval in seconds for the ssmd recorder (None: the default).
    read_interval: float | None = None

    @property
    def frames(self) -> int:
        return frames_needed(self.rate, self.warm_s, self.window_s)


async def ssmd_recorder(run: Run) -> dict[str, float]:
    """Share of one core for ssmd's connector + archiver: at `rate`, then idle."""
    count = run.frames
    clock = WallClock()
    cc = ConnectorConfig(feed="kalshi")
    if run.read_interval is not None:
        cc = attrs.evolve(cc, read_interval=Duration(run.read_interval, f"{run.read_interval}s"))
    config = parse_config(
        {
            "env": "bench",
            "nats": {"url": run.nats_url, "stream": STREAM},
            "archiver": {"consumer": "cpu", "filter": SUBJECTS},
            "storage": {"path": str(run.archive)},
        }
    )
    status = ArchiverStatus()
    result: dict[str, float] = {}
    async with open_bridge([run.nats_url]) as bridge:
        await bridge.ensure_stream(StreamSpec(STREAM, [SUBJECTS], 3600, 0, -1, 120, 1))
        publisher = Publisher(
            bridge.publish_batch,
            env="bench",
            feed="kalshi",
            clock=clock,
            buffer_messages=cc.buffer_messages,
            buffer_bytes=cc.buffer_bytes.value,
            batch_max=cc.publish_window,
            timeout=cc.publish_timeout.seconds,
            linger=cc.publish_linger.seconds,
        )
        connection = Connection(
            0,
            run.ws_url,
            KALSHI,
            [SubscriptionPlan("trade")],
            config=cc,
            env="bench",
            clock=clock,
            settings=connection_settings(cc),
            headers=lambda url: [],
        )

        async def start_roles(sup: Supervisor) -> None:
            # As `ssmd run` wires them: the connection stops first, the publisher (a
            # sink) takes its disconnect record before it ends, and the archiver stops
            # in a later stage.
            with sup.stop_stage(1):
                await start_archiver(sup, config, bridge, clock, status=status)
            send, receive = trio.open_memory_channel[list[Inbound]](64)
            sup.start_sink("bench.publisher", publisher.run, receive)
            sup.start_producer("bench.ws0", connection.run, send)

            async def measure() -> None:
                while publisher.stats.received < 2:  # the connect record, then data
                    await trio.sleep(0.05)
                # Settles: lingers, the last ack, in-flight timers.
                windows = await measure_windows(
                    run, trio.sleep, lambda: status.writer.records, count + 1, settle=1.0
                )
                result.update(windows)
                sup.request_stop("benchmark done")

            sup.start_sink("bench.measure", measure)

        await supervise(start_roles, shutdown_timeout=30, handle_signals=False)
    return result


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by thread name (kernel `comm`)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = names.get(int(tid)) or stat[stat.index("(") + 1 : stat.rindex(")")]
        name = name.split(" ")[0] if name.startswith("Trio") else name
        fields = stat[stat.rindex(")") + 2 :].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _window_start(name: str, records: int) -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        **{f"{name}_thread0 {k}": v for k, v in thread_cpu().items()},
        f"{name}_csw0": usage.ru_nvcsw + usage.ru_nivcsw,
        f"{name}_sys0": usage.ru_stime,
        f"{name}_cpu0": time.process_time(),
        f"{name}_t0": time.perf_counter(),
        f"{name}_n0": records,
    }


def _window_end(result: dict[str, float], name: str, records: int) -> None:
    elapsed = time.perf_counter() - result.pop(f"{name}_t0")
    result[f"{name}_core"] = (time.process_time() - result.pop(f"{name}_cpu0")) / elapsed
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result[f"{name}_switches"] = (
        usage.ru_nvcsw + usage.ru_nivcsw - result.pop(f"{name}_csw0")
    ) / elapsed
    result[f"{name}_sys"] = (usage.ru_stime - result.pop(f"{name}_sys0")) / elapsed
    for thread, cpu in thread_cpu().items():
        start = result.pop(f"{name}_thread0 {thread}", 0.0)
        result[f"{name}_thread {thread}"] = (cpu - start) / elapsed
    for key in [k for k in result if k.startswith(f"{name}_thread0 ")]:
        del result[key]
    result[f"{name}_rate"] = (records - result.pop(f"{name}_n0")) / elapsed


async def measure_windows(
    run: Run,
    sleep: Callable[[float], Awaitable[object]],
    progress: Callable[[], int],
    done: int,
    settle: float,
) -> dict[str, float]:
    """The busy window after `run.warm_s`, then, once `progress()` reached `done` and
    `settle` seconds passed, the idle window; `sleep` is the event loop's (Trio or asyncio)."""
    result: dict[str, float] = {}
    await sleep(run.warm_s)
    result.update(_window_start("busy", progress()))
    await sleep(run.window_s)
    _window_end(result, "busy", progress())
    while progress() < done:
        await sleep(0.1)
    if settle:
        await sleep(settle)
    result.update(_window_start("idle", progress()))
    await sleep(run.idle_s)
    _window_end(result, "idle", progress())
    return result


async def _ws_connect(ws_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = urlsplit(ws_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    command = {"id": 1, "cmd": "subscribe", "params": {"channels": ["trade"]}}
    writer.write(encode_frame(OP_TEXT, json.dumps(command).encode(), os.urandom(4)))
    return reader, writer


async def bare_recorder(run: Run) -> dict[str, float]:
    """The same job in one asyncio loop with nats-py as documented."""
    count = run.frames
    nc = await nats.connect(run.nats_url)
    js = nc.jetstream()
    await js.add_stream(name="BARE", subjects=["bare.>"], duplicate_window=120)
    psub = await js.pull_subscribe(
        "bare.>", durable="bare", config=ConsumerConfig(ack_policy=AckPolicy.ALL)
    )
    reader, writer = await _ws_connect(run.ws_url)
    archived = [0]
    received = [0]

    async def connector() -> None:
        parser = FrameParser(1 << 24)
        sent = 0
        while True:
            data = await reader.read(256 * 1024)
            if not data:
                return
            recv_ns = time.time_ns()
            messages, _controls = parser.feed(data)
            acks = []
            for payload in messages:
                envelope = json.loads(payload)
                if envelope.get("type") != "trade":
                    continue
                ticker = encode_token(envelope["msg"]["market_ticker"])
                sent += 1
                headers = {"Nats-Msg-Id": f"bare-{sent}", "Ssmd-Recv-Ns": str(recv_ns)}
                acks.append(
                    await js.publish_async(
                        f"bare.kalshi.json.trade.{ticker}", payload, headers=headers
                    )
                )
            if acks:
                await asyncio.gather(*acks)
                received[0] += len(acks)

    async def archiver() -> None:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        fd = os.open(run.archive / "bare.jsonl.gz", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while True:
                try:
                    msgs = await psub.fetch(1000, timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                lines = []
                for m in msgs:
                    recv = (m.headers or {}).get("Ssmd-Recv-Ns", "0")
                    head = b'{"_seq":%d,"_subject":"%s","_recv_ns":%s,' % (
                        m.metadata.sequence.stream,
                        m.subject.encode(),
                        recv.encode(),
                    )
                    lines.append(head + m.data[1:] + b"\n")
                block = compressor.compress(b"".join(lines)) + compressor.flush(zlib.Z_SYNC_FLUSH)
                os.write(fd, block)
                os.fsync(fd)
                await msgs[-1].ack()
                archived[0] += len(msgs)
        finally:
            os.close(fd)

    result: dict[str, float] = {}
    tasks = [asyncio.create_task(connector()), asyncio.create_task(archiver())]
    try:
        while received[0] < 1:
            await asyncio.sleep(0.05)
        result = await measure_windows(run, asyncio.sleep, lambda: archived[0], count, settle=1.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        await nc.close()
    return result


async def reader_floor(run: Run) -> dict[str, float]:
    """The floor under any Trio recorder that stamps every frame as it is read: ssmd's
    WebSocket client reading the same paced exchange and taking each read's receive
    time, and nothing else (no routing, no NATS, no disk)."""
    count = run.frames
    read = [0]
    result: dict[str, float] = {}

    async def reader(ws: Any) -> None:
        while True:
            frames = await ws.receive_batch(1000)
            time.time_ns()
            read[0] += len(frames)

    async with connect_fast(run.ws_url, [], 10.0) as ws:
        command = {"id": 1, "cmd": "subscribe", "params": {"channels": ["trade"]}}
        await ws.send_message(json.dumps(command))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, ws)
            while read[0] < 2:
                await trio.sleep(0.05)
            result = await measure_windows(run, trio.sleep, lambda: read[0], count, settle=0.0)
            nursery.cancel_scope.cancel()
    return result


async def null_recorder(run: Run) -> dict[str, float]:
    """ssmd's thread shape waking on its read grid and crossing the bridge once per wake,
    doing nothing else; "idle" wakes once per archiver `fetch_timeout` instead."""
    grid = (
        run.read_interval
        if run.read_interval is not None
        else ConnectorConfig(feed="kalshi").read_interval.seconds
    )
    idle_every = ArchiverConfig(consumer="null", filter="null.kalshi.>").fetch_timeout.seconds
    # With no grid ssmd reads every arrival: at the paced rate.
    every = [grid or 1 / run.rate]
    wakes = [0]
    bridge = AsyncioThread()

    async def nothing() -> None:
        return None

    async def waker() -> None:
        while True:
            await trio.sleep_until(next_read_at(trio.current_time(), every[0]))
            await bridge.call(nothing)
            wakes[0] += 1

    result: dict[str, float] = {}
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waker)
            await trio.sleep(run.warm_s)
            result.update(_window_start("busy", wakes[0]))
            await trio.sleep(run.window_s)
            _window_end(result, "busy", wakes[0])
            every[0] = idle_every
            await trio.sleep(idle_every)
            result.update(_window_start("idle", wakes[0]))
            await trio.sleep(run.idle_s)
            _window_end(result, "idle", wakes[0])
            nursery.cancel_scope.cancel()
    finally:
        bridge.stop()
    return result


def null_child(*args: Any) -> dict[str, float]:
    return trio.run(null_recorder, Run(*args))


def floor_child(*args: Any) -> dict[str, float]:
    return trio.run(reader_floor, Run(*args))


def ssmd_child(*args: Any) -> dict[str, float]:
    return trio.run(ssmd_recorder, Run(*args))


def bare_child(*args: Any) -> dict[str, float]:
    return asyncio.run(bare_recorder(Run(*args)))


def report(name: str, r: dict[str, float]) -> None:
    unit = "wakes/s" if name == "null" else "msg/s"
    print(
        f"{name}: {r['busy_core'] * 100:5.2f}% of a core at {r['busy_rate']:,.0f} {unit}; "
        f"idle {r['idle_core'] * 100:.2f}%; system {r['busy_sys'] * 100:.1f}%; "
        f"{r['busy_switches']:,.0f} context switches/s; "
        + ", ".join(
            f"{k.split(' ', 1)[1]} {v * 100:.1f}%"
            for k, v in r.items()
            if k.startswith("busy_thread ") and v > 0.0005
        ),
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warm", type=float, default=2.0)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--only", choices=["ssmd", "bare", "floor", "null"])
    parser.add_argument(
        "--read-interval", type=float, help="ssmd's connector.read_interval, seconds"
    )
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    count = frames_needed(args.rate, args.warm, args.seconds)
    with tempfile.TemporaryDirectory(prefix="ssmd-bench-cpu-") as tmp:
        recorders = (
            ("ssmd", ssmd_child),
            ("bare", bare_child),
            ("floor", floor_child),
            ("null", null_child),
        )
        for name, child in recorders:
            if args.only and name != args.only:
                continue
            if name == "null":  # no exchange, NATS or archive
                r = child(
                    "",
                    "",
                    args.rate,
                    args.warm,
                    args.seconds,
                    args.idle,
                    Path(tmp),
                    args.read_interval,
                )
                report(name, r)
                continue
            ports: multiprocessing.Queue[int] = ctx.Queue()
            exchange = ctx.Process(
                target=paced_exchange_process, args=(count, args.rate, ports), daemon=True
            )
            exchange.start()
            ws_url = f"ws://127.0.0.1:{ports.get(timeout=60)}/trade-api/ws/v2"
            server = NatsServer(Path(tmp) / f"js-{name}")
            server.start()
            archive = Path(tmp) / f"archive-{name}"
            archive.mkdir()
            try:
                r = child(
                    server.url,
                    ws_url,
                    args.rate,
                    args.warm,
                    args.seconds,
                    args.idle,
                    archive,
                    args.read_interval,
                )
            finally:
                server.stop()
                exchange.terminate()
            report(name, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
