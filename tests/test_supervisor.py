"""The supervisor's stop: stage by stage, drains before cancels, services to the end."""

from __future__ import annotations

import logging
import signal

import pytest
import trio
import trio.testing

from ssmd.deadline import shielded
from ssmd.nats.types import NatsUnavailable
from ssmd.notify import Notifier
from ssmd.supervisor import EXIT_FAILURE, EXIT_OK, Supervisor, supervise


async def test_a_later_stage_stops_only_after_every_task_of_the_earlier_one_ended(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[tuple[float, str]] = []
    t0 = trio.current_time()

    def note(what: str) -> None:
        events.append((trio.current_time() - t0, what))

    send, receive = trio.open_memory_channel[int](0)

    async def source() -> None:
        async with send:
            try:
                await trio.sleep_forever()
            finally:
                note("stage 0 producer stopped")

    async def slow_sink() -> None:
        async with receive:
            async for _ in receive:
                pass
        await trio.sleep(2.0)  # draining: waiting for acks
        note("stage 0 sink done")

    async def follower() -> None:
        try:
            await trio.sleep_forever()
        finally:
            note("stage 1 producer stopped")

    async def start(sup: Supervisor) -> None:
        with sup.stop_stage(1):
            sup.start_producer("follower", follower)
        sup.start_producer("source", source)
        sup.start_sink("sink", slow_sink)
        await trio.sleep(1.0)
        sup.request_stop("test")

    assert await supervise(start, shutdown_timeout=10.0, handle_signals=False) == EXIT_OK
    assert events == [
        (1.0, "stage 0 producer stopped"),
        (3.0, "stage 0 sink done"),
        (3.0, "stage 1 producer stopped"),
    ]


async def test_a_draining_producer_is_asked_to_finish_then_cancelled_at_the_drain_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    asked = trio.Event()
    stopped: list[float] = []
    finished: list[float] = []
    t0 = trio.current_time()
    send, receive = trio.open_memory_channel[int](1)

    async def fetcher() -> None:
        async with send:
            try:
                await asked.wait()
                await trio.sleep_forever()  # never catches up
            finally:
                stopped.append(trio.current_time() - t0)

    async def writer() -> None:
        async with receive:
            async for _ in receive:
                pass
        await trio.sleep(0.5)  # finishing the file
        finished.append(trio.current_time() - t0)

    async def start(sup: Supervisor) -> None:
        sup.start_producer("fetcher", fetcher, drain=asked.set)
        sup.start_sink("writer", writer)
        sup.request_stop("test")

    # 5 s deadline, 1 s of it kept for the sinks: the drain may last 4 s.
    assert await supervise(start, shutdown_timeout=5.0, handle_signals=False) == EXIT_OK
    assert asked.is_set()
    assert stopped == [4.0]
    assert finished == [4.5]


async def test_a_service_task_is_up_before_the_roles_and_lives_through_the_drain(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[str] = []
    sink_done = trio.Event()

    async def service(*, task_status: trio.TaskStatus[str]) -> None:
        task_status.started("bound")
        try:
            await trio.sleep_forever()
        finally:
            seen.append("service ended" + (" after the sink" if sink_done.is_set() else ""))

    async def sink() -> None:
        await trio.sleep(3.0)
        sink_done.set()

    async def start(sup: Supervisor) -> None:
        seen.append(await sup.start_service("svc", service))
        sup.start_sink("sink", sink)
        sup.request_stop("test")

    assert await supervise(start, shutdown_timeout=10.0, handle_signals=False) == EXIT_OK
    assert seen == ["bound", "service ended after the sink"]


class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__({})
        self.sent: list[tuple[float, str]] = []

    def send(self, *states: str) -> None:
        self.sent.append((trio.current_time(), "\n".join(states)))


async def test_the_roles_are_up_when_their_tasks_report_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Readiness comes through `nursery.start`: a task that has not called
    `task_status.started()` keeps the roles from being ready, and READY=1 waits for it."""
    notifier = RecordingNotifier()
    t0 = trio.current_time()
    seen: list[list[str]] = []

    async def connection(*, task_status: trio.TaskStatus[None]) -> None:
        await trio.sleep(2.0)  # connecting and subscribing
        task_status.started()
        await trio.sleep_forever()

    async def observer(sup: Supervisor) -> None:
        await sup.wait_started()
        seen.append(sup.not_ready())
        await trio.sleep(1.0)
        sup.request_stop("test")

    async def start(sup: Supervisor) -> None:
        sup.start_producer("conn", connection, reports_ready=True)
        sup.start_producer("observer", observer, sup)
        seen.append(sup.not_ready())

    code = await supervise(start, shutdown_timeout=5.0, handle_signals=False, notifier=notifier)
    assert code == EXIT_OK
    assert seen == [["start-up: roles still being started", "conn: starting"], []]
    ready = [t - t0 for t, state in notifier.sent if state.startswith("READY=1")]
    assert ready == [2.0]


async def test_a_task_that_fails_before_it_is_up_stops_the_roles(
    autojump_clock: trio.testing.MockClock,
) -> None:
    notifier = RecordingNotifier()

    async def broken(*, task_status: trio.TaskStatus[None]) -> None:
        await trio.sleep(1.0)
        raise OSError("cannot bind")

    async def start(sup: Supervisor) -> None:
        sup.start_producer("broken", broken, reports_ready=True)

    code = await supervise(start, shutdown_timeout=5.0, handle_signals=False, notifier=notifier)
    assert code == EXIT_FAILURE
    assert not any(state.startswith("READY=1") for _, state in notifier.sent)


async def test_nats_failing_while_the_roles_start_is_raised_bare_after_the_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The service retries NatsUnavailable; wrapped in an ExceptionGroup it would crash
    the process instead. What had started is stopped first."""
    stopped: list[str] = []

    async def started_first() -> None:
        try:
            await trio.sleep_forever()
        finally:
            stopped.append("started_first")

    async def start(sup: Supervisor) -> None:
        sup.start_producer("started_first", started_first)
        await trio.sleep(1.0)
        raise NatsUnavailable("JetStream not ready (503)")

    with pytest.raises(NatsUnavailable, match="503"):
        await supervise(start, shutdown_timeout=5.0, handle_signals=False)
    assert stopped == ["started_first"]


async def test_a_second_signal_stops_now_shields_included(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A handoff nobody takes would hold the stop until the shutdown deadline; a
    second SIGTERM ends it at once, and the log says why."""

    async def stuck_handoff() -> None:
        try:
            await trio.sleep_forever()
        finally:
            with shielded():
                await trio.sleep_forever()

    async def start(sup: Supervisor) -> None:
        sup.start_producer("stuck", stuck_handoff)
        await trio.sleep(1.0)
        signal.raise_signal(signal.SIGTERM)
        await trio.sleep(1.0)
        signal.raise_signal(signal.SIGTERM)

    t0 = trio.current_time()
    with caplog.at_level(logging.INFO, logger="ssmd.supervisor"):
        code = await supervise(start, shutdown_timeout=30.0, handle_signals=True)
    assert code == EXIT_FAILURE
    assert trio.current_time() - t0 == pytest.approx(2.0)
    assert "received SIGTERM again" in caplog.text
    assert "did not finish within" not in caplog.text


async def test_each_run_of_the_roles_gets_its_own_shutdown_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """run_service runs the roles again after NATS failed during start-up: the first
    stop's deadline, long past, must not cut the second run's shields short."""
    waited: list[float] = []

    async def handoff() -> None:
        try:
            await trio.sleep_forever()
        finally:
            began = trio.current_time()
            with shielded(2.0):
                await trio.sleep(1.0)
            waited.append(trio.current_time() - began)

    async def start(sup: Supervisor) -> None:
        sup.start_producer("handoff", handoff)
        await trio.sleep(1.0)
        sup.request_stop("test")

    assert await supervise(start, shutdown_timeout=5.0, handle_signals=False) == EXIT_OK
    await trio.sleep(10.0)  # past the first stop's deadline
    assert await supervise(start, shutdown_timeout=5.0, handle_signals=False) == EXIT_OK
    assert waited == [1.0, 1.0]
