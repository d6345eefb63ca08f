"""`shutdown_timeout` is true: a shield never outlasts the shutdown deadline."""

from __future__ import annotations

import math

import trio
import trio.testing

from ssmd.deadline import arm_shutdown_deadline, shielded, shutdown_deadline, time_left
from ssmd.supervisor import EXIT_FAILURE, Supervisor, supervise


async def test_a_shield_holds_for_its_limit_while_no_stop_is_under_way(
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert shutdown_deadline() == math.inf
    t0 = trio.current_time()
    with trio.CancelScope() as outer:
        outer.cancel()
        with shielded(3.0) as scope:
            await trio.sleep(10)
    assert scope.cancelled_caught
    assert trio.current_time() - t0 == 3.0


async def test_a_nested_shield_ends_with_the_one_it_is_nested_in(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Closing the bridge (5 s) around a call that waits for its asyncio task (10 s)
    takes 5 s, not 15, even with no stop under way."""
    t0 = trio.current_time()
    with trio.CancelScope() as outer:
        outer.cancel()
        with shielded(5.0) as bridge_close:
            with shielded(10.0) as call:
                await trio.sleep(60)
            await trio.sleep(60)
    assert call.cancelled_caught and bridge_close.cancelled_caught
    assert trio.current_time() - t0 == 5.0
    # Outside it, a shield has its own limit again.
    with shielded(2.0):
        await trio.sleep(60)
    assert trio.current_time() - t0 == 7.0


async def test_a_shield_entered_after_the_stop_ends_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t0 = trio.current_time()
    arm_shutdown_deadline(t0 + 1.0)
    assert time_left(5.0) == 1.0 and time_left(0.5) == 0.5
    with shielded(10.0) as scope:
        await trio.sleep(10)
    assert scope.cancelled_caught
    assert trio.current_time() - t0 == 1.0
    # A later, laxer deadline does not extend the first.
    arm_shutdown_deadline(t0 + 100.0)
    assert shutdown_deadline() == t0 + 1.0
    assert time_left() == 0.0


async def test_a_shield_entered_before_the_stop_is_shortened_when_it_comes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    t0 = trio.current_time()
    ended: list[float] = []

    async def shielded_work() -> None:
        with shielded(10.0):
            await trio.sleep(10)
        ended.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(shielded_work)
        await trio.sleep(2.0)
        arm_shutdown_deadline(trio.current_time() + 1.0)
    assert ended == [3.0]


async def test_a_stuck_handoff_does_not_hold_the_stop_past_shutdown_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A producer whose cleanup hands a batch to a sink that never takes it (as the
    connection does with what it already read): the stop still ends on time."""
    send, receive = trio.open_memory_channel[int](0)
    stopped_at: list[float] = []

    async def reader() -> None:
        try:
            await trio.sleep_forever()
        finally:
            with shielded(60.0):
                await send.send(1)  # nobody receives

    async def stuck_sink() -> None:
        # Never reads, and never closes its end (which would free the sender).
        await trio.sleep_forever()

    async def start(sup: Supervisor) -> None:
        sup.start_producer("reader", reader)
        sup.start_sink("sink", stuck_sink)
        sup.request_stop("test")
        stopped_at.append(trio.current_time())

    code = await supervise(start, shutdown_timeout=5.0, handle_signals=False)
    assert code == EXIT_FAILURE
    assert trio.current_time() - stopped_at[0] == 5.0
    receive.close()
