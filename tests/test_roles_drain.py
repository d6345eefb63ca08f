"""Which stop the archiver role gets: drained beside a connector, cancelled alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import trio

import ssmd.archiver.service
import ssmd.connector.service
from ssmd.clock import WallClock
from ssmd.config import load_config
from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from ssmd.roles import RoleContext, start_roles
from ssmd.supervisor import EXIT_OK, Supervisor, supervise
from tests.procs import stream_spec, write_config

pytestmark = pytest.mark.trio


@pytest.mark.parametrize(
    ("roles", "drains"),
    [
        # Beside a connector the archiver takes what it published before stopping.
        (("connector", "archiver"), True),
        # Alone, waiting for a drain would chase a remote connector that keeps publishing:
        # what is left waits in the stream for the next start.
        (("archiver",), False),
    ],
)
async def test_the_archiver_drains_only_beside_a_connector(
    monkeypatch: pytest.MonkeyPatch, roles: tuple[str, ...], drains: bool
) -> None:
    seen: dict[str, Any] = {}

    async def fake_archiver(*args: Any, drain_on_stop: bool = False, **kwargs: Any) -> None:
        seen["drain_on_stop"] = drain_on_stop

    async def fake_connector(*args: Any, **kwargs: Any) -> None:
        seen["connector"] = True

    monkeypatch.setattr(ssmd.archiver.service, "start_archivers", fake_archiver)
    monkeypatch.setattr(ssmd.connector.service, "start_connector", fake_connector)
    nothing = cast(Any, None)
    async with trio.open_nursery() as nursery:
        sup = Supervisor(nursery, shutdown_timeout=5.0)
        await start_roles(sup, roles, RoleContext(nothing, nothing, nothing))
    assert seen["drain_on_stop"] is drains
    assert seen.get("connector", False) is ("connector" in roles)


@pytest.mark.parametrize("drain_on_stop", [True, False])
async def test_start_archiver_gives_the_fetcher_a_drain_only_when_asked(
    tmp_path: Path, nats_server: NatsServer, drain_on_stop: bool
) -> None:
    config = load_config(write_config(tmp_path / "ssmd.toml", nats_server.url, tmp_path / "a"))
    drains: dict[str, object] = {}
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.kalshi.json.>"]))

        async def start(sup: Supervisor) -> None:
            await ssmd.archiver.service.start_archiver(
                sup, config, bridge, WallClock(), drain_on_stop=drain_on_stop
            )
            drains.update({task.name: task.drain for task in sup._tasks})
            sup.request_stop("test")

        assert await supervise(start, shutdown_timeout=10.0, handle_signals=False) == EXIT_OK
    assert (drains["archiver.fetcher"] is not None) is drain_on_stop
