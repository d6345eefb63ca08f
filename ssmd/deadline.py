"""The shutdown deadline, and shields that never outlive it.

Some work must finish even when its task is cancelled: a batch already read off a socket
has to reach the publisher, an asyncio task has to end before its Trio caller returns,
a connection has to be closed. Such work runs in a shield. A plain shield can outlast
`service.shutdown_timeout`; `shielded` cannot: its deadline is the earlier of its own
limit, the shutdown deadline and the deadline of the `shielded` it is nested in, and a
shield entered before the stop was requested is shortened when it is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import trio
from trio.lowlevel import RunVar


class _Shutdown:
    def __init__(self) -> None:
        self.deadline = math.inf
        self.shields: set[trio.CancelScope] = set()


_SHUTDOWN: RunVar[_Shutdown] = RunVar("ssmd_shutdown")
# The innermost `shielded` scope the current task runs in: a shield nested in it would
# otherwise protect its body from that scope's deadline too.
_ENCLOSING: ContextVar[trio.CancelScope | None] = ContextVar("ssmd_enclosing_shield", default=None)


def _state() -> _Shutdown:
    try:
        return _SHUTDOWN.get()
    except LookupError:
        state = _Shutdown()
        _SHUTDOWN.set(state)
        return state


def reset_shutdown_deadline() -> None:
    """Forget any armed deadline: a new run of the roles starts (a restart after NATS
    failed during start-up would otherwise find every shield already expired).

    The state is not restored when that run ends: what follows it (closing the NATS
    connection) belongs to the same stop and stays within its deadline."""
    _SHUTDOWN.set(_Shutdown())


def arm_shutdown_deadline(deadline: float) -> None:
    """From now on nothing shielded in this Trio run lasts past `deadline` (Trio time)."""
    state = _state()
    state.deadline = min(state.deadline, deadline)
    for scope in state.shields:
        scope.deadline = min(scope.deadline, state.deadline)


def shutdown_deadline() -> float:
    """The armed shutdown deadline in Trio time; infinity while no stop is under way."""
    return _state().deadline


def time_left(limit: float = math.inf) -> float:
    """Seconds until the earlier of `limit` from now and the shutdown deadline (>= 0)."""
    return max(0.0, min(limit, shutdown_deadline() - trio.current_time()))


@contextmanager
def shielded(limit: float = math.inf) -> Iterator[trio.CancelScope]:
    """Shield the body from cancellation, for at most `limit` seconds and never past the
    shutdown deadline. `scope.cancelled_caught` tells whether the time ran out."""
    state = _state()
    deadline = min(trio.current_time() + limit, state.deadline)
    enclosing = _ENCLOSING.get()
    if enclosing is not None:
        deadline = min(deadline, enclosing.deadline)
    scope = trio.CancelScope(shield=True, deadline=deadline)
    state.shields.add(scope)
    token = _ENCLOSING.set(scope)
    try:
        with scope:
            yield scope
    finally:
        _ENCLOSING.reset(token)
        state.shields.discard(scope)
