"""ssmd's published benchmark table: every figure next to a baseline measured in the same run.

    benchmarks/run_all            # full run, a few minutes on 2 cores
    benchmarks/run_all --quick    # smaller counts, well under a minute or two

Sections (each measurement runs in its own fresh spawned process, so CPU time and peak
RSS belong to that measurement alone; nats-server and the fake exchange are separate
processes and are not counted):

* archiver throughput: `bench_archiver.ssmd_archiver` (fetch, format, gzip, write, fsync,
  ack) against `bench_archiver.bare_fetch_ack` (nats-py fetch(1000) + AckAll, writes
  nothing), both reading the same pre-filled stream; plus the writer alone against raw
  zlib on the same lines (`writer_vs_raw_gzip`).
* connector throughput: `bench_connector.measure_connector` (WebSocket -> JetStream
  acknowledged, fake exchange sending flat out) against `bench_connector.measure_bare`
  (nats-py publish_async of the same payloads and headers).
* end-to-end latency (`bench_e2e`): connector + archiver in one process, the exchange
  pacing at 1k and 10k msg/s; per message, fsync-completion time of the block holding
  its line minus its `_recv_ns` ("durable"), and the time the AckAll covering it was
  handed to the bridge ("acked"); both lingers at their defaults. See bench_e2e's docstring.
* CPU at Kalshi's real rates (`bench_cpu`): connector + archiver in one process with
  default settings, and beside it a bare nats-py recorder doing the same job in one
  asyncio loop, each against the same paced exchange; the share of one core over a
  fixed window at 100 and 1,000 msg/s, then idle with the connection open. Beside them
  `null`: ssmd's two threads waking on the read grid and crossing the bridge once a
  wake, doing nothing else (idle: once a `fetch_timeout`). What this machine charges for
  waking alone; "above null" is ssmd's figure minus it (the mean of its two runs). And
  the price of one wake (`bench_wake`): CPU charged to a loop that only sleeps and wakes,
  with Trio every 10 ms, 100 ms and 1 s, and with a bare `epoll.poll` every 1 s.
* fsync cost per batch: the archiver's own `status.writer.fsync_seconds` histogram from
  the 10k msg/s run (mean = sum/count; p99 as the histogram bucket's upper bound), with
  the exact p99 from the timed FileOps alongside.
* CPU seconds per million messages: `time.process_time()` (all threads) of the measuring
  process around the measured call, divided by messages; includes that call's own setup
  (connecting, creating the consumer), which is small next to the run. For the paced
  end-to-end runs the window is from the connector's start to the last ack, so the
  figure includes the pipeline's fixed per-batch and idle costs at that rate.
* market discovery (`bench_discovery`): N open markets (100k; quick 20k) on the
  simulated Kalshi (WebSocket and REST, one process): time from the connector's start
  until exchange-confirmed order-book subscriptions cover every market, REST requests,
  subscription commands, connections, peak RSS; against the bare paced REST walk of the
  same markets (the floor: discovery cannot be faster than listing the markets).
* reading back (`bench_archive.measure`): an archive written by the archiver's slot
  writer; `ssmd data export` rate and one market's book rebuild against gzip +
  json.loads per line of the same files.
* peak RSS: `VmHWM` of the measuring process (its own image; not `ru_maxrss`, which on
  Linux carries over the spawning parent's peak across exec).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_* (when imported)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # ssmd from this checkout

import trio
from bench_archive import measure as measure_archive_reading
from bench_archiver import bare_fetch_ack, fill_stream, ssmd_archiver, writer_vs_raw_gzip
from bench_connector import measure_bare, measure_connector
from bench_cpu import bare_child, frames_needed, null_child, ssmd_child
from bench_discovery import measure_discovery, measure_rest_walk, new_key_pem
from bench_discovery import start_exchange as start_discovery_exchange
from bench_e2e import run_e2e
from bench_venues import checksum_cpu, kraken_frames, measure_venue, messages_of, polymarket_frames
from bench_venues import exchange_process as venue_exchange_process
from bench_wake import wake_child

from ssmd.nats.server import NatsServer, nats_server_binary
from ssmd.simulators.kalshi.raw import exchange_process, kalshi_messages, paced_exchange_process

SPAWN = multiprocessing.get_context("spawn")


# --- what runs inside each measuring process -------------------------------------------


def _measured(fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, float, float]:
    """(result, CPU seconds, peak RSS MiB) of `fn(*args)` in this fresh process."""
    cpu = time.process_time()
    result = fn(*args)
    cpu = time.process_time() - cpu
    return result, cpu, peak_rss_mib()


def peak_rss_mib() -> float:
    """This process's own high-water RSS. `VmHWM` belongs to the process image, whereas
    `ru_maxrss` survives exec and so would report the spawning parent's peak instead."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def archiver_child(url: str, n: int, durable: str, archive: Path) -> float:
    rate, _acks = trio.run(ssmd_archiver, url, n, durable, archive)
    return rate


def bare_fetch_child(url: str, n: int, durable: str) -> float:
    return asyncio.run(bare_fetch_ack(url, n, durable))


def connector_child(nats_url: str, ws_url: str, n: int) -> float:
    return trio.run(measure_connector, nats_url, ws_url, n)


def bare_publish_child(nats_url: str, payloads: list[bytes]) -> float:
    return asyncio.run(measure_bare(nats_url, payloads))


def venue_child(nats_url: str, ws_url: str, venue: str, n: int) -> float:
    return trio.run(measure_venue, nats_url, ws_url, venue, n)


def discovery_child(
    nats_url: str, ws_url: str, rest_url: str, key_pem: bytes, count: int
) -> dict[str, float]:
    return trio.run(measure_discovery, nats_url, ws_url, rest_url, key_pem, count)


def rest_walk_child(rest_url: str, key_pem: bytes) -> dict[str, float]:
    return trio.run(measure_rest_walk, rest_url, key_pem)


def e2e_child(nats_url: str, ws_url: str, n: int, archive: Path, rate: float) -> dict[str, Any]:
    return trio.run(run_e2e, nats_url, ws_url, n, archive, rate)


def isolated(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    with ProcessPoolExecutor(max_workers=1, mp_context=SPAWN) as pool:
        return pool.submit(_measured, fn, args).result()


# --- orchestration ----------------------------------------------------------------------


def start_exchange(target: Callable[..., None], *args: Any) -> tuple[Any, str]:
    ports: multiprocessing.Queue[int] = SPAWN.Queue()
    process = SPAWN.Process(target=target, args=(*args, ports), daemon=True)
    process.start()
    port = ports.get(timeout=120)
    return process, f"ws://127.0.0.1:{port}/trade-api/ws/v2"


def machine() -> list[str]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        binary = nats_server_binary()
        nats = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except FileNotFoundError:
        nats = "not found"
    return [
        f"machine: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {model}",
        f"         {platform.system()} {platform.release()}, Python {platform.python_version()}, {nats}",
    ]


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def section(self, title: str) -> None:
        self.rows.append((title, "", "", ""))

    def row(self, what: str, ours: str, base: str = "", ratio: str = "") -> None:
        self.rows.append(("  " + what, ours, base, ratio))

    def render(self) -> str:
        head = ("measurement", "ssmd", "baseline", "ssmd/base")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(4)]

        def fmt(r: tuple[str, str, str, str]) -> str:
            return (
                f"| {r[0]:<{widths[0]}} | {r[1]:>{widths[1]}} | "
                f"{r[2]:>{widths[2]}} | {r[3]:>{widths[3]}} |"
            )

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([fmt(head), rule, *map(fmt, self.rows)])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts and shorter runs")
    parser.add_argument("--messages", type=int, help="throughput messages (200k; quick 50k)")
    parser.add_argument("--seconds-1k", type=float, help="1k msg/s run length (30; quick 5)")
    parser.add_argument("--seconds-10k", type=float, help="10k msg/s run length (20; quick 3)")
    parser.add_argument("--seconds-cpu", type=float, help="CPU window per rate (10; quick 5)")
    args = parser.parse_args()
    n: int = args.messages or (50_000 if args.quick else 200_000)
    paced = [
        (1_000, args.seconds_1k or (5.0 if args.quick else 30.0)),
        (10_000, args.seconds_10k or (3.0 if args.quick else 20.0)),
    ]
    started = time.perf_counter()
    table = Table()
    tmp = Path(tempfile.mkdtemp(prefix="ssmd-bench-all-"))

    def log(text: str) -> None:  # progress on stderr; stdout is only the table
        print(text, file=sys.stderr, flush=True)

    try:
        # Archiver: one stream, filled once; bare consumer and ssmd archiver read it all.
        server = NatsServer(tmp / "js-archiver")
        server.start()
        try:
            size = asyncio.run(fill_stream(server.url, n))
            log(f"[archiver] stream filled with {n} messages of ~{size:.0f} B")
            bare, bare_cpu, bare_rss = isolated(bare_fetch_child, server.url, n, "bare")
            log(f"[archiver] bare fetch+ack: {bare:,.0f} msg/s")
            ours, our_cpu, our_rss = isolated(
                archiver_child, server.url, n, "ssmd", tmp / "archive-throughput"
            )
            log(f"[archiver] ssmd archiver: {ours:,.0f} msg/s")
        finally:
            server.stop()
        (writer, raw), _, _ = isolated(writer_vs_raw_gzip, n, tmp)
        table.section(f"archiver, {n:,} msgs of ~{size:.0f} B from JetStream (file storage)")
        table.row(
            "throughput, msg/s (base: nats-py fetch+ack)",
            f"{ours:,.0f}",
            f"{bare:,.0f}",
            f"{ours / bare:.2f}",
        )
        table.row(
            "writer only, msg/s (base: raw zlib-6)",
            f"{writer:,.0f}",
            f"{raw:,.0f}",
            f"{writer / raw:.2f}",
        )
        table.row(
            "CPU s per 1M msgs",
            f"{our_cpu / n * 1e6:.1f}",
            f"{bare_cpu / n * 1e6:.1f}",
            f"{our_cpu / bare_cpu:.2f}",
        )
        table.row("peak RSS, MiB", f"{our_rss:.0f}", f"{bare_rss:.0f}", f"{our_rss / bare_rss:.2f}")

        # Connector: exchange sending flat out; bare publish of the same payloads.
        exchange, ws_url = start_exchange(exchange_process, n)
        payloads = kalshi_messages(n)
        server = NatsServer(tmp / "js-connector")
        server.start()
        try:
            conn, conn_cpu, conn_rss = isolated(connector_child, server.url, ws_url, n)
            log(f"[connector] ssmd connector: {conn:,.0f} msg/s")
            pub, pub_cpu, pub_rss = isolated(bare_publish_child, server.url, payloads)
            log(f"[connector] bare publish_async: {pub:,.0f} msg/s")
        finally:
            server.stop()
            exchange.terminate()
        avg = sum(map(len, payloads)) / n
        table.section(f"connector, {n:,} msgs of ~{avg:.0f} B, WebSocket -> JetStream acked")
        table.row(
            "throughput, msg/s (base: nats-py publish_async)",
            f"{conn:,.0f}",
            f"{pub:,.0f}",
            f"{conn / pub:.2f}",
        )
        table.row(
            "CPU s per 1M msgs",
            f"{conn_cpu / n * 1e6:.1f}",
            f"{pub_cpu / n * 1e6:.1f}",
            f"{conn_cpu / pub_cpu:.2f}",
        )
        table.row("peak RSS, MiB", f"{conn_rss:.0f}", f"{pub_rss:.0f}", f"{conn_rss / pub_rss:.2f}")

        # Polymarket and Kraken frames: the same exchange and baseline, per venue.
        for venue in ("polymarket", "kraken"):
            exchange, ws_url = start_exchange(venue_exchange_process, venue, n)
            frames = kraken_frames(n) if venue == "kraken" else polymarket_frames(n)[0]
            venue_payloads = messages_of(venue, frames)
            server = NatsServer(tmp / f"js-{venue}")
            server.start()
            try:
                ours, our_cpu, _ = isolated(venue_child, server.url, ws_url, venue, n)
                log(f"[{venue}] ssmd connector: {ours:,.0f} msg/s")
                pub, pub_cpu, _ = isolated(bare_publish_child, server.url, venue_payloads)
                log(f"[{venue}] bare publish_async: {pub:,.0f} msg/s")
            finally:
                server.stop()
                exchange.terminate()
            avg = sum(map(len, venue_payloads)) / n
            table.section(
                f"connector, {venue} frames: {n:,} msgs of ~{avg:.0f} B in {len(frames):,} frames"
            )
            table.row(
                "throughput, msg/s (base: nats-py publish_async)",
                f"{ours:,.0f}",
                f"{pub:,.0f}",
                f"{ours / pub:.2f}",
            )
            table.row(
                "CPU s per 1M msgs",
                f"{our_cpu / n * 1e6:.1f}",
                f"{pub_cpu / n * 1e6:.1f}",
                f"{our_cpu / pub_cpu:.2f}",
            )
        (checked, routed), _, _ = isolated(checksum_cpu)
        table.section("Kraken book checksums (BTC/USD, depth 10), per 1,000 book updates")
        table.row(
            "CPU ms, kept and checked (base: routing only)",
            f"{checked:.1f}",
            f"{routed:.1f}",
            f"{checked / routed:.2f}",
        )

        # Market discovery at Kalshi's scale.
        markets = 20_000 if args.quick else 100_000
        key_pem = new_key_pem()
        exchange, ws_url, rest_url = start_discovery_exchange(key_pem, markets)
        server = NatsServer(tmp / "js-discovery")
        server.start()
        try:
            found, _, found_rss = isolated(
                discovery_child, server.url, ws_url, rest_url, key_pem, markets
            )
            log(f"[discovery] {markets:,} books subscribed in {found['seconds']:.1f}s")
            walk, _, walk_rss = isolated(rest_walk_child, rest_url, key_pem)
            log(f"[discovery] bare REST walk: {walk['seconds']:.1f}s")
        finally:
            server.stop()
            exchange.kill()
        table.section(f"discovery, {markets:,} open markets (base: the bare paced REST walk)")
        table.row(
            "s until every order book is subscribed",
            f"{found['seconds']:.1f}",
            f"{walk['seconds']:.1f}",
            f"{found['seconds'] / walk['seconds']:.2f}",
        )
        table.row(
            "REST requests (markets and events walks)",
            f"{found['rest_requests']:.0f}",
            f"{walk['rest_requests']:.0f}",
        )
        table.row("subscription commands", f"{found['commands']:.0f}")
        table.row("connections", f"{found['connections']:.0f}")
        table.row(
            "peak RSS, MiB", f"{found_rss:.0f}", f"{walk_rss:.0f}", f"{found_rss / walk_rss:.2f}"
        )

        # CPU at Kalshi's real rates: ssmd and the bare recorder on the same exchange.
        window = args.seconds_cpu or (5.0 if args.quick else 10.0)
        warm, idle = 2.0, 3.0 if args.quick else 5.0
        cpu: dict[tuple[str, float], dict[str, float]] = {}
        for rate in (100.0, 1_000.0):
            exchange, ws_url = start_exchange(
                paced_exchange_process, frames_needed(rate, warm, window), rate
            )
            try:
                for name, child in (("ssmd", ssmd_child), ("bare", bare_child)):
                    server = NatsServer(tmp / f"js-cpu-{name}-{rate:g}")
                    server.start()
                    archive = tmp / f"archive-cpu-{name}-{rate:g}"
                    archive.mkdir()
                    try:
                        result, _, _ = isolated(
                            child, server.url, ws_url, rate, warm, window, idle, archive
                        )
                    finally:
                        server.stop()
                    cpu[name, rate] = result
                    log(f"[cpu] {name} at {rate:g} msg/s: {result}")
            finally:
                exchange.terminate()
            # No exchange, NATS or archive: waking alone.
            null, _, _ = isolated(null_child, "", "", rate, warm, window, idle, tmp)
            cpu["null", rate] = null
            log(f"[cpu] null at {rate:g} msg/s: {null}")
        table.section(
            f"CPU, % of one core over {window:g} s (connector+archiver in one process; "
            "base: bare nats-py recorder, one asyncio loop)"
        )
        for rate in (100.0, 1_000.0):
            ours_core, base_core = cpu["ssmd", rate]["busy_core"], cpu["bare", rate]["busy_core"]
            table.row(
                f"at {rate:,.0f} msg/s",
                f"{ours_core * 100:.1f}",
                f"{base_core * 100:.1f}",
                f"{ours_core / base_core:.2f}",
            )
        ours_idle, base_idle = cpu["ssmd", 100.0]["idle_core"], cpu["bare", 100.0]["idle_core"]
        table.row(
            f"idle, connected, for {idle:g} s",
            f"{ours_idle * 100:.2f}",
            f"{base_idle * 100:.2f}",
            f"{ours_idle / base_idle:.2f}" if base_idle else "",
        )
        # The price of waking alone on this machine: ssmd's two threads on its read grid,
        # one bridge crossing a wake, nothing else (and once a fetch_timeout when idle).
        null_busy = statistics.mean(cpu["null", r]["busy_core"] for r in (100.0, 1_000.0))
        null_idle = cpu["null", 100.0]["idle_core"]  # as ssmd's idle row: after 100 msg/s
        table.row("null: waking alone on the read grid", f"{null_busy * 100:.1f}")
        table.row("null: waking alone once a fetch_timeout", f"{null_idle * 100:.2f}")
        for rate in (100.0, 1_000.0):
            above = cpu["ssmd", rate]["busy_core"] - null_busy
            table.row(f"ssmd above null at {rate:,.0f} msg/s", f"{above * 100:.1f}")
        wakes, _, _ = isolated(wake_child, 3.0)
        for w in wakes:
            table.row(
                f"price of one wake, {w.what} every {w.interval * 1e3:g} ms: ms CPU (% of a core)",
                f"{w.cpu_per_wake_ms:.2f} ({w.core * 100:.2f})",
            )

        # End to end at fixed rates.
        fsync_from: dict[str, Any] = {}
        for rate, seconds in paced:
            count = int(rate * seconds)
            exchange, ws_url = start_exchange(paced_exchange_process, count, float(rate))
            server = NatsServer(tmp / f"js-e2e-{rate}")
            server.start()
            try:
                result, _, rss = isolated(
                    e2e_child, server.url, ws_url, count, tmp / f"archive-{rate}", float(rate)
                )
            finally:
                server.stop()
                exchange.terminate()
            log(f"[e2e] {rate} msg/s: {result}")
            d50, d99, d999 = result["durable_ms"]
            table.section(
                f"end to end at {rate:,} msg/s for {seconds:g} s ({result['messages']:,} msgs), connector+archiver in one process"
            )
            table.row(
                "WS receive -> fsync durable, p50/p99/p99.9 ms",
                f"{d50:.1f} / {d99:.1f} / {d999:.1f}",
            )
            s50, s99, s999 = result["sent_durable_ms"]
            table.row(
                "exchange send -> fsync durable (incl. read_interval), p50/p99/p99.9 ms",
                f"{s50:.1f} / {s99:.1f} / {s999:.1f}",
            )
            if result["acked_ms"]:
                a50, a99, a999 = result["acked_ms"]
                table.row(
                    "WS receive -> ack handed over, p50/p99/p99.9 ms",
                    f"{a50:.1f} / {a99:.1f} / {a999:.1f}",
                )
            table.row(
                "first receive -> last durable, s (sustained rate, msg/s)",
                f"{result['span_s']:.1f} ({result['messages'] / result['span_s']:,.0f})",
            )
            table.row("p50 of the last tenth of messages, ms", f"{result['last_tenth_p50_ms']:.1f}")
            table.row(
                "CPU s per 1M msgs (connector+archiver, streaming only)",
                f"{result['cpu_s'] / count * 1e6:.1f}",
            )
            table.row("peak RSS, MiB", f"{rss:.0f}")
            fsync_from = {"rate": rate, **result}

        # Reading back: export and book rebuilding against a plain read of the same files.
        reading, _, read_rss = isolated(measure_archive_reading, n, tmp / "reading")
        log(f"[archive] {reading}")
        table.section(f"reading the archive back, {n:,} Kalshi records (half of them book deltas)")
        table.row(
            "Parquet export, records/s (base: gzip + json.loads per line)",
            f"{reading['export_rate']:,.0f}",
            f"{reading['read_rate']:,.0f}",
            f"{reading['export_rate'] / reading['read_rate']:.2f}",
        )
        table.row(
            f"book rebuild of one market, deltas/s ({reading['book_records']:,} of its records)",
            f"{reading['book_rate']:,.0f}",
        )
        table.row(
            "  the same, archive records scanned/s (base: plain read)",
            f"{reading['book_scan_rate']:,.0f}",
            f"{reading['read_rate']:,.0f}",
            f"{reading['book_scan_rate'] / reading['read_rate']:.2f}",
        )
        table.row("peak RSS (export), MiB", f"{read_rss:.0f}")

        hist = fsync_from["fsync_hist"]
        table.section(
            f"fsync per batch (archiver's fsync_seconds histogram, {fsync_from['rate']:,} msg/s run)"
        )
        table.row("batches fsynced", f"{hist['batches']:,.0f}")
        table.row("mean, ms", f"{hist['mean_s'] * 1e3:.2f}")
        table.row("p99 (bucket upper bound), ms", f"<= {hist['p99_bucket_s'] * 1e3:g}")
        table.row("p99 (exact, timed FileOps), ms", f"{fsync_from['fsync_exact_p99_s'] * 1e3:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print("ssmd benchmarks" + (" (--quick)" if args.quick else ""))
    for line in machine():
        print(line)
    print(f"command: {shlex.join(['benchmarks/run_all', *sys.argv[1:]])}")
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    print()
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
