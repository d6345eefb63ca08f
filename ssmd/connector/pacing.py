"""What a connection tracks about one open socket, and when a busy socket is read next.

`connector.read_interval` (see `Connection._read`): reads fall on multiples of the
interval of Trio's clock, one grid for every connection of the process.
"""

from __future__ import annotations

import math

import attrs
import trio

from ssmd.feeds.base import Command


def next_read_at(now: float, interval: float) -> float:
    """The first multiple of `interval` strictly after `now` (a read on a grid point, up
    to float error, waits for the next one)."""
    return (math.floor(now / interval + 1e-6) + 1) * interval


@attrs.define
class SocketState:
    """What the engine tracks about one open socket."""

    last_frame: float
    connected: bool = False
    subscribed: bool = False
    reason: str | None = None
    # The command sent and not yet answered; a subscribe in flight may have opened a
    # subscription the session does not know yet.
    awaiting: Command | None = None
    # Set (and replaced) whenever the session handled a control frame.
    changed: trio.Event = attrs.field(factory=trio.Event)
    # Set (and replaced) to wake a reader waiting for its next read (read_interval).
    asked: trio.Event = attrs.field(factory=trio.Event)
    # The reader is waiting for its next read; frames may have arrived meanwhile.
    pausing: bool = False
    # The reader is handing a batch to the publisher (which may be slow to take it);
    # frames may arrive meanwhile.
    handing_over: bool = False
    # Catch-ups asked and not yet taken by the reader (`catch_up`); set by the reader once
    # it has read what had arrived when they asked.
    caught_up: trio.Event | None = None

    def notify(self) -> None:
        changed, self.changed = self.changed, trio.Event()
        changed.set()

    def ask(self) -> None:
        asked, self.asked = self.asked, trio.Event()
        asked.set()

    def take_catch_up(self) -> trio.Event | None:
        """The catch-ups asked so far, to be set once what has arrived is read; one asked
        later waits for the reader's next catch-up."""
        caught_up, self.caught_up = self.caught_up, None
        return caught_up

    async def catch_up(self, timeout: float) -> None:
        """Have a reader that waits for its next read, or is busy handing a batch over,
        take what has arrived first (waiting at most `timeout`: a reader stuck handing over
        must not hold up commands). A reader blocked on an empty socket has nothing to
        take. Not covered: the moment between a read taking bytes off the socket and the
        reader handling them (a scheduling point inside the read); a change applied
        then can still be recorded before those frames."""
        if not (self.pausing or self.handing_over):
            return
        if self.caught_up is None:
            self.caught_up = trio.Event()
        caught_up = self.caught_up
        self.ask()
        with trio.move_on_after(timeout):
            await caught_up.wait()
