"""/health, /ready and /metrics of a running ssmd process."""

from __future__ import annotations

import re
from pathlib import Path

import trio

from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from tests.procs import (
    SsmdProcess,
    http_get,
    metric,
    publish_range,
    stream_spec,
    wait_for_ack_floor,
    write_config,
)


async def get(port: int, path: str) -> tuple[int, str]:
    return await trio.to_thread.run_sync(http_get, port, path)


async def test_health_ready_and_metrics_that_move(tmp_path: Path, nats_server: NatsServer) -> None:
    config = write_config(tmp_path / "ssmd.toml", nats_server.url, tmp_path / "archive")
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.kalshi.json.>"]))
        await publish_range(bridge, 1, 300)
        proc = SsmdProcess(config).start()
        await trio.to_thread.run_sync(proc.wait_ready)
        await wait_for_ack_floor(bridge, 300)
        port = proc.health_port
        assert await get(port, "/health") == (200, "ok\n")
        status, first = await get(port, "/metrics")
        assert status == 200
        archived = metric(first, "ssmd_archived_messages_total")
        assert archived == 300
        assert re.search(r'ssmd_archived_messages_total\{feed="kalshi",type="trade"\} \d+', first)
        assert metric(first, "ssmd_archive_fsync_seconds_count") >= 1
        await publish_range(bridge, 301, 500)
        await wait_for_ack_floor(bridge, 500)
        _, second = await get(port, "/metrics")
        assert metric(second, "ssmd_archived_messages_total") == 500
        assert metric(second, "ssmd_archive_bytes_written_total") > metric(
            first, "ssmd_archive_bytes_written_total"
        )
        assert (await get(port, "/nope"))[0] == 404
        code, _ = proc.terminate()
    assert code == 0
