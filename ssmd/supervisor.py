"""One supervisor nursery for every task of every role.

Tasks are either *producers* (sources: the WebSocket readers, the JetStream fetcher,
the rotation timer) or *sinks* (the publisher, the writer, the manifest writer).
Shutdown cancels the producers only; each producer closes its send channel on the way
out, so the sinks see end-of-channel, drain what is left, flush and exit by themselves.
A hard deadline bounds the drain.

When any task fails, the failure is recorded and the same orderly stop begins, so a
crash in one place still finishes the gzip file and the manifest.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from prometheus_client import CollectorRegistry

from ssmd.notify import Notifier
from ssmd.signals import early_signal

log = logging.getLogger("ssmd.supervisor")

HealthCheck = Callable[[], str | None]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


class StartupRefused(Exception):
    """A role refuses to start (stream missing, filter cannot match, bad credentials).

    Reported as one line, exit code 2, like a config error.
    """


def _failing(checks: dict[str, HealthCheck]) -> list[str]:
    return [f"{name}: {why}" for name, check in checks.items() if (why := check()) is not None]


class Supervisor:
    def __init__(self, nursery: trio.Nursery, shutdown_timeout: float) -> None:
        self._nursery = nursery
        self.shutdown_timeout = shutdown_timeout
        self.stopping = trio.Event()
        self.stop_reason = ""
        self.failures: list[tuple[str, BaseException]] = []
        self._producer_scopes: list[trio.CancelScope] = []
        self._active = 0
        # Scopes of the supervisor's own tasks (signals, watchdog): they end when the roles do.
        self._service_scopes: list[trio.CancelScope] = []
        self._idle = False
        self._health_checks: dict[str, HealthCheck] = {}
        self._readiness_checks: dict[str, HealthCheck] = {}
        self.notifier: Notifier | None = None
        self.metrics = CollectorRegistry(auto_describe=True)

    def add_health_check(self, name: str, check: HealthCheck) -> None:
        """Register a check that returns None when healthy, else why not."""
        self._health_checks[name] = check

    def add_readiness_check(self, name: str, check: HealthCheck) -> None:
        """Register a check that returns None once the role is up, else what it waits for."""
        self._readiness_checks[name] = check

    def not_ready(self) -> list[str]:
        """What the roles still wait for: empty once every role is up."""
        return _failing(self._readiness_checks)

    def unhealthy(self) -> list[str]:
        """Why the pipeline is not healthy: empty when every check passes."""
        return _failing(self._health_checks)

    def start_producer(self, name: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a source task; `request_stop` cancels it."""
        self._start(name, True, fn, args)

    def start_sink(self, name: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a sink task; it must end by itself when its input channel closes."""
        self._start(name, False, fn, args)

    def _start(
        self, name: str, producer: bool, fn: Callable[..., Awaitable[Any]], args: Any
    ) -> None:
        scope = trio.CancelScope()
        if producer:
            self._producer_scopes.append(scope)
            if self.stopping.is_set():
                scope.cancel()
        self._active += 1
        self._nursery.start_soon(self._run, name, producer, scope, fn, args, name=name)

    async def _run(
        self,
        name: str,
        producer: bool,
        scope: trio.CancelScope,
        fn: Callable[..., Awaitable[Any]],
        args: Any,
    ) -> None:
        try:
            with scope:
                await fn(*args)
            if producer and not scope.cancelled_caught and not self.stopping.is_set():
                self.request_stop(f"{name} ended")
        except Exception as exc:
            log.error("%s failed: %s: %s", name, type(exc).__name__, exc, exc_info=exc)
            self.failures.append((name, exc))
            self.request_stop(f"{name} failed")
        finally:
            self._active -= 1
            if self._active == 0:
                self.request_stop("all tasks ended")
                self._end_services()

    def request_stop(self, reason: str) -> None:
        """Begin an orderly stop: cancel producers; sinks drain; the deadline is armed."""
        if self.stopping.is_set():
            return
        self.stop_reason = reason
        log.info("stopping: %s", reason)
        self.stopping.set()
        if self.notifier is not None:
            self.notifier.stopping(reason)
        for scope in self._producer_scopes:
            scope.cancel()
        self._nursery.cancel_scope.deadline = trio.current_time() + self.shutdown_timeout

    def _service_scope(self) -> trio.CancelScope:
        scope = trio.CancelScope()
        self._service_scopes.append(scope)
        if self._idle:
            scope.cancel()
        return scope

    def _end_services(self) -> None:
        self._idle = True
        for scope in self._service_scopes:
            scope.cancel()

    async def _watchdog(self, notifier: Notifier, interval: float) -> None:
        """Ping systemd's watchdog only while every health check passes, so a stuck
        pipeline is restarted."""
        with self._service_scope():
            while True:
                problems = self.unhealthy()
                if problems:
                    log.warning(
                        "not healthy, withholding the watchdog ping: %s", "; ".join(problems)
                    )
                else:
                    notifier.watchdog()
                await trio.sleep(interval)

    async def _watch_signals(self, *, task_status: trio.TaskStatus[None]) -> None:
        with (
            self._service_scope(),
            trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        ):
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.stopping.is_set():
                    log.warning("%s again: stopping now without finishing the drain", name)
                    self._nursery.cancel_scope.cancel()
                else:
                    self.request_stop(f"received {name}")


async def supervise(
    start_roles: Callable[[Supervisor], Awaitable[None]],
    *,
    shutdown_timeout: float,
    handle_signals: bool = True,
    notifier: Notifier | None = None,
) -> int:
    """Run the roles under one nursery until they stop; return the process exit code."""
    refused: StartupRefused | None = None
    async with trio.open_nursery() as nursery:
        sup = Supervisor(nursery, shutdown_timeout)
        sup.notifier = notifier
        if handle_signals:
            # Trio's handlers are installed before the early ones are read, so a signal
            # lands in one or the other, never in between.
            await nursery.start(sup._watch_signals)
            if (name := early_signal()) is not None:
                sup.request_stop(f"received {name} during start-up")
        try:
            await start_roles(sup)
        except StartupRefused as exc:
            refused = exc
            sup.request_stop("start-up refused")
        except BaseException:
            sup._end_services()
            raise
        if sup._active == 0:
            sup.request_stop("no tasks to run")
            sup._end_services()
        elif notifier is not None and not sup.stopping.is_set():
            notifier.ready("running")
            if notifier.watchdog_interval is not None:
                nursery.start_soon(sup._watchdog, notifier, notifier.watchdog_interval)
        await sup.stopping.wait()
    if refused is not None:
        raise refused
    if nursery.cancel_scope.cancelled_caught:
        log.error("shutdown did not finish within %.1fs; forced stop", shutdown_timeout)
        return EXIT_FAILURE
    if sup.failures:
        return EXIT_FAILURE
    log.info("stopped cleanly")
    return EXIT_OK
