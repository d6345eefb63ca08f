"""/health, /ready and /metrics of a running ssmd process."""

from __future__ import annotations

import re
from pathlib import Path

import trio
import trio.lowlevel
from trio.testing import wait_all_tasks_blocked

from ssmd.health import HealthServer
from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from ssmd.supervisor import Supervisor, supervise
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


async def test_ready_is_503_until_every_role_has_started() -> None:
    during_startup: list[int] = []
    supervisors: list[Supervisor] = []

    async def start_roles(sup: Supervisor) -> None:
        supervisors.append(sup)
        server = HealthServer(sup, sup.metrics, sup.not_ready)
        sup.add_readiness_check("first role", lambda: None)
        sup.start_producer("first role", trio.sleep_forever)
        await trio.lowlevel.checkpoint()  # the second role is still starting (recovery, NATS, ...)
        during_startup.append(server.respond("/ready")[0])
        sup.add_readiness_check("second role", lambda: None)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: supervise(start_roles, shutdown_timeout=5, handle_signals=False))
        await wait_all_tasks_blocked()
        supervisors[0].request_stop("test over")
    assert during_startup == [503]
