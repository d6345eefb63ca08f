"""Archiver throughput against a bare nats-py fetch+ack loop, measured in the same run.

    .venv/bin/python benchmarks/bench_archiver.py [--messages 200000] [--rounds 2]

Both read the same stream of Kalshi-shaped ~200-byte messages from a local nats-server
with JetStream on file storage. The baseline is nats-py on plain asyncio: pull
`fetch(1000)` and ack the last message of each batch (AckPolicy.ALL), writing nothing.
The archiver does the same through the Trio bridge and also formats, compresses,
writes and fsyncs every batch before acking it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import nats
import trio
from nats.js import api

from ssmd.archiver.files import FileOps, SlotFile
from ssmd.archiver.lines import format_line
from ssmd.archiver.service import ArchiverStatus, start_archiver
from ssmd.clock import WallClock
from ssmd.config import parse_config
from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from ssmd.nats.types import FetchedMessage
from ssmd.supervisor import Supervisor, supervise

STREAM = "MARKETDATA"
TICKERS = [
    "KXBTCD-26MAR1213-T69499.99",
    "KXBTCD-26FEB14-T100000",
    "INXD-25001",
    "KXHIGHNY-26JAN05-B45",
]


def kalshi_message(i: int) -> tuple[str, bytes]:
    ticker = TICKERS[i % len(TICKERS)]
    payload = {
        "type": "ticker",
        "sid": 1,
        "msg": {
            "market_ticker": ticker,
            "price": 12 + i % 80,
            "yes_bid": 11,
            "yes_ask": 12,
            "volume": 351970 + i,
            "open_interest": 182646,
            "ts": 1732579880 + i // 1000,
        },
    }
    return f"prod.kalshi.json.ticker.{ticker.replace('.', '%2E')}", json.dumps(payload).encode()


async def fill_stream(url: str, n: int) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=4000)
    await js.add_stream(
        api.StreamConfig(name=STREAM, subjects=["prod.kalshi.json.>"], storage=api.StorageType.FILE)
    )
    size = 0
    futures = []
    for i in range(n):
        subject, payload = kalshi_message(i)
        size += len(payload)
        futures.append(
            await js.publish_async(subject, payload, headers={"Ssmd-Recv-Ns": str(time.time_ns())})
        )
        if len(futures) >= 2000:
            await asyncio.gather(*futures)
            futures.clear()
    await asyncio.gather(*futures)
    await nc.close()
    return size / n


async def bare_fetch_ack(url: str, n: int, durable: str) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_consumer(
        STREAM,
        api.ConsumerConfig(
            durable_name=durable, ack_policy=api.AckPolicy.ALL, max_ack_pending=20000
        ),
    )
    sub = await js.pull_subscribe_bind(durable, STREAM)
    got = 0
    start = time.perf_counter()
    while got < n:
        msgs = await sub.fetch(1000, timeout=5)
        got += len(msgs)
        await msgs[-1].ack()
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    await nc.close()
    return n / elapsed


async def ssmd_archiver(url: str, n: int, durable: str, archive: Path) -> tuple[float, int]:
    config = parse_config(
        {
            "env": "prod",
            "nats": {"url": url, "stream": STREAM},
            "archiver": {"consumer": durable, "filter": "prod.kalshi.json.>"},
            "storage": {"path": str(archive)},
        }
    )
    status = ArchiverStatus()
    elapsed = 0.0
    async with open_bridge([url]) as bridge:
        start = time.perf_counter()

        async def start_roles(sup: Supervisor) -> None:
            await start_archiver(sup, config, bridge, WallClock(), status=status)

            async def until_done() -> None:
                nonlocal elapsed
                while status.writer.acks == 0 or status.writer.records < n:
                    await trio.sleep(0.005)
                elapsed = time.perf_counter() - start
                sup.request_stop("benchmark done")

            sup.start_sink("bench.watch", until_done)

        await supervise(start_roles, shutdown_timeout=30, handle_signals=False)
    return n / elapsed, status.writer.acks


def writer_vs_raw_gzip(n: int, tmp: Path) -> tuple[float, float]:
    """The writer's per-batch work from memory, against bare zlib on the same lines."""
    msgs = [
        FetchedMessage(subject, payload, i + 1, i + 1, 1, time.time_ns(), "")
        for i, (subject, payload) in enumerate(kalshi_message(i) for i in range(n))
    ]
    lines = [format_line(m.stream_seq, m.subject, m.data, m.recv_ns) for m in msgs]
    start = time.perf_counter()
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    with open(tmp / "raw.gz", "wb") as f:
        for i in range(0, n, 1000):
            f.write(
                compressor.compress(b"".join(lines[i : i + 1000]))
                + compressor.flush(zlib.Z_SYNC_FLUSH)
            )
    raw = n / (time.perf_counter() - start)
    start = time.perf_counter()
    slot = SlotFile(tmp / "writer", "0000", 0, 900 * 10**9, 6, FileOps())
    for i in range(0, n, 1000):
        slot.append(msgs[i : i + 1000])
    slot.finish()
    return n / (time.perf_counter() - start), raw


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating rounds; medians are reported"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ssmd-bench-"))
    server = NatsServer(tmp / "js")
    server.start()
    try:
        avg = asyncio.run(fill_stream(server.url, args.messages))
        bare: list[float] = []
        ours: list[float] = []
        for r in range(args.rounds):
            bare.append(asyncio.run(bare_fetch_ack(server.url, args.messages, f"bare{r}")))
            rate, _acks = trio.run(
                ssmd_archiver, server.url, args.messages, f"ssmd{r}", tmp / f"archive{r}"
            )
            ours.append(rate)
        writer, raw = writer_vs_raw_gzip(args.messages, tmp)
        bare.sort()
        ours.sort()
        b, o = bare[len(bare) // 2], ours[len(ours) // 2]
        print(
            f"archiver benchmark: {args.messages} messages of ~{avg:.0f} B, {args.rounds} rounds (median)"
        )
        print(f"  bare nats-py fetch(1000)+ack-all (asyncio) : {b:>9,.0f} msg/s")
        print(f"  ssmd archiver (format+gzip+fsync+ack)      : {o:>9,.0f} msg/s")
        print(f"  ratio                                      : {o / b:>9.2f}")
        print(f"  raw zlib level 6, 1000-line blocks         : {raw:>9,.0f} msg/s")
        print(f"  ssmd writer (format+gzip+write+fsync)      : {writer:>9,.0f} msg/s")
        print(f"  ratio                                      : {writer / raw:>9.2f}")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
