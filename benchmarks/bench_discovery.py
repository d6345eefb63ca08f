"""Market discovery at Kalshi's scale: N open markets (the real count is about 95,000).

The simulated Kalshi (WebSocket and REST over one catalogue, signatures checked, REST
budget 20 GET/s answering 429 beyond) runs in its own process. The measuring process
runs the production connector (`start_connector` on a supervisor, a real nats-server)
with `[connector.discovery]` and `orderbook_delta`, and stops the clock when the
exchange-confirmed order-book subscriptions cover every market. Baseline: the bare REST
walk of the same markets with the same client and pace, which bounds discovery from
below (the walk is what takes time; subscribing follows page by page).

    .venv/bin/python benchmarks/bench_discovery.py [--markets N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ssmd.clock import WallClock
from ssmd.config import parse_config
from ssmd.connector.auth import Credentials
from ssmd.connector.rest import RestClient, RestSettings
from ssmd.connector.service import start_connector
from ssmd.feeds.base import DynamicSession
from ssmd.feeds.kalshi_discovery import PAGE_LIMIT, Selection
from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from ssmd.simulators.kalshi import KalshiExchange, KalshiMarkets, KalshiRest
from ssmd.supervisor import Supervisor, supervise

API_KEY = "bench-key"
REST_RATE = 15.0  # under the simulated (and Kalshi's basic) 20 GET/s


def bench_tickers(count: int) -> list[str]:
    """Ten markets an event, a hundred events a series."""
    return [f"KXS{i // 1000}-E{i // 10}-T{i % 10}" for i in range(count)]


def exchange_process(key_pem: bytes, count: int, ports: Any) -> None:
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    catalogue = KalshiMarkets()
    catalogue.open(bench_tickers(count))

    async def serve() -> None:
        ws = KalshiExchange(key.public_key(), API_KEY, catalogue=catalogue)
        rest = KalshiRest(catalogue, public_key=key.public_key(), api_key=API_KEY)
        async with trio.open_nursery() as nursery:
            await nursery.start(ws.run)
            rest_port = await nursery.start(rest.serve)
            ports.put((ws.url, f"http://127.0.0.1:{rest_port}/trade-api/v2"))

    trio.run(serve)


async def measure_discovery(
    nats_url: str, ws_url: str, rest_url: str, key_pem: bytes, count: int
) -> dict[str, float]:
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    config = parse_config(
        {
            "env": "bench",
            "nats": {"url": nats_url, "stream": "BENCHDISC"},
            "service": {"shutdown_timeout": "10s"},
            "connector": {
                "url": ws_url,
                "rest_url": rest_url,
                "channels": ["orderbook_delta"],
                "command_timeout": "30s",
                "discovery": {"rest_rate": REST_RATE},
            },
        }
    )
    result: dict[str, float] = {}

    async def start_roles(sup: Supervisor) -> None:
        start = time.perf_counter()
        tasks = await start_connector(sup, config, bridge, WallClock(), Credentials(API_KEY, key))
        feed = tasks.feeds[0]
        discovery = feed.discovery
        assert discovery is not None

        def subscribed() -> int:
            total = 0
            for c in feed.connections:
                if isinstance(c.session, DynamicSession):
                    total += sum(
                        n
                        for channel, n in c.session.sid_markets().values()
                        if channel == "orderbook_delta"
                    )
            return total

        with trio.fail_after(600):
            while subscribed() < count:
                await trio.sleep(0.05)
        result["seconds"] = time.perf_counter() - start
        result["rest_requests"] = sum(discovery.rest.stats.requests.values())
        result["commands"] = sum(sum(c.stats.changes.values()) for c in feed.connections)
        result["connections"] = len(feed.connections)
        sup.request_stop("measured")

    async with open_bridge(config.nats.servers, request_timeout=5.0) as bridge:
        await supervise(start_roles, shutdown_timeout=10, handle_signals=False)
    return result


async def measure_rest_walk(rest_url: str, key_pem: bytes) -> dict[str, float]:
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    credentials = Credentials(API_KEY, key)
    settings = RestSettings(rate=REST_RATE, burst=REST_RATE)
    start = time.perf_counter()
    markets = 0
    async with RestClient(rest_url, settings, headers=credentials.request_headers) as rest:
        for query in Selection().market_walks():
            async for page in rest.walk("/markets", query, "markets", limit=PAGE_LIMIT):
                markets += len(page)
        requests = sum(rest.stats.requests.values())
    return {"seconds": time.perf_counter() - start, "markets": markets, "rest_requests": requests}


def start_exchange(key_pem: bytes, count: int) -> tuple[Any, str, str]:
    spawn = multiprocessing.get_context("spawn")
    ports: Any = spawn.Queue()
    process = spawn.Process(target=exchange_process, args=(key_pem, count, ports), daemon=True)
    process.start()
    ws_url, rest_url = ports.get(timeout=300)
    return process, ws_url, rest_url


def new_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--markets", type=int, default=100_000)
    args = parser.parse_args()
    key_pem = new_key_pem()
    process, ws_url, rest_url = start_exchange(key_pem, args.markets)
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "js")
        server.start()
        try:
            ours = trio.run(measure_discovery, server.url, ws_url, rest_url, key_pem, args.markets)
            walk = trio.run(measure_rest_walk, rest_url, key_pem)
        finally:
            server.stop()
            process.kill()
    print(ours, walk)


if __name__ == "__main__":
    main()
