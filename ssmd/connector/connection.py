"""One venue WebSocket connection slot, kept alive forever: the generic engine.

Each connection is a producer task that loops: connect (with the venue's handshake
headers), publish a connect record, send the venue session's subscribe commands, then
read until the connection dies, publish a disconnect record, wait a capped, jittered
exponential backoff (`ssmd.backoff`), and again. What the venue does differently lives
in its `Session` (`ssmd.feeds.base`), which never does I/O.

While connected, four tasks share one nursery:
- the reader gives every frame to the session, which turns it into messages and
  records, and hands each read batch to the publisher;
- the pinger sends the venue's keepalive (a WebSocket ping, or a text frame);
- the watchdog declares the connection dead after `liveness_timeout` with no frame;
- the commander sends the subscriptions, then what the session asks for later (gap
  repairs, retries of refused subscriptions), one command at a time.

A clean stop (cancellation) sends the session's stop commands and reads until the
exchange confirms, so the frames already on the wire are published before the
disconnect record.
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from ssmd.backoff import Backoff
from ssmd.clock import WallClock
from ssmd.connector.pacing import SocketState, next_read_at
from ssmd.connector.publisher import Inbound
from ssmd.connector.records import ConnectRecord, DisconnectRecord, DiscontinuityRecord
from ssmd.connector.shards import SubscriptionPlan
from ssmd.connector.websocket import Connect, WebSocket
from ssmd.connector.wsclient import connect_fast
from ssmd.deadline import shielded
from ssmd.feeds.base import (
    Change,
    Command,
    ConnectionStats,
    DropsMarkets,
    DynamicSession,
    Session,
    SessionContext,
    Subjects,
    Venue,
    confirms_stop,
)

if TYPE_CHECKING:
    from ssmd.config import ConnectorConfig

__all__ = ["Connection", "ConnectionLost", "ConnectionSettings", "ConnectionStats", "describe"]

log = logging.getLogger("ssmd.connector.connection")

HeaderSource = Callable[[str], list[tuple[str, str]]]
OnRefused = Callable[[int, int, tuple[str, ...], bool, int], None]
"""(conn, slot, markets, dropped, op) the exchange refused as over its market limit."""
OnDropped = Callable[[int, int, tuple[str, ...], str], None]
"""(conn, slot, markets, reason) a session dropped as never to be taken (`DropsMarkets`)."""
READ_BATCH = 1000


@attrs.frozen
class ConnectionSettings:
    liveness_timeout: float
    ping_interval: float
    command_timeout: float
    backoff_initial: float
    backoff_max: float
    # Live subscription changes are sent at most this often (Kalshi limits the
    # per-subscription command rate, error 27).
    change_interval: float = 0.0
    # A busy socket is read at most once per interval (see `Connection._read`).
    read_interval: float = 0.0

    @property
    def backoff(self) -> Backoff:
        """Reconnect delays: half to all of a doubling step, capped."""
        return Backoff(self.backoff_initial, self.backoff_max, jitter=0.5)


class ConnectionLost(Exception):
    """The connection is unusable (no frame in time, no reply to a command)."""


def describe(exc: BaseException) -> str:
    """A one-line reason, looking through exception groups to the first real error."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)]
        exc = inner[0] if inner else exc.exceptions[0]
    text = str(exc)
    name = type(exc).__name__
    if name == "ConnectionClosed":
        reason = getattr(exc, "reason", None)
        text = f"closed by peer ({reason.code} {reason.name})" if reason else "closed"
    return f"{name}: {text}" if text else name


# The `disconnect` record's reason at a clean stop: everything the exchange sent on the
# socket was read (it confirmed every unsubscribe and no command was in flight); or the
# venue never confirms an unsubscribe, so frames on the wire may have been left unread;
# or plain `shutdown` when nothing can be said.
SHUTDOWN_CLEAN = "shutdown: unsubscribed, nothing in flight"
SHUTDOWN_UNCONFIRMED = "shutdown: venue does not confirm unsubscribe"
SHUTDOWN = "shutdown"

HANDOFF_TIMEOUT_S = 5.0
STOP_UNSUBSCRIBE_TIMEOUT_S = 1.0
# Refused subscriptions are retried after 5 s, doubling to 2 min, while connected.
SUBSCRIBE_RETRY = Backoff(5.0, 120.0)


class Connection:
    def __init__(
        self,
        index: int,
        url: str,
        venue: Venue,
        plans: Sequence[SubscriptionPlan],
        *,
        config: ConnectorConfig,
        env: str,
        clock: WallClock,
        settings: ConnectionSettings,
        headers: HeaderSource,
        connect: Connect = connect_fast,
        rng: random.Random | None = None,
        context: SessionContext | None = None,
    ) -> None:
        self.index = index
        self._url = url
        self._clock = clock
        self._settings = settings
        self._headers = headers
        self._connect = connect
        self._rng = rng or random.Random()
        self._send: trio.MemorySendChannel[list[Inbound]] | None = None
        self.feed = config.feed
        self.subjects = Subjects(env, config.feed)
        self.stats = ConnectionStats()
        if context is None:
            context = SessionContext(index, self.subjects, self.stats, config)
        else:
            self.subjects = context.subjects
            self.stats = context.stats
        self.session: Session = venue.session(context, plans)
        # Live subscription changes waiting to be sent (`change`), oldest first.
        self._changes: collections.deque[Change] = collections.deque()
        self.on_refused: OnRefused | None = None
        self.on_dropped: OnDropped | None = None
        self._socket: SocketState | None = None
        # Connected with every subscription answered: what /ready waits for.
        self.up = False
        self._task_status: trio.TaskStatus[None] | None = None

    async def run(
        self,
        send: trio.MemorySendChannel[list[Inbound]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect, serve, reconnect; forever, until cancelled. Reports started once
        first connected with every subscription sent."""
        self._task_status = task_status
        async with send:
            self._send = send
            retry = self._settings.backoff.retry(self._rng)
            while True:
                socket = SocketState(last_frame=trio.current_time())
                self._socket = socket
                try:
                    await self._serve(socket)
                    reason = "connection ended"
                except Exception as exc:
                    reason = socket.reason or describe(exc)
                self.up = False
                if socket.connected:
                    self.stats.disconnects += 1
                    log.warning("conn %d: disconnected: %s", self.index, reason)
                    await self._emit(DisconnectRecord(self.index, reason, self._clock.now_ns()))
                else:
                    self.stats.connect_failures += 1
                    log.warning("conn %d: cannot connect to %s: %s", self.index, self._url, reason)
                if socket.subscribed:
                    retry.reset()
                delay = retry.next_delay()
                log.info("conn %d: reconnecting in %.2fs", self.index, delay)
                await trio.sleep(delay)

    @property
    def changes_waiting(self) -> int:
        return len(self._changes)

    def change(self, changes: Iterable[Change]) -> None:
        """Queue live subscription changes; sent in order, one at a time, each reply
        awaited, paced by `change_interval`. A connection that is down applies them
        after its reconnect has subscribed what was wanted before."""
        if not isinstance(self.session, DynamicSession):
            raise TypeError(f"the {type(self.session).__name__} cannot change subscriptions")
        self._changes.extend(changes)
        if self._socket is not None:
            self._socket.notify()

    def _report_refused(self) -> None:
        session = self.session
        if isinstance(session, DynamicSession):
            for slot, markets, dropped, op in session.take_refused():
                if self.on_refused is not None:
                    self.on_refused(self.index, slot, markets, dropped, op)
        if isinstance(session, DropsMarkets):
            for slot, markets, reason in session.take_dropped():
                if self.on_dropped is not None:
                    self.on_dropped(self.index, slot, markets, reason)

    async def _emit(self, record: DiscontinuityRecord) -> None:
        assert self._send is not None
        await self._send.send([self.subjects.record(record)])

    async def _serve(self, socket: SocketState) -> None:
        headers = self._headers(self._url)
        async with self._connect(self._url, headers, self._settings.command_timeout) as ws:
            socket.connected = True
            socket.last_frame = trio.current_time()
            self.stats.connects += 1
            log.info("conn %d: connected to %s", self.index, self._url)
            try:
                await self._emit(
                    ConnectRecord(
                        self.index,
                        self._url,
                        self._clock.now_ns(),
                        self._settings.read_interval * 1000,
                    )
                )
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, ws, socket)
                    nursery.start_soon(self._ping, ws, socket)
                    nursery.start_soon(self._watch, socket)
                    nursery.start_soon(self._command_loop, ws, socket)
            except Exception as exc:
                socket.reason = describe(exc)
                raise
            except BaseException:
                # Shutdown: end the subscriptions cleanly, then mark the end of this
                # connection's data, waiting for a slow publisher like a read batch does.
                reason = SHUTDOWN
                with shielded():
                    reason = await self._stop(ws, socket)
                record = DisconnectRecord(self.index, reason, self._clock.now_ns())
                assert self._send is not None
                taken = False
                with shielded(HANDOFF_TIMEOUT_S):
                    try:
                        await self._send.send([self.subjects.record(record)])
                        taken = True
                    except (trio.ClosedResourceError, trio.BrokenResourceError):
                        pass
                if not taken:
                    log.warning(
                        "conn %d: the publisher did not take the shutdown record", self.index
                    )
                raise

    async def _read(self, ws: WebSocket, socket: SocketState) -> None:
        """Read until cancelled; a busy socket at most once per `read_interval`.

        Each read costs a wakeup of this thread, and each handed-over batch a publish
        crossing, whatever its size; at Kalshi's rates that per-read cost was most of
        the CPU. After a read, the next waits for the next multiple of the interval
        on Trio's clock (a grid shared by every connection, so their reads and their
        hand-overs fall in the same scheduler pass). A frame arriving after a quiet
        spell is read at once; while frames keep coming, each waits in the socket at
        most one interval before it is read and stamped. A socket with more waiting
        than one read takes, or with a command waiting for its answer, is read at once;
        before a live subscription change, what has arrived is read first (after the
        batch being handed over, if the publisher is slow to take it), so it comes
        before the change's record (`SocketState.catch_up`).
        """
        interval = self._settings.read_interval
        while True:
            await self._read_batch(ws, socket)
            # Asked while handing the batch over to a slow publisher.
            await self._read_up(ws, socket)
            if interval <= 0 or ws.backlogged or socket.awaiting is not None:
                continue
            # The next grid point strictly after now (a read on a grid point, up to
            # float error, waits for the one after).
            grid = next_read_at(trio.current_time(), interval)
            asked = socket.asked
            socket.pausing = True
            try:
                with trio.move_on_at(grid):
                    await asked.wait()
            finally:
                socket.pausing = False
            await self._read_up(ws, socket)

    async def _read_up(self, ws: WebSocket, socket: SocketState) -> None:
        """For each catch-up asked (`SocketState.catch_up`), read what has arrived first
        (one read takes it all, up to READ_BATCH; more is read by `_read` as usual)."""
        while (caught_up := socket.take_catch_up()) is not None:
            if ws.backlogged:
                await self._read_batch(ws, socket)
            caught_up.set()

    async def _read_batch(self, ws: WebSocket, socket: SocketState) -> None:
        send = self._send
        assert send is not None
        on_frame = self.session.on_frame
        frames = await ws.receive_batch(READ_BATCH)
        recv_ns = self._clock.now_ns()
        self.stats.last_message_ns = recv_ns
        socket.last_frame = trio.current_time()
        batch: list[Inbound] = []
        control = False
        for frame in frames:
            payload = frame.encode("utf-8") if isinstance(frame, str) else frame
            if on_frame(payload, recv_ns, batch):
                control = True
        if control:
            socket.notify()
        if batch:
            socket.handing_over = True
            try:
                await self._hand_over(send, batch)
            finally:
                socket.handing_over = False

    async def _stop(self, ws: WebSocket, socket: SocketState) -> str:
        """At a clean stop: end every subscription and keep reading until the exchange
        confirms, so nothing it sent on this connection is left unread.

        The disconnect reason: SHUTDOWN_CLEAN when everything was confirmed within
        `STOP_UNSUBSCRIBE_TIMEOUT_S` and no command was in flight; SHUTDOWN_UNCONFIRMED
        when the venue never confirms an unsubscribe; else SHUTDOWN.
        """
        settled = socket.subscribed and socket.awaiting is None
        limit = min(STOP_UNSUBSCRIBE_TIMEOUT_S, self._settings.command_timeout)
        deadline = trio.current_time() + limit
        # A backstop only: the loop ends between batches, never inside a read.
        with trio.move_on_after(limit + 1):
            try:
                # What arrived while the reader waited for its next read (read_interval).
                while ws.backlogged and trio.current_time() < deadline:
                    await self._read_batch(ws, socket)
            except Exception as exc:
                log.info("conn %d: could not read at shutdown: %s", self.index, describe(exc))
                return SHUTDOWN
        commands = self.session.stop()
        if not commands:
            return SHUTDOWN_CLEAN if settled else SHUTDOWN
        with trio.move_on_after(min(STOP_UNSUBSCRIBE_TIMEOUT_S, self._settings.command_timeout)):
            try:
                for command in commands:
                    await ws.send_message(command.text)
                while not self.session.stop_confirmed():
                    await self._read_batch(ws, socket)
            except Exception as exc:
                log.info(
                    "conn %d: could not unsubscribe at shutdown: %s", self.index, describe(exc)
                )
                return SHUTDOWN
            if not settled:
                return SHUTDOWN
            if not confirms_stop(self.session):
                log.info(
                    "conn %d: unsubscribed at shutdown (the venue does not confirm)", self.index
                )
                return SHUTDOWN_UNCONFIRMED
            log.info("conn %d: unsubscribed at shutdown", self.index)
            return SHUTDOWN_CLEAN
        log.info("conn %d: unsubscribe not confirmed at shutdown", self.index)
        return SHUTDOWN

    async def _hand_over(
        self, send: trio.MemorySendChannel[list[Inbound]], batch: list[Inbound]
    ) -> None:
        """Give a read batch to the publisher even if this connection is being torn down:
        the messages are already off the socket, so cancelling here would lose them."""
        try:
            send.send_nowait(batch)  # the usual case, without a shield's cost
            return
        except trio.WouldBlock:
            pass
        with shielded(HANDOFF_TIMEOUT_S) as handoff:
            await send.send(batch)
        if handoff.cancelled_caught:
            self.stats.lost += len(batch)
            log.error(
                "conn %d: publisher did not take %d messages; they are lost", self.index, len(batch)
            )

    async def _ping(self, ws: WebSocket, socket: SocketState) -> None:
        count = 0
        while True:
            await trio.sleep(self._settings.ping_interval)
            count += 1
            text = self.session.keepalive(count)
            if text is not None:
                # The answer is a frame, which the reader counts as liveness.
                await ws.send_message(text)
                continue
            # An unanswered ping is left to the watchdog, which ends the connection.
            with trio.move_on_after(self._settings.liveness_timeout):
                await ws.ping(b"ssmd-%d" % count)
                socket.last_frame = trio.current_time()

    async def _watch(self, socket: SocketState) -> None:
        timeout = self._settings.liveness_timeout
        while True:
            deadline = socket.last_frame + timeout
            if trio.current_time() >= deadline:
                raise ConnectionLost(f"no frame for {timeout:g}s")
            await trio.sleep_until(deadline)

    async def _send_command(self, ws: WebSocket, socket: SocketState, command: Command) -> None:
        """Send one command and wait for the session to see its answer, if it has one."""
        socket.awaiting = command
        await ws.send_message(command.text)
        token = command.reply
        if token is not None:
            socket.ask()
            with trio.move_on_after(self._settings.command_timeout) as waiting:
                while not self.session.replied(token):
                    await socket.changed.wait()
            if waiting.cancelled_caught:
                raise ConnectionLost(
                    f"no reply to {command.what or command.text[:80]} within "
                    f"{self._settings.command_timeout:g}s"
                )
        socket.awaiting = None

    async def _command_loop(self, ws: WebSocket, socket: SocketState) -> None:
        session = self.session
        for command in session.start():
            await self._send_command(ws, socket, command)
        socket.subscribed = True
        self.up = True
        if self._task_status is not None:
            self._task_status.started()
            self._task_status = None
        self._report_refused()
        retry = SUBSCRIBE_RETRY.retry(self._rng)
        retry_at: float | None = None
        dynamic = isinstance(session, DynamicSession)
        while True:
            changed = socket.changed
            commands = session.take_commands()
            if commands:
                for command in commands:
                    await self._send_command(ws, socket, command)
                # A repair's subscribe refused as too large: the planner hears it now,
                # not after whatever frame comes next.
                self._report_refused()
                continue
            if dynamic and self._changes:
                assert isinstance(session, DynamicSession)
                # Frames that arrived before the change come before its record.
                await socket.catch_up(self._settings.read_interval + HANDOFF_TIMEOUT_S)
                change_command = session.apply(self._changes.popleft())
                if change_command is not None:
                    await self._send_command(ws, socket, change_command)
                    self._report_refused()
                    if self._settings.change_interval > 0:
                        await trio.sleep(self._settings.change_interval)
                continue
            if not session.retries_waiting():
                retry_at = None
                await changed.wait()
                continue
            if retry_at is None:
                retry_at = trio.current_time() + retry.next_delay()
            with trio.move_on_at(retry_at):
                await changed.wait()
            if trio.current_time() >= retry_at:
                retry_at = None
                for command in session.take_retries():
                    await self._send_command(ws, socket, command)
                self._report_refused()
