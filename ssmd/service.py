"""`ssmd run`: connect to NATS once and start the requested roles under one supervisor."""

from __future__ import annotations

import logging
from typing import Any

import trio

from ssmd.clock import WallClock
from ssmd.config import Config
from ssmd.health import HealthServer
from ssmd.nats.bridge import open_bridge
from ssmd.nats.types import NatsUnavailable
from ssmd.notify import Notifier
from ssmd.signals import early_signal
from ssmd.supervisor import EXIT_OK, Supervisor, supervise

log = logging.getLogger("ssmd.service")

_CONNECT_RETRY_MAX_S = 10.0


async def run_service(
    config: Config,
    roles: list[str],
    *,
    clock: WallClock | None = None,
    handle_signals: bool = True,
    credentials: Any = None,
) -> int:
    """Run `roles` until stopped; returns the process exit code."""
    clock = clock or WallClock()
    delay = 0.5
    while True:
        try:
            async with open_bridge(
                config.nats.servers,
                name=f"ssmd-{'-'.join(roles)}",
                connect_timeout=config.nats.connect_timeout.seconds,
                request_timeout=config.nats.request_timeout.seconds,
            ) as bridge:
                log.info("connected to NATS at %s", ", ".join(config.nats.servers))

                async def start_roles(sup: Supervisor) -> None:
                    if config.service.health_port:
                        server = HealthServer(sup, sup.metrics, sup.not_ready)
                        sup.start_producer(
                            "health",
                            server.serve,
                            config.service.health_host,
                            config.service.health_port,
                        )
                    # The connector first: it creates the stream the archiver reads.
                    if "connector" in roles:
                        from ssmd.connector.service import start_connector

                        await start_connector(sup, config, bridge, clock, credentials)
                    if "archiver" in roles:
                        from ssmd.archiver.service import start_archiver

                        await start_archiver(sup, config, bridge, clock)
                    if "sync" in roles:
                        from pathlib import Path

                        from ssmd.sync import run_sync_role

                        assert config.sync is not None and config.storage is not None
                        sup.start_producer(
                            "sync", run_sync_role, Path(config.storage.path), config.sync
                        )

                return await supervise(
                    start_roles,
                    shutdown_timeout=config.service.shutdown_timeout.seconds,
                    handle_signals=handle_signals,
                    notifier=Notifier(),
                )
        except NatsUnavailable as exc:
            if handle_signals and early_signal() is not None:
                return EXIT_OK
            log.warning("%s; retrying in %.1fs", exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, _CONNECT_RETRY_MAX_S)
