"""Polymarket and Kraken from exchange to archive: `ssmd run --role connector --role
archiver` in one process against each simulated venue, through a dropped connection; the
archive holds every data message the exchange sent, in order, and `ssmd data verify`
passes."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import trio

from ssmd.archiver.lines import strip_meta
from ssmd.feeds.jsonframes import split_array
from ssmd.nats.server import NatsServer
from ssmd.simulators.kraken import KrakenExchange
from ssmd.simulators.polymarket import PolymarketExchange
from ssmd.simulators.wsserver import FrameKind, SimServer
from tests.procs import SsmdProcess, archived_records, check_manifests, http_get

SHUTDOWN_REASON = {
    "polymarket": "shutdown: venue does not confirm unsubscribe",
    "kraken": "shutdown: unsubscribed, nothing in flight",
}


def write_config(tmp_path: Path, nats_url: str, venue: str, connector: str) -> Path:
    path = tmp_path / "ssmd.toml"
    path.write_text(
        f"""env = "prod"
[nats]
url = "{nats_url}"
stream = "MARKETDATA"
[[connector]]
feed = "{venue}"
backoff_initial = "50ms"
backoff_max = "200ms"
{connector}
[archiver]
consumer = "archiver-{venue}"
filter = "prod.{venue}.json.>"
[storage]
path = "{tmp_path / "archive"}"
"""
    )
    return path


async def wait_archived(feed_dir: Path, expected: int, timeout: float = 60) -> None:
    """Until the archive (finished and open files) holds `expected` data lines."""
    with trio.fail_after(timeout):
        while True:
            count = 0
            for path in feed_dir.glob("*/*.jsonl.gz*"):
                data = path.read_bytes()
                try:
                    text = zlib.decompressobj(31).decompress(data)
                except zlib.error:
                    text = gzip.decompress(data)
                count += sum(
                    1 for line in text.split(b"\n") if line and b".json.ssmd." not in line[:120]
                )
            if count >= expected:
                return
            await trio.sleep(0.2)


def sent_messages(sim: SimServer, venue: str) -> list[bytes]:
    frames = [f.data for f in sim.sent if f.kind is FrameKind.DATA]
    if venue == "polymarket":
        return [element for frame in frames for element in split_array(frame)]
    return frames


@pytest.mark.parametrize("venue", ["polymarket", "kraken"])
async def test_venue_to_archive_through_a_drop(
    tmp_path: Path, nats_server: NatsServer, venue: str
) -> None:
    sim: SimServer
    if venue == "polymarket":
        poly = PolymarketExchange(markets=3, rate=200, seed=7)
        sim = poly
        key = poly.markets[0].condition_id
    else:
        sim = KrakenExchange(rate=200, seed=7)
        key = "BTC/USD"
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.run)
        if isinstance(sim, PolymarketExchange):
            markets = json.dumps([m.condition_id for m in sim.markets])
            connector = f'url = "{sim.url}"\nrest_url = "{sim.gamma.url}"\nchannels = ["market"]\nmarkets = {markets}'
        else:
            connector = f'url = "{sim.url}"\nchannels = ["book", "trade", "ticker"]\nmarkets = ["BTC/USD", "ETH/USD"]'
        proc = SsmdProcess(
            write_config(tmp_path, nats_server.url, venue, connector), ("connector", "archiver")
        )
        proc.start()
        try:
            first = await sim.session(0, timeout=30)
            await sim.wait_until(lambda: len(sim.data_frames(first.index)) > 200, timeout=30)
            await first.drop()
            second = await sim.session(1, timeout=30)
            await sim.wait_until(lambda: len(sim.data_frames(second.index)) > 200, timeout=30)
            sim.paused = True
            await sim.wait_until(
                lambda: all(s.queued == 0 or s.closed.is_set() for s in sim.sessions)
            )
            expected = sent_messages(sim, venue)
            await wait_archived(tmp_path / "archive" / venue, len(expected))
        finally:
            # In a thread: the simulator in this process answers the unsubscribes meanwhile.
            code, _ = await trio.to_thread.run_sync(proc.terminate)
        nursery.cancel_scope.cancel()
    assert code == 0, proc.log.read_text()[-3000:]
    feed_dir = tmp_path / "archive" / venue
    records = archived_records(feed_dir)
    market = [r for r in records if f".{venue}.json.ssmd." not in r["_subject"]]
    assert [strip_meta(r) for r in market] == [json.loads(m) for m in expected]
    kinds = [r["_subject"].rsplit(".", 1)[1] for r in records if ".json.ssmd." in r["_subject"]]
    assert kinds.count("connect") == 2 and kinds.count("disconnect") >= 1
    # The stop is recorded honestly: Kraken confirms each unsubscribe, Polymarket never does.
    assert records[-1]["type"] == "ssmd_disconnect"
    assert records[-1]["reason"] == SHUTDOWN_REASON[venue]
    manifest = json.loads(next(feed_dir.glob("*/manifest.json")).read_text())
    assert key in manifest["tickers"]
    assert check_manifests(feed_dir)["gaps"] == []
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "ssmd",
            "data",
            "verify",
            venue,
            "--path",
            str(tmp_path / "archive"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def test_two_venues_two_archivers_in_one_run_each_drains_at_sigterm(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """`[[archiver]]` per feed in one `ssmd run`: each archive holds every message its
    exchange sent and ends with its own shutdown record; /metrics has one family per
    metric with a sample per feed."""
    poly = PolymarketExchange(markets=3, rate=200, seed=11)
    kraken = KrakenExchange(rate=200, seed=11)
    async with trio.open_nursery() as nursery:
        await nursery.start(poly.run)
        await nursery.start(kraken.run)
        markets = json.dumps([m.condition_id for m in poly.markets])
        config = tmp_path / "ssmd.toml"
        config.write_text(
            f"""env = "prod"
[nats]
url = "{nats_server.url}"
stream = "MARKETDATA"
[[connector]]
feed = "polymarket"
url = "{poly.url}"
rest_url = "{poly.gamma.url}"
channels = ["market"]
markets = {markets}
[[connector]]
feed = "kraken"
url = "{kraken.url}"
channels = ["book", "trade", "ticker"]
markets = ["BTC/USD", "ETH/USD"]
[[archiver]]
consumer = "archiver-polymarket"
filter = "prod.polymarket.json.>"
[[archiver]]
consumer = "archiver-kraken"
filter = "prod.kraken.json.>"
[storage]
path = "{tmp_path / "archive"}"
"""
        )
        proc = SsmdProcess(config, ())
        proc.start()
        try:
            await trio.to_thread.run_sync(proc.wait_ready)
            await poly.wait_until(lambda: len(poly.data_frames()) > 300, timeout=30)
            await kraken.wait_until(lambda: len(kraken.data_frames()) > 300, timeout=30)
            _, metrics = await trio.to_thread.run_sync(http_get, proc.health_port, "/metrics")
            # The exchanges keep streaming: the stop itself must take the tail.
            code, _ = await trio.to_thread.run_sync(proc.terminate)
        finally:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.kill9()
        nursery.cancel_scope.cancel()
    assert code == 0, proc.log.read_text()[-3000:]
    assert metrics.count("# TYPE ssmd_archived_messages_total counter") == 1, metrics
    for feed in ("polymarket", "kraken"):
        assert f'ssmd_archive_acks_total{{feed="{feed}"}}' in metrics
    sims: dict[str, SimServer] = {"polymarket": poly, "kraken": kraken}
    for feed, sim in sims.items():
        records = archived_records(tmp_path / "archive" / feed)
        market = [strip_meta(r) for r in records if ".json.ssmd." not in r["_subject"]]
        sent = [json.loads(m) for m in sent_messages(sim, feed)]
        if feed == "kraken":  # it confirms each unsubscribe: nothing is left on the wire
            assert market == sent
        else:  # frames sent after the unsubscribe may meet a closed socket
            assert len(market) > 300 and market == sent[: len(market)]
        assert records[-1]["type"] == "ssmd_disconnect", feed
        assert records[-1]["reason"] == SHUTDOWN_REASON[feed]
        assert check_manifests(tmp_path / "archive" / feed)["gaps"] == []
