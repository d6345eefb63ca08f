"""Connector throughput on Polymarket and Kraken frames, and the CPU cost of Kraken's
book checksums.

A raw exchange process (pre-encoded frames over a plain socket, so it is never the
limit) completes the upgrade, answers the connector's subscribes as the venue would
(Kraken: one ack per symbol; Polymarket: nothing), then sends N frames made by the
venue's simulator: Kraken book updates with their true checksums, trades and tickers;
Polymarket events, many of them in JSON arrays that the connector splits. The production
engine, venue session and publisher run on a real nats-server; the clock stops when
JetStream has acknowledged the last message. The baseline is the same bare nats-py
`publish_async` loop as for Kalshi, publishing the same message payloads.

    .venv/bin/python benchmarks/bench_venues.py [--messages N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_connector import WINDOW, measure_bare

from ssmd.clock import WallClock
from ssmd.config import ConnectorConfig
from ssmd.connector.connection import Connection, ConnectionSettings
from ssmd.connector.publisher import Inbound, Publisher
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds import load_venue
from ssmd.feeds.base import ConnectionStats, SessionContext, Subjects
from ssmd.feeds.jsonframes import split_array
from ssmd.feeds.kraken import KrakenSession
from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from ssmd.nats.types import StreamSpec
from ssmd.simulators.kalshi.raw import read_client_frame, ws_frame
from ssmd.simulators.kraken import KrakenExchange, KrakenSubscriptions
from ssmd.simulators.kraken_wire import encode
from ssmd.simulators.polymarket import PolymarketExchange

KRAKEN_SYMBOLS = ("BTC/USD", "ETH/USD")
KRAKEN_CHANNELS = ("book", "trade", "ticker")


class _Collector:
    """Stands in for a simulator connection: keeps what would be sent."""

    index = 1

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def post(self, frame: str | bytes, kind: object = None) -> None:
        self.frames.append(frame.encode() if isinstance(frame, str) else frame)


def kraken_frames(count: int) -> list[bytes]:
    """Book snapshots, then book updates (4 in 5), trades and tickers: `count` frames."""
    sim = KrakenExchange(KRAKEN_SYMBOLS, rate=0, seed=11)
    collector = _Collector()
    sim.sessions.append(collector)  # type: ignore[arg-type]
    subs = KrakenSubscriptions()
    for channel in KRAKEN_CHANNELS:
        subs.channels[channel] |= set(KRAKEN_SYMBOLS)
    sim.subscriptions[1] = subs
    for symbol in KRAKEN_SYMBOLS:
        collector.post(encode(sim._book_snapshot(sim.symbols[symbol], 10)))
    while len(collector.frames) < count:
        sim.step()
    return collector.frames[:count]


def book_updates(count: int) -> list[bytes]:
    """`count` book frames of one symbol (a snapshot first), for the checksum figure."""
    sim = KrakenExchange(("BTC/USD",), rate=0, seed=12)
    collector = _Collector()
    sim.sessions.append(collector)  # type: ignore[arg-type]
    subs = KrakenSubscriptions()
    subs.channels["book"].add("BTC/USD")
    sim.subscriptions[1] = subs
    collector.post(encode(sim._book_snapshot(sim.symbols["BTC/USD"], 10)))
    while len(collector.frames) < count:
        sim.change_book(sim.symbols["BTC/USD"])
    return collector.frames[:count]


def polymarket_frames(messages: int) -> tuple[list[bytes], list[str]]:
    """Frames holding `messages` events in all (bursts as arrays), and the token ids."""
    sim = PolymarketExchange(markets=20, rate=0, seed=13)
    collector = _Collector()
    sim.sessions.append(collector)  # type: ignore[arg-type]
    tokens = [t for m in sim.markets for t in m.tokens]
    sim.assets[1] = set(tokens)
    sim.custom[1] = True
    frames: list[bytes] = []
    total = 0
    while total < messages:
        sim.step()
        for frame in collector.frames:
            elements = split_array(frame)
            if total + len(elements) > messages:
                frame = elements[0]
                elements = [frame]
            frames.append(frame)
            total += len(elements)
            if total >= messages:
                break
        collector.frames.clear()
    return frames, tokens


def messages_of(venue: str, frames: list[bytes]) -> list[bytes]:
    if venue == "polymarket":
        return [e for f in frames for e in split_array(f)]
    return frames


def _accept(conn: socket.socket) -> None:
    import base64
    import hashlib

    request = b""
    while b"\r\n\r\n" not in request:
        request += conn.recv(4096)
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


def exchange_process(venue: str, count: int, ports: multiprocessing.Queue[int]) -> None:
    """Serve one connection at a time: upgrade, answer subscribes, send every frame."""
    if venue == "kraken":
        blob = b"".join(ws_frame(f) for f in kraken_frames(count))
    else:
        frames, _ = polymarket_frames(count)
        blob = b"".join(ws_frame(f) for f in frames)
    listener = socket.create_server(("127.0.0.1", 0))
    ports.put(listener.getsockname()[1])
    while True:
        conn, _ = listener.accept()
        _accept(conn)
        if venue == "kraken":
            for _ in KRAKEN_CHANNELS:
                request = json.loads(read_client_frame(conn))
                for symbol in request["params"]["symbol"]:
                    ack = {
                        "method": "subscribe",
                        "req_id": request["req_id"],
                        "success": True,
                        "result": {"channel": request["params"]["channel"], "symbol": symbol},
                    }
                    conn.sendall(ws_frame(json.dumps(ack).encode()))
        else:
            read_client_frame(conn)  # the initial assets_ids frame; Polymarket answers nothing
        conn.sendall(blob)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        conn.close()


def venue_config(venue: str, tokens: list[str]) -> tuple[ConnectorConfig, list[SubscriptionPlan]]:
    if venue == "kraken":
        config = ConnectorConfig(
            feed="kraken",
            kind="kraken",
            channels=list(KRAKEN_CHANNELS),
            markets=list(KRAKEN_SYMBOLS),
        )
        plans = [SubscriptionPlan(c, KRAKEN_SYMBOLS) for c in KRAKEN_CHANNELS]
    else:
        config = ConnectorConfig(
            feed="polymarket", kind="polymarket", channels=["market"], markets=[]
        )
        plans = [SubscriptionPlan("market", tuple(tokens))]
    return config, plans


async def measure_venue(nats_url: str, ws_url: str, venue: str, count: int) -> float:
    """Messages per second from the first data frame to the last JetStream ack."""
    _, tokens = polymarket_frames(1) if venue == "polymarket" else ([], [])
    config, plans = venue_config(venue, tokens)
    clock = WallClock()
    async with open_bridge([nats_url]) as bridge:
        await bridge.ensure_stream(
            StreamSpec("BENCH", [f"bench.{venue}.json.>"], 3600, 0, -1, 120, 1)
        )
        publisher = Publisher(
            bridge.publish_batch,
            env="bench",
            feed=venue,
            clock=clock,
            buffer_messages=1_000_000,
            buffer_bytes=1 << 30,
            batch_max=WINDOW,
            timeout=10.0,
        )
        connection = Connection(
            0,
            ws_url,
            load_venue(venue),
            plans,
            config=config,
            env="bench",
            clock=clock,
            settings=ConnectionSettings(60, 30, 10, 0.5, 5),
            headers=lambda url: [],
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
        assert connection.stats.gaps == 0, "a checksum or trade_id check failed"
        assert connection.stats.unrouted == 0, connection.stats
        state = await bridge.stream_state("BENCH")
        assert state is not None and state.messages == count + 1, state
    return count / elapsed


def checksum_cpu(updates: int = 20_000) -> tuple[float, float]:
    """CPU ms per 1,000 book frames through the Kraken session: with the book kept and
    every checksum checked, and routing only (the same session, book checks skipped)."""
    frames = book_updates(updates)

    def run(check: bool) -> float:
        stats = ConnectionStats()
        config = ConnectorConfig(feed="kraken", kind="kraken", channels=["book"])
        context = SessionContext(0, Subjects("bench", "kraken"), stats, config)
        session = KrakenSession(context, [SubscriptionPlan("book", ("BTC/USD",))])
        if not check:
            continuity = session._continuity
            continuity.check_book = lambda payload, recv_ns, out, subscribed: False  # type: ignore[method-assign]
        out: list[Inbound] = []
        start = time.process_time()
        for frame in frames:
            session.on_frame(frame, 0, out)
        elapsed = time.process_time() - start
        assert stats.gaps == 0 and len(out) == len(frames)
        return elapsed / len(frames) * 1000 * 1000

    run(True)  # warm up
    return min(run(True) for _ in range(3)), min(run(False) for _ in range(3))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    count: int = args.messages
    ctx = multiprocessing.get_context("spawn")
    results: dict[str, Any] = {}
    for venue in ("polymarket", "kraken"):
        ports: multiprocessing.Queue[int] = ctx.Queue()
        exchange = ctx.Process(target=exchange_process, args=(venue, count, ports), daemon=True)
        exchange.start()
        port = ports.get(timeout=300)
        frames = kraken_frames(count) if venue == "kraken" else polymarket_frames(count)[0]
        payloads = messages_of(venue, frames)
        with tempfile.TemporaryDirectory(prefix="ssmd-bench-") as tmp:
            server = NatsServer(Path(tmp) / "js")
            server.start()
            try:
                ours = trio.run(
                    measure_venue, server.url, f"ws://127.0.0.1:{port}/", venue, len(payloads)
                )
                bare = asyncio.run(measure_bare(server.url, payloads))
            finally:
                server.stop()
                exchange.terminate()
        results[venue] = (ours, bare, len(frames), len(payloads))
        print(
            f"{venue}: {len(payloads)} messages in {len(frames)} frames: connector {ours:,.0f} msg/s, "
            f"bare publish_async {bare:,.0f} msg/s, ratio {ours / bare:.2f} (goal >= 0.8)"
        )
    checked, routed = checksum_cpu()
    print(f"kraken book: {checked:.1f} CPU ms per 1,000 updates checked, {routed:.1f} routing only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
