"""Exchange to archive: `ssmd run --role connector --role archiver` in one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from ssmd.archiver.lines import strip_meta
from ssmd.nats.server import NatsServer
from ssmd.simulators.kalshi import trade_msg
from tests import configs
from tests.keys import API_KEY, pem, private_key
from tests.procs import SsmdProcess, archived_records, check_manifests, metric
from tests.test_connector_cli import env_with
from tests.test_connector_e2e import fake_exchange
from tests.test_health import get

DOT = "KXBTCD-26MAR1213-T69499.99"


def write_config(tmp_path: Path, nats_url: str, ws_url: str) -> Path:
    return configs.write_config(
        tmp_path / "ssmd.toml",
        {
            "env": "prod",
            "nats": {"url": nats_url, "stream": "MARKETDATA"},
            "connector": {
                "url": ws_url,
                "channels": ["trade"],
                "markets": [DOT, "KXA-1"],
                "backoff_initial": "50ms",
                "backoff_max": "200ms",
            },
            "archiver": {"consumer": "archiver-kalshi", "filter": "prod.kalshi.json.>"},
            "storage": {"path": str(tmp_path / "archive")},
        },
    )


async def test_exchange_to_archive_in_one_process(tmp_path: Path, nats_server: NatsServer) -> None:
    key_file = tmp_path / "kalshi.pem"
    key_file.write_text(pem(private_key()))
    key_file.chmod(0o600)
    sent: list[bytes] = []
    async with fake_exchange() as exchange:
        config = write_config(tmp_path, nats_server.url, exchange.url)
        proc = SsmdProcess(config, roles=("connector", "archiver"))
        proc.env = env_with(KALSHI_API_KEY=API_KEY, KALSHI_PRIVATE_KEY_PATH=str(key_file))
        proc.start()
        session = await exchange.session(0, timeout=20)
        await session.wait_until(lambda: len(session.subscriptions) == 1)
        sid = session.sub_for("trade").sid
        for i in range(1, 2001):
            sent.append(
                await session.send_data("trade", sid, trade_msg(DOT if i % 3 else "KXA-1", i))
            )
            if i % 500 == 0:
                await trio.sleep(0.05)
        await session.send("not json at all")
        sent.append(b"not json at all")
        await session.drop()  # a disconnect mid-stream
        second = await exchange.session(1, timeout=10)
        await second.wait_until(lambda: len(second.subscriptions) == 1)
        sid = second.sub_for("trade").sid
        for i in range(2001, 3001):
            sent.append(await second.send_data("trade", sid, trade_msg("KXA-1", i)))
        await _wait_archived(tmp_path, expected=len(sent))
        code, _ = proc.terminate()
    assert code == 0, proc.log.read_text()[-3000:]

    feed_dir = tmp_path / "archive" / "kalshi"
    records = archived_records(feed_dir)
    market = [r for r in records if not r["_subject"].startswith("prod.kalshi.json.ssmd.")]
    assert [strip_meta(r) for r in market] == [_value(b) for b in sent], (
        "archive differs from what was sent"
    )
    assert all(r["_recv_ns"] > 0 for r in records)
    assert any(
        r["_subject"] == "prod.kalshi.json.trade.KXBTCD-26MAR1213-T69499%2E99" for r in records
    )
    kinds = [r["_subject"].rsplit(".", 1)[1] for r in records if ".json.ssmd." in r["_subject"]]
    assert kinds.count("connect") == 2 and kinds.count("disconnect") >= 1
    manifest = json.loads(next(feed_dir.glob("*/manifest.json")).read_text())
    assert DOT in manifest["tickers"]
    assert manifest["discontinuities"]["connect"] == 2
    assert check_manifests(feed_dir)["gaps"] == []
    verify = subprocess.run(
        [sys.executable, "-m", "ssmd", "data", "verify", "--path", str(tmp_path / "archive")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout
    assert "discontinuities: connect 2" in verify.stdout


def _value(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode()


async def _wait_archived(tmp_path: Path, expected: int, timeout: float = 30) -> None:
    """Wait until the archiver's open file holds `expected` market records."""
    import gzip
    import zlib

    with trio.fail_after(timeout):
        while True:
            count = 0
            for path in (tmp_path / "archive" / "kalshi").glob("*/*.jsonl.gz*"):
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
            await trio.sleep(0.1)


async def test_metrics_of_both_roles_and_readiness(tmp_path: Path, nats_server: NatsServer) -> None:
    key_file = tmp_path / "kalshi.pem"
    key_file.write_text(pem(private_key()))
    key_file.chmod(0o600)
    async with fake_exchange() as exchange:
        config = write_config(tmp_path, nats_server.url, exchange.url)
        proc = SsmdProcess(config, roles=("connector", "archiver"))
        proc.env = env_with(KALSHI_API_KEY=API_KEY, KALSHI_PRIVATE_KEY_PATH=str(key_file))
        proc.start()
        session = await exchange.session(0, timeout=20)
        await session.wait_until(lambda: len(session.subscriptions) == 1)
        await trio.to_thread.run_sync(proc.wait_ready)
        port = proc.health_port
        sid = session.sub_for("trade").sid
        for i in range(1, 101):
            await session.send_data("trade", sid, trade_msg("KXA-1", i))
        with trio.fail_after(10):
            while metric((await get(port, "/metrics"))[1], "ssmd_archived_messages_total") < 101:
                await trio.sleep(0.1)
        _, text = await get(port, "/metrics")
        assert metric(text, "ssmd_received_messages_total") == 100
        assert metric(text, "ssmd_published_messages_total") == 101  # and the connect record
        assert metric(text, "ssmd_connections_up") == 1
        assert metric(text, "ssmd_publish_ack_seconds_count") >= 1
        await session.drop()
        with trio.fail_after(10):
            while metric((await get(port, "/metrics"))[1], "ssmd_reconnects_total") < 1:
                await trio.sleep(0.1)
        code, _ = proc.terminate()
    assert code == 0
