"""One supervisor nursery for every task of every role.

Tasks are either *producers* (sources: the WebSocket readers, the JetStream fetcher,
the rotation timer) or *sinks* (the publisher, the writer, the manifest writer).
Shutdown cancels the producers only; each producer closes its send channel on the way
out, so the sinks see end-of-channel, drain what is left, flush and exit by themselves.

Roles stop in *stages*, lowest first: every task belongs to one, and a stage's producers
are stopped only once every task of the stages before it has ended. So in one process
the connector (stage 0) publishes its `disconnect` record and drains its acks before the
archiver (stage 1) is asked to finish; a producer with a `drain` hook (the fetcher) is
not cancelled but asked to end by itself once it has taken everything, by a deadline
that leaves the last sinks `finish_reserve` to finish their files. One hard deadline,
`shutdown_timeout` after the stop was requested, bounds it all, shields included
(`ssmd.deadline`).

*Service tasks* (signals, the health and metrics server, the watchdog) start through
`nursery.start`, so they are up before the roles start, and live through the drain:
they end when the last role task has.

When any task fails, the failure is recorded and the same orderly stop begins, so a
crash in one place still finishes the gzip file and the manifest.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import attrs
import trio
from prometheus_client import CollectorRegistry

from ssmd.deadline import arm_shutdown_deadline, reset_shutdown_deadline
from ssmd.nats.types import NatsUnavailable
from ssmd.notify import Notifier
from ssmd.signals import early_signal

log = logging.getLogger("ssmd.supervisor")

HealthCheck = Callable[[], str | None]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

# The share of shutdown_timeout (at most this many seconds) kept for the last stage's
# sinks after its producers stop: finishing the gzip file, the manifest, the acks.
FINISH_RESERVE_S = 1.0
FINISH_RESERVE_SHARE = 0.2


class StartupRefused(Exception):
    """A role refuses to start (stream missing, filter cannot match, bad credentials).

    Reported as one line, exit code 2, like a config error.
    """


class StartupUnavailable(Exception):
    """Something a role needs to start is unavailable for now (a REST API down): the
    role keeps retrying in its own task while the others run."""


def _failing(checks: dict[str, HealthCheck]) -> list[str]:
    return [f"{name}: {why}" for name, check in checks.items() if (why := check()) is not None]


@attrs.define
class _Task:
    name: str
    stage: int
    scope: trio.CancelScope
    # Producers only: asked to stop at their stage's turn. `drain` asks a producer to
    # end by itself (it is cancelled if it has not by the drain deadline).
    producer: bool
    drain: Callable[[], None] | None = None
    # Started with `nursery.start`: up once it calls `task_status.started()`.
    reports_ready: bool = False


class Supervisor:
    def __init__(self, nursery: trio.Nursery, shutdown_timeout: float) -> None:
        self._nursery = nursery
        self.shutdown_timeout = shutdown_timeout
        self.finish_reserve = min(FINISH_RESERVE_S, FINISH_RESERVE_SHARE * shutdown_timeout)
        self.stopping = trio.Event()
        self.stop_reason = ""
        # Set when a second signal asked to stop now, without finishing the drain.
        self.forced_by = ""
        self.failures: list[tuple[str, BaseException]] = []
        self._tasks: list[_Task] = []
        self._stage = 0
        # Stages whose producers have been told to stop (all below and including it).
        self._stopped_through = -1
        self._drain_deadline = float("inf")
        # The staged stop has run out of tasks (or time): a task started later (start-up
        # still under way) is stopped at once.
        self._stopper_done = False
        self._task_ended = trio.Event()
        # Tasks that report readiness and have not yet: the roles are up when it is empty.
        self._starting: set[str] = set()
        self._all_started = trio.Event()
        # True until `start_roles` has returned: until then roles may still be added.
        self.starting_up = True
        # Scopes of the service tasks: they end when the roles' tasks do.
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
        starting = [f"{name}: starting" for name in sorted(self._starting)]
        if self.starting_up:
            starting.insert(0, "start-up: roles still being started")
        return starting + _failing(self._readiness_checks)

    def unhealthy(self) -> list[str]:
        """Why the pipeline is not healthy: empty when every check passes."""
        return _failing(self._health_checks)

    @contextmanager
    def stop_stage(self, stage: int) -> Iterator[None]:
        """Tasks started in this block stop in `stage` (lower stages stop first)."""
        previous, self._stage = self._stage, stage
        try:
            yield
        finally:
            self._stage = previous

    def start_producer(
        self,
        name: str,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        drain: Callable[[], None] | None = None,
        reports_ready: bool = False,
    ) -> None:
        """Start a source task; a stop cancels it, or calls `drain` when given.

        With `reports_ready`, `fn` takes `task_status` and is started with
        `nursery.start`: the roles are not up (`not_ready`, systemd's READY=1) until it
        has called `task_status.started()`. The caller does not wait for it."""
        task = _Task(name, self._stage, trio.CancelScope(), True, drain, reports_ready)
        self._start(task, fn, args)

    def start_sink(self, name: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a sink task; it must end by itself when its input channel closes."""
        self._start(_Task(name, self._stage, trio.CancelScope(), False), fn, args)

    async def start_service(self, name: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Start a service task with `nursery.start` and return what it reports started.

        `fn` takes `task_status`; it runs until the roles' tasks have all ended."""

        async def run(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
            with self._service_scope():
                await fn(*args, task_status=task_status)

        return await self._nursery.start(run, name=name)

    def _start(self, task: _Task, fn: Callable[..., Awaitable[Any]], args: Any) -> None:
        self._tasks.append(task)
        if task.producer and (task.stage <= self._stopped_through or self._stopper_done):
            self._stop_producer(task)
        if task.reports_ready:
            self._starting.add(task.name)
            self._nursery.start_soon(self._start_reporting, task, fn, args)
        else:
            self._nursery.start_soon(self._run, task, fn, args, name=task.name)

    async def _start_reporting(
        self, task: _Task, fn: Callable[..., Awaitable[Any]], args: Any
    ) -> None:
        async def run(*, task_status: trio.TaskStatus[None]) -> None:
            await self._run(task, partial(fn, task_status=task_status), args)

        try:
            await self._nursery.start(run, name=task.name)
        except RuntimeError:
            return  # it ended (stopped, failed) before it was up; `_run` has said why
        self._starting.discard(task.name)
        if not self._starting:
            self._all_started.set()

    async def wait_started(self) -> None:
        """Until every task that reports readiness has reported it."""
        if self._starting:
            await self._all_started.wait()

    def _running(self, through_stage: int) -> list[_Task]:
        return [t for t in self._tasks if t.stage <= through_stage]

    async def _run(self, task: _Task, fn: Callable[..., Awaitable[Any]], args: Any) -> None:
        try:
            with task.scope:
                await fn(*args)
            if task.producer and not self.stopping.is_set():
                self.request_stop(f"{task.name} ended")
        except StartupRefused as exc:
            # A feed's own start-up check, done beside the others (credentials, markets).
            self.failures.append((task.name, exc))
            self.request_stop(f"{task.name} refused the start: {exc}")
        except Exception as exc:
            log.error("%s failed: %s: %s", task.name, type(exc).__name__, exc, exc_info=exc)
            self.failures.append((task.name, exc))
            self.request_stop(f"{task.name} failed")
        finally:
            self._tasks.remove(task)
            self._task_ended.set()
            if not self._tasks:
                self.request_stop("all tasks ended")
                self._end_services()

    def request_stop(self, reason: str) -> None:
        """Begin an orderly stop, stage by stage; the hard deadline is armed."""
        if self.stopping.is_set():
            return
        self.stop_reason = reason
        log.info("stopping: %s", reason)
        self.stopping.set()
        if self.notifier is not None:
            self.notifier.stopping(reason)
        deadline = trio.current_time() + self.shutdown_timeout
        self._nursery.cancel_scope.deadline = deadline
        arm_shutdown_deadline(deadline)
        self._drain_deadline = deadline - self.finish_reserve
        self._nursery.start_soon(self._stop_in_stages, name="supervisor.stop")

    def stop_now(self, reason: str) -> None:
        """Stop at once, without finishing the drain: every task and every shield
        (handoffs, flushes) is cancelled now, not at the shutdown deadline."""
        log.warning("%s: stopping now without finishing the drain", reason)
        self.forced_by = reason
        self.request_stop(reason)
        arm_shutdown_deadline(trio.current_time())
        self._nursery.cancel_scope.cancel()

    def _stop_producer(self, task: _Task) -> None:
        if task.drain is None:
            task.scope.cancel()
        else:
            task.scope.deadline = min(task.scope.deadline, self._drain_deadline)
            task.drain()

    async def _stop_in_stages(self) -> None:
        with trio.move_on_at(self._drain_deadline):
            while self._tasks:
                stage = min(t.stage for t in self._tasks)
                self._stopped_through = max(self._stopped_through, stage)
                for task in self._running(stage):
                    if task.producer:
                        self._stop_producer(task)
                while self._running(self._stopped_through):
                    self._task_ended = trio.Event()
                    await self._task_ended.wait()
        if self._tasks:
            log.warning(
                "still running at the drain deadline: %s; stopping the rest",
                ", ".join(t.name for t in self._tasks),
            )
            self._stopped_through = max(t.stage for t in self._tasks)
            for task in self._tasks:
                if task.producer:
                    task.scope.cancel()
        self._stopper_done = True

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

    async def _notify_ready(
        self, notifier: Notifier, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """READY=1 once every role's tasks are up, then the watchdog."""
        task_status.started()
        await self.wait_started()
        if self.stopping.is_set():
            return
        notifier.ready("running")
        if notifier.watchdog_interval is not None:
            await self._watchdog(notifier, notifier.watchdog_interval)

    async def _watchdog(self, notifier: Notifier, interval: float) -> None:
        """Ping systemd's watchdog only while every health check passes, so a stuck
        pipeline is restarted; a stop is bounded by systemd's stop timeout instead."""
        while not self.stopping.is_set():
            problems = self.unhealthy()
            if problems:
                log.warning("not healthy, withholding the watchdog ping: %s", "; ".join(problems))
            else:
                notifier.watchdog()
            await trio.sleep(interval)

    async def _watch_signals(self, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.stopping.is_set():
                    self.stop_now(f"received {name} again")
                else:
                    self.request_stop(f"received {name}")


async def supervise(
    start_roles: Callable[[Supervisor], Awaitable[None]],
    *,
    shutdown_timeout: float,
    handle_signals: bool = True,
    notifier: Notifier | None = None,
) -> int:
    """Run the roles under one nursery until they stop; return the process exit code.

    A refusal or NATS failing while the roles start stops what has started, then is
    raised bare (not wrapped in an ExceptionGroup): the caller reports the one or
    retries the other."""
    refused: StartupRefused | NatsUnavailable | None = None
    reset_shutdown_deadline()
    async with trio.open_nursery() as nursery:
        sup = Supervisor(nursery, shutdown_timeout)
        sup.notifier = notifier
        if handle_signals:
            # Trio's handlers are installed before the early ones are read, so a signal
            # lands in one or the other, never in between.
            await sup.start_service("supervisor.signals", sup._watch_signals)
            if (name := early_signal()) is not None:
                sup.request_stop(f"received {name} during start-up")
        try:
            await start_roles(sup)
            sup.starting_up = False
        except StartupRefused as exc:
            refused = exc
            sup.request_stop("start-up refused")
        except NatsUnavailable as exc:
            refused = exc
            sup.request_stop(f"NATS unavailable during start-up: {exc}")
        except BaseException:
            sup._end_services()
            raise
        if not sup._tasks:
            sup.request_stop("no tasks to run")
            sup._end_services()
        elif notifier is not None:
            await sup.start_service("supervisor.notify", sup._notify_ready, notifier)
        await sup.stopping.wait()
    if refused is None:
        refused = next((e for _, e in sup.failures if isinstance(e, StartupRefused)), None)
    if refused is not None:
        raise refused
    if sup.forced_by:
        log.error("stopped without finishing the drain (%s)", sup.forced_by)
        return EXIT_FAILURE
    if nursery.cancel_scope.cancelled_caught:
        log.error("shutdown did not finish within %.1fs; forced stop", shutdown_timeout)
        return EXIT_FAILURE
    if sup.failures:
        return EXIT_FAILURE
    log.info("stopped cleanly")
    return EXIT_OK
