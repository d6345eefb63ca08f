"""Connector throughput: WebSocket -> JetStream-acknowledged, against a bare nats-py loop.

A fake exchange in a separate process streams N Kalshi-like messages as fast as it can
(pre-encoded WebSocket frames over a raw socket, so the exchange is never the limit).
The connector's reader, router and publisher run as in production, on a real
nats-server, and the clock stops when JetStream has acknowledged the last message.
In the same run a bare nats-py `publish_async` loop publishes the same payloads with
the same headers. Prints both rates and their ratio (goal: >= 0.8).

    .venv/bin/python benchmarks/bench_connector.py [--messages N]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import multiprocessing
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

import nats
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssmd.clock import WallClock
from ssmd.config import ConnectorConfig
from ssmd.connector.connection import Connection, ConnectionSettings
from ssmd.connector.publisher import Inbound, PublishBatch, Publisher
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds.kalshi import VENUE as KALSHI
from ssmd.nats.bridge import StreamSpec, open_bridge
from ssmd.nats.server import NatsServer

WINDOW = 4000
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def kalshi_messages(count: int) -> list[bytes]:
    tickers = [f"KXBTCD-26MAR{1200 + i % 24:04d}-T{60000 + 250 * i}.99" for i in range(500)]
    out = []
    for n in range(count):
        ticker = tickers[n % len(tickers)]
        msg = {
            "type": "trade",
            "sid": 1,
            "seq": n + 1,
            "msg": {
                "trade_id": f"5d93{n:012x}-7a1f-4c1e-9f0e-0b7c",
                "market_ticker": ticker,
                "yes_price": 40 + n % 50,
                "no_price": 60 - n % 50,
                "yes_price_dollars": "0.4500",
                "no_price_dollars": "0.5500",
                "count": 1 + n % 7,
                "count_fp": f"{1 + n % 7}.00",
                "taker_side": "yes" if n % 2 else "no",
                "ts": 1773331880 + n // 100,
            },
        }
        out.append(json.dumps(msg, separators=(",", ":")).encode())
    return out


def ws_frame(payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


def read_client_frame(conn: socket.socket) -> bytes:
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("client closed")
            data += chunk
        return data

    _, second = exact(2)
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", exact(2))
    elif size == 127:
        (size,) = struct.unpack("!Q", exact(8))
    mask = exact(4)
    body = exact(size)
    return bytes(b ^ mask[i % 4] for i, b in enumerate(body))


def accept_subscriber(conn: socket.socket) -> None:
    """Complete the WebSocket upgrade and answer the client's subscribe (sid 1)."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += conn.recv(4096)
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    command = json.loads(read_client_frame(conn))
    reply = {"type": "subscribed", "id": command["id"], "msg": {"channel": "trade", "sid": 1}}
    conn.sendall(ws_frame(json.dumps(reply).encode()))


def bench_connector_tasks(
    publish_batch: PublishBatch, clock: WallClock, ws_url: str
) -> tuple[Publisher, Connection]:
    """The production publisher and one connection, configured for the benchmarks."""
    publisher = Publisher(
        publish_batch,
        env="bench",
        feed="kalshi",
        clock=clock,
        buffer_messages=1_000_000,
        buffer_bytes=1 << 30,
        batch_max=WINDOW,
        timeout=10.0,
    )
    connection = Connection(
        0,
        ws_url,
        KALSHI,
        [SubscriptionPlan("trade")],
        config=ConnectorConfig(feed="kalshi"),
        env="bench",
        clock=clock,
        settings=ConnectionSettings(60, 30, 10, 0.5, 5),
        headers=lambda url: [],
    )
    return publisher, connection


def exchange_process(count: int, ports: multiprocessing.Queue[int]) -> None:
    """Serve one connection: handshake, answer the subscribe, then stream everything."""
    frames = b"".join(ws_frame(m) for m in kalshi_messages(count))
    listener = socket.create_server(("127.0.0.1", 0))
    ports.put(listener.getsockname()[1])
    while True:
        conn, _ = listener.accept()
        accept_subscriber(conn)
        conn.sendall(frames)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        conn.close()


async def measure_connector(nats_url: str, ws_url: str, count: int) -> float:
    clock = WallClock()
    async with open_bridge([nats_url], publish_window=WINDOW) as bridge:
        await bridge.ensure_stream(
            StreamSpec("BENCH", ["bench.kalshi.json.>"], 3600, 0, -1, 120, 1)
        )
        publisher, connection = bench_connector_tasks(bridge.publish_batch, clock, ws_url)
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
            connector_rate = trio.run(measure_connector, server.url, ws_url, count)
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
