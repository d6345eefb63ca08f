"""Connector throughput: WebSocket -> JetStream-acknowledged, against a bare nats-py loop.

The simulated exchange's raw mode (`ssmd.simulators.kalshi.raw`) streams N Kalshi-like
messages from a separate process as fast as it can (pre-encoded WebSocket frames over a
raw socket, so the exchange is never the limit).
The connector's reader, router and publisher run as in production, on a real
nats-server, and the clock stops when JetStream has acknowledged the last message.
In the same run a bare nats-py `publish_async` loop publishes the same payloads with
the same headers. Prints both rates and their ratio (goal: >= 0.8).

    .venv/bin/python benchmarks/bench_connector.py [--messages N]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import attrs
import nats
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssmd.clock import WallClock
from ssmd.config import ConnectorConfig
from ssmd.connector.connection import Connection
from ssmd.connector.publisher import Inbound, PublishBatch, Publisher
from ssmd.connector.shards import SubscriptionPlan
from ssmd.connector.startup import connection_settings
from ssmd.feeds.kalshi import VENUE as KALSHI
from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from ssmd.nats.types import StreamSpec
from ssmd.simulators.kalshi.raw import exchange_process, kalshi_messages

WINDOW = 4000


def bench_connector_tasks(
    publish_batch: PublishBatch,
    clock: WallClock,
    ws_url: str,
    linger: float = 0.0,
    read_interval: float | None = None,
) -> tuple[Publisher, Connection]:
    """The production publisher and one connection (`connector` settings at their
    defaults unless given), configured for the benchmarks."""
    publisher = Publisher(
        publish_batch,
        env="bench",
        feed="kalshi",
        clock=clock,
        buffer_messages=1_000_000,
        buffer_bytes=1 << 30,
        batch_max=WINDOW,
        timeout=10.0,
        linger=linger,
    )
    config = ConnectorConfig(feed="kalshi")
    settings = connection_settings(config)
    if read_interval is not None:
        settings = attrs.evolve(settings, read_interval=read_interval)
    connection = Connection(
        0,
        ws_url,
        KALSHI,
        [SubscriptionPlan("trade")],
        config=config,
        env="bench",
        clock=clock,
        settings=settings,
        headers=lambda url: [],
    )
    return publisher, connection


async def measure_connector(
    nats_url: str, ws_url: str, count: int, read_interval: float | None = None
) -> float:
    clock = WallClock()
    async with open_bridge([nats_url]) as bridge:
        await bridge.ensure_stream(
            StreamSpec("BENCH", ["bench.kalshi.json.>"], 3600, 0, -1, 120, 1)
        )
        publisher, connection = bench_connector_tasks(
            bridge.publish_batch, clock, ws_url, read_interval=read_interval
        )
        send, receive = trio.open_memory_channel[list[Inbound]](64)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher.run, receive)
            nursery.start_soon(connection.run, send)
            while publisher.stats.received < 2:  # the connect record, then data
                await trio.sleep(0.0005)
            start = time.perf_counter()
            while publisher.stats.acked < count + 1:
                await trio.sleep(0.002)
            elapsed = time.perf_counter() - start
            nursery.cancel_scope.cancel()
        assert connection.stats.gaps == 0, "the benchmark exchange skipped seq"
        state = await bridge.stream_state("BENCH")
        assert state is not None and state.messages == count + 1, state
    return count / elapsed


async def measure_bare(nats_url: str, payloads: list[bytes]) -> float:
    nc = await nats.connect(nats_url)
    js = nc.jetstream(publish_async_max_pending=WINDOW)
    await js.add_stream(name="BARE", subjects=["bare.>"], duplicate_window=120)
    subjects = [f"bare.kalshi.json.trade.T{n % 500}" for n in range(len(payloads))]
    start = time.perf_counter()
    futures = []
    for n, payload in enumerate(payloads):
        headers = {"Nats-Msg-Id": f"bare-{n}", "Ssmd-Recv-Ns": str(time.time_ns())}
        futures.append(await js.publish_async(subjects[n], payload, headers=headers))
        if len(futures) >= WINDOW:
            await asyncio.gather(*futures)
            futures.clear()
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - start
    info = await js.stream_info("BARE")
    assert info.state.messages == len(payloads)
    await nc.close()
    return len(payloads) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument(
        "--read-interval", type=float, help="seconds (default: connector.read_interval's)"
    )
    args = parser.parse_args()
    count: int = args.messages

    ctx = multiprocessing.get_context("spawn")
    ports: multiprocessing.Queue[int] = ctx.Queue()
    exchange = ctx.Process(target=exchange_process, args=(count, ports), daemon=True)
    exchange.start()
    port = ports.get(timeout=60)
    ws_url = f"ws://127.0.0.1:{port}/trade-api/ws/v2"
    payloads = kalshi_messages(count)
    size = sum(map(len, payloads)) / count

    with tempfile.TemporaryDirectory(prefix="ssmd-bench-") as tmp:
        server = NatsServer(Path(tmp) / "js")
        server.start()
        try:
            connector_rate = trio.run(
                measure_connector, server.url, ws_url, count, args.read_interval
            )
            bare_rate = asyncio.run(measure_bare(server.url, payloads))
        finally:
            server.stop()
            exchange.terminate()

    print(f"messages: {count} (~{size:.0f} B each), window {WINDOW}")
    print(f"connector WebSocket -> JetStream acked: {connector_rate:10,.0f} msg/s")
    print(f"bare nats-py publish_async loop:       {bare_rate:10,.0f} msg/s")
    print(f"ratio: {connector_rate / bare_rate:.2f} (goal >= 0.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
