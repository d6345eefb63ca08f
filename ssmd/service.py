"""`ssmd run`: connect to NATS once and start the requested roles under one supervisor."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

import trio

from ssmd.backoff import Backoff
from ssmd.clock import WallClock
from ssmd.config import Config
from ssmd.health import HealthServer
from ssmd.metrics import FunctionCollector
from ssmd.nats.bridge import open_bridge
from ssmd.nats.metrics import nats_metrics
from ssmd.nats.types import NatsUnavailable
from ssmd.notify import Notifier
from ssmd.roles import RoleContext, start_roles
from ssmd.signals import early_signal
from ssmd.supervisor import EXIT_OK, Supervisor, supervise

log = logging.getLogger("ssmd.service")

# Waiting for NATS at start-up: it may come up after ssmd (systemd starts both).
NATS_CONNECT_BACKOFF = Backoff(initial=0.5, maximum=10.0, jitter=0.2)


async def start_health(sup: Supervisor, config: Config) -> None:
    """Serve /health, /ready and /metrics (a service task: it lives through the drain)."""
    if config.service.health_port:
        server = HealthServer(sup, sup.metrics, sup.not_ready)
        await sup.start_service(
            "health", server.serve, config.service.health_host, config.service.health_port
        )


async def _start(
    config: Config, roles: Sequence[str], context: RoleContext, sup: Supervisor
) -> None:
    sup.metrics.register(FunctionCollector(lambda: nats_metrics(context.bridge)))
    await start_health(sup, config)
    await start_roles(sup, roles, context)


async def run_service(
    config: Config,
    roles: Sequence[str],
    *,
    clock: WallClock | None = None,
    handle_signals: bool = True,
    credentials: Any = None,
) -> int:
    """Run `roles` until stopped; returns the process exit code."""
    clock = clock or WallClock()
    retry = NATS_CONNECT_BACKOFF.retry()
    while True:
        try:
            async with open_bridge(
                config.nats.servers,
                name=f"ssmd-{'-'.join(roles)}",
                connect_timeout=config.nats.connect_timeout.seconds,
                request_timeout=config.nats.request_timeout.seconds,
            ) as bridge:
                log.info("connected to NATS at %s", ", ".join(config.nats.servers))
                return await supervise(
                    partial(_start, config, roles, RoleContext(config, bridge, clock, credentials)),
                    shutdown_timeout=config.service.shutdown_timeout.seconds,
                    handle_signals=handle_signals,
                    notifier=Notifier(),
                )
        except NatsUnavailable as exc:
            if handle_signals and early_signal() is not None:
                return EXIT_OK
            delay = retry.next_delay()
            log.warning("%s; retrying in %.1fs", exc, delay)
            await trio.sleep(delay)
