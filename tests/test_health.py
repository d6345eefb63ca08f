"""/health, /ready and /metrics of a running ssmd process."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

import trio

from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer, free_port
from tests.procs import SsmdProcess, publish_range, stream_spec, wait_for_ack_floor, write_config


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def get(url: str) -> tuple[int, str]:
    return await trio.to_thread.run_sync(fetch, url)


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_health_ready_and_metrics_that_move(tmp_path: Path, nats_server: NatsServer) -> None:
    port = free_port()
    config = write_config(tmp_path / "ssmd.toml", nats_server.url, tmp_path / "archive")
    config.write_text(config.read_text() + f"[service]\nhealth_port = {port}\n")
    base = f"http://127.0.0.1:{port}"
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.kalshi.json.>"]))
        await publish_range(bridge, 1, 300)
        proc = SsmdProcess(config).start()
        await wait_for_ack_floor(bridge, 300)
        with trio.fail_after(10):
            while (await get(f"{base}/ready"))[0] != 200:
                await trio.sleep(0.1)
        assert await get(f"{base}/health") == (200, "ok\n")
        status, first = await get(f"{base}/metrics")
        assert status == 200
        archived = metric(first, "ssmd_archived_messages_total")
        assert archived == 300
        assert re.search(r'ssmd_archived_messages_total\{feed="kalshi",type="trade"\} \d+', first)
        assert metric(first, "ssmd_archive_fsync_seconds_count") >= 1
        await publish_range(bridge, 301, 500)
        await wait_for_ack_floor(bridge, 500)
        _, second = await get(f"{base}/metrics")
        assert metric(second, "ssmd_archived_messages_total") == 500
        assert metric(second, "ssmd_archive_bytes_written_total") > metric(
            first, "ssmd_archive_bytes_written_total"
        )
        assert (await get(f"{base}/nope"))[0] == 404
        code, _ = proc.terminate()
    assert code == 0
