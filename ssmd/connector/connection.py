"""One Kalshi WebSocket connection, kept alive forever.

Each connection is a producer task that loops: connect (signed handshake), publish a
connect record, subscribe its share of the markets, then read until the connection dies,
publish a disconnect record, wait a capped, jittered exponential backoff, and again.

While connected, four tasks share one nursery:
- the reader routes every frame to the publisher and resolves command replies;
- the pinger sends client pings; a pong counts as a frame;
- the watchdog declares the connection dead after `liveness_timeout` with no frame;
- the commander subscribes, then replaces subscriptions whose `seq` jumped.

A clean stop (cancellation) unsubscribes every sid and reads until the exchange confirms,
so the frames already on the wire are published before the disconnect record.
"""

from __future__ import annotations

import collections
import json
import logging
import random
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ssmd.clock import WallClock
from ssmd.connector.publisher import Inbound, record_message
from ssmd.connector.records import (
    ConnectRecord,
    DisconnectRecord,
    DiscontinuityRecord,
    GapRecord,
    ResubscribeRecord,
    SubscribeErrorRecord,
)
from ssmd.connector.router import Routed, RouteKind, Router
from ssmd.connector.shards import SubscriptionPlan
from ssmd.connector.websocket import Connect, WebSocket
from ssmd.connector.wsclient import connect_fast
from ssmd.deadline import shielded

log = logging.getLogger("ssmd.connector.connection")

HeaderSource = Callable[[str], list[tuple[str, str]]]
READ_BATCH = 1000


@attrs.frozen
class ConnectionSettings:
    liveness_timeout: float
    ping_interval: float
    command_timeout: float
    backoff_initial: float
    backoff_max: float


class ConnectionLost(Exception):
    """The connection is unusable (no frame in time, no reply to a command)."""


def backoff_delay(failures: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Delay before reconnect attempt `failures + 1`: half to all of a doubling, capped step."""
    step = min(maximum, initial * 2 ** min(failures, 62))
    return rng.uniform(step / 2, step)


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


HANDOFF_TIMEOUT_S = 5.0
STOP_UNSUBSCRIBE_TIMEOUT_S = 1.0
SUBSCRIBE_RETRY_INITIAL_S = 5.0
SUBSCRIBE_RETRY_MAX_S = 120.0
# Channels whose gaps a fresh subscription repairs (it starts with a snapshot). For the
# others a resubscribe would only open a new window of loss, so a gap is only recorded.
SNAPSHOT_CHANNELS = frozenset({"orderbook_delta"})


@attrs.define
class ConnectionStats:
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    messages: int = 0
    unrouted: int = 0
    gaps: int = 0
    resubscribes: int = 0
    subscribe_errors: int = 0
    lost: int = 0
    last_message_ns: int = 0
    by_type: collections.Counter[str] = attrs.field(factory=collections.Counter)
    control: collections.Counter[str] = attrs.field(factory=collections.Counter)


RecordFactory = Callable[[dict[str, Any]], DiscontinuityRecord | None]


@attrs.define
class _Waiter:
    event: trio.Event = attrs.field(factory=trio.Event)
    reply: dict[str, Any] = attrs.field(factory=dict)
    record: RecordFactory | None = None


@attrs.define
class _Session:
    last_frame: float
    connected: bool = False
    subscribed: bool = False
    reason: str | None = None
    next_command_id: int = 0
    waiters: dict[int, _Waiter] = attrs.field(factory=dict)
    subscriptions: dict[int, SubscriptionPlan] = attrs.field(factory=dict)
    next_seq: dict[int, int] = attrs.field(factory=dict)
    resubscribe_pending: dict[int, None] = attrs.field(factory=dict)
    resubscribe_wanted: trio.Event = attrs.field(factory=trio.Event)
    # Subscriptions the exchange refused; retried with backoff while connected.
    refused: list[SubscriptionPlan] = attrs.field(factory=list)
    # Sids whose `unsubscribed` reply has arrived.
    unsubscribed: set[int] = attrs.field(factory=set)


def _reply_sid(reply: dict[str, Any]) -> int | None:
    body = reply.get("msg")
    sid = body.get("sid") if isinstance(body, dict) else reply.get("sid")
    return sid if isinstance(sid, int) and not isinstance(sid, bool) else None


class Connection:
    def __init__(
        self,
        index: int,
        url: str,
        plans: list[SubscriptionPlan],
        *,
        router: Router,
        env: str,
        feed: str,
        clock: WallClock,
        settings: ConnectionSettings,
        headers: HeaderSource,
        connect: Connect = connect_fast,
        rng: random.Random | None = None,
    ) -> None:
        self.index = index
        self._url = url
        self._plans = plans
        self._router = router
        self._env = env
        self._feed = feed
        self._clock = clock
        self._settings = settings
        self._headers = headers
        self._connect = connect
        self._rng = rng or random.Random()
        self._send: trio.MemorySendChannel[list[Inbound]] | None = None
        self.stats = ConnectionStats()
        # Connected with every subscription sent: what /ready waits for.
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
            failures = 0
            while True:
                session = _Session(last_frame=trio.current_time())
                try:
                    await self._serve(session)
                    reason = "connection ended"
                except Exception as exc:
                    reason = session.reason or describe(exc)
                self.up = False
                if session.connected:
                    self.stats.disconnects += 1
                    log.warning("conn %d: disconnected: %s", self.index, reason)
                    await self._emit(DisconnectRecord(self.index, reason, self._clock.now_ns()))
                else:
                    self.stats.connect_failures += 1
                    log.warning("conn %d: cannot connect to %s: %s", self.index, self._url, reason)
                if session.subscribed:
                    failures = 0
                delay = backoff_delay(
                    failures, self._settings.backoff_initial, self._settings.backoff_max, self._rng
                )
                failures += 1
                log.info("conn %d: reconnecting in %.2fs", self.index, delay)
                await trio.sleep(delay)

    async def _emit(self, record: DiscontinuityRecord) -> None:
        assert self._send is not None
        await self._send.send([record_message(self._env, self._feed, record)])

    async def _serve(self, session: _Session) -> None:
        headers = self._headers(self._url)
        async with self._connect(self._url, headers, self._settings.command_timeout) as ws:
            session.connected = True
            session.last_frame = trio.current_time()
            self.stats.connects += 1
            log.info("conn %d: connected to %s", self.index, self._url)
            try:
                await self._emit(ConnectRecord(self.index, self._url, self._clock.now_ns()))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, ws, session)
                    nursery.start_soon(self._ping, ws, session)
                    nursery.start_soon(self._watch, session)
                    nursery.start_soon(self._command_loop, ws, session)
            except Exception as exc:
                session.reason = describe(exc)
                raise
            except BaseException:
                # Shutdown: end the subscriptions cleanly, then mark the end of this
                # connection's data if there is room.
                clean = False
                with shielded():
                    clean = await self._unsubscribe_all(ws, session)
                reason = "shutdown: unsubscribed, nothing in flight" if clean else "shutdown"
                record = DisconnectRecord(self.index, reason, self._clock.now_ns())
                assert self._send is not None
                try:
                    self._send.send_nowait([record_message(self._env, self._feed, record)])
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    log.warning("conn %d: no room for the shutdown record", self.index)
                raise

    async def _read(self, ws: WebSocket, session: _Session) -> None:
        while True:
            await self._read_batch(ws, session)

    async def _read_batch(self, ws: WebSocket, session: _Session) -> None:
        send = self._send
        assert send is not None
        route = self._router.route
        stats = self.stats
        frames = await ws.receive_batch(READ_BATCH)
        recv_ns = self._clock.now_ns()
        stats.last_message_ns = recv_ns
        session.last_frame = trio.current_time()
        batch: list[Inbound] = []
        for frame in frames:
            payload = frame.encode("utf-8") if isinstance(frame, str) else frame
            routed = route(payload)
            if routed.kind is RouteKind.CONTROL:
                record = await self._on_control(routed, session)
                if record is not None:
                    batch.append(record_message(self._env, self._feed, record))
                continue
            if routed.seq is not None and routed.sid is not None:
                gap = self._check_seq(routed, routed.sid, routed.seq, session, recv_ns)
                if gap is not None:
                    batch.append(record_message(self._env, self._feed, gap))
            stats.messages += 1
            stats.by_type[routed.message_type or "invalid"] += 1
            if routed.kind is RouteKind.UNROUTED:
                stats.unrouted += 1
                log.debug("conn %d: unrouted message (%s)", self.index, routed.reason)
            assert routed.subject is not None
            batch.append(Inbound(routed.subject, payload, recv_ns))
        if batch:
            await self._hand_over(send, batch)

    async def _unsubscribe_all(self, ws: WebSocket, session: _Session) -> bool:
        """At a clean stop: unsubscribe every sid and keep reading until the exchange
        confirms each one, so nothing it sent on this connection is left unread.

        True when every sid was confirmed within `STOP_UNSUBSCRIBE_TIMEOUT_S` and no
        command was in flight (a subscribe in flight may have opened a sid not known yet).
        """
        sids = list(session.subscriptions)
        settled = session.subscribed and not session.waiters
        if not sids:
            return settled
        session.unsubscribed.clear()
        with trio.move_on_after(min(STOP_UNSUBSCRIBE_TIMEOUT_S, self._settings.command_timeout)):
            try:
                session.next_command_id += 1
                await ws.send_message(
                    json.dumps(
                        {
                            "id": session.next_command_id,
                            "cmd": "unsubscribe",
                            "params": {"sids": sids},
                        }
                    )
                )
                while not session.unsubscribed.issuperset(sids):
                    await self._read_batch(ws, session)
            except Exception as exc:
                log.info(
                    "conn %d: could not unsubscribe at shutdown: %s", self.index, describe(exc)
                )
                return False
            log.info("conn %d: unsubscribed %d sids at shutdown", self.index, len(sids))
            return settled
        log.info("conn %d: unsubscribe not confirmed at shutdown", self.index)
        return False

    async def _hand_over(
        self, send: trio.MemorySendChannel[list[Inbound]], batch: list[Inbound]
    ) -> None:
        """Give a read batch to the publisher even if this connection is being torn down:
        the messages are already off the socket, so cancelling here would lose them."""
        with shielded(HANDOFF_TIMEOUT_S) as handoff:
            await send.send(batch)
        if handoff.cancelled_caught:
            self.stats.lost += len(batch)
            log.error(
                "conn %d: publisher did not take %d messages; they are lost", self.index, len(batch)
            )

    async def _on_control(self, routed: Routed, session: _Session) -> DiscontinuityRecord | None:
        """Log and count a control message; resolve its command; maybe give a record."""
        reply = routed.envelope or {}
        kind = routed.message_type or "?"
        self.stats.control[kind] += 1
        command_id = reply.get("id")
        if kind == "error":
            log.warning(
                "conn %d: exchange error (command %s): %s", self.index, command_id, reply.get("msg")
            )
        else:
            log.debug("conn %d: %s (command %s)", self.index, kind, command_id)
        if kind == "unsubscribed" and (sid := _reply_sid(reply)) is not None:
            session.unsubscribed.add(sid)
        if not isinstance(command_id, int):
            return None
        waiter = session.waiters.pop(command_id, None)
        if waiter is None:
            return None
        waiter.reply = reply
        waiter.event.set()
        # Queued in the reader's batch, so the record precedes the fresh snapshot.
        return waiter.record(reply) if waiter.record is not None else None

    def _check_seq(
        self, routed: Routed, sid: int, seq: int, session: _Session, recv_ns: int
    ) -> GapRecord | None:
        """Track `seq` per sid; on a jump, schedule a resubscribe and give a gap record."""
        expected = session.next_seq.get(sid)
        session.next_seq[sid] = seq + 1
        if expected is None or seq == expected:
            return None
        if seq == 1 and routed.message_type == "orderbook_snapshot":
            # Some feeds number each market's snapshot from 1 within a shared sid.
            return None
        plan = session.subscriptions.get(sid)
        markets = list(plan.markets) if plan else ([routed.key] if routed.key else [])
        self.stats.gaps += 1
        log.warning(
            "conn %d: exchange gap on sid %d: expected seq %d, got %d",
            self.index,
            sid,
            expected,
            seq,
        )
        if plan is None:
            log.warning(
                "conn %d: sid %d is not one of ours; cannot resubscribe it", self.index, sid
            )
        elif plan.channel in SNAPSHOT_CHANNELS and sid not in session.resubscribe_pending:
            session.resubscribe_pending[sid] = None
            session.resubscribe_wanted.set()
        return GapRecord(
            self.index, sid, plan.channel if plan else None, expected, seq, markets, recv_ns
        )

    async def _ping(self, ws: WebSocket, session: _Session) -> None:
        count = 0
        while True:
            await trio.sleep(self._settings.ping_interval)
            count += 1
            # An unanswered ping is left to the watchdog, which ends the connection.
            with trio.move_on_after(self._settings.liveness_timeout):
                await ws.ping(b"ssmd-%d" % count)
                session.last_frame = trio.current_time()

    async def _watch(self, session: _Session) -> None:
        timeout = self._settings.liveness_timeout
        while True:
            deadline = session.last_frame + timeout
            if trio.current_time() >= deadline:
                raise ConnectionLost(f"no frame for {timeout:g}s")
            await trio.sleep_until(deadline)

    async def _command(
        self,
        ws: WebSocket,
        session: _Session,
        cmd: str,
        params: dict[str, object],
        record: RecordFactory | None = None,
    ) -> dict[str, Any]:
        session.next_command_id += 1
        command_id = session.next_command_id
        waiter = _Waiter(record=record)
        session.waiters[command_id] = waiter
        await ws.send_message(json.dumps({"id": command_id, "cmd": cmd, "params": params}))
        with trio.move_on_after(self._settings.command_timeout):
            await waiter.event.wait()
            return waiter.reply
        session.waiters.pop(command_id, None)
        raise ConnectionLost(
            f"no reply to {cmd} (id {command_id}) within {self._settings.command_timeout:g}s"
        )

    async def _subscribe(
        self,
        ws: WebSocket,
        session: _Session,
        plan: SubscriptionPlan,
        record: RecordFactory | None = None,
    ) -> int | None:
        reply = await self._command(ws, session, "subscribe", plan.params(), record)
        if reply.get("type") == "error":
            self.stats.subscribe_errors += 1
            log.error(
                "conn %d: subscribe %s (%d markets) refused: %s; will retry",
                self.index,
                plan.channel,
                len(plan.markets),
                reply.get("msg"),
            )
            session.refused.append(plan)
            await self._emit(
                SubscribeErrorRecord(
                    self.index,
                    plan.channel,
                    list(plan.markets),
                    json.dumps(reply.get("msg"), separators=(",", ":")),
                    self._clock.now_ns(),
                )
            )
            return None
        sid = _reply_sid(reply)
        if sid is not None:
            session.subscriptions[sid] = plan
        log.info(
            "conn %d: subscribed %s (%s) as sid %s",
            self.index,
            plan.channel,
            f"{len(plan.markets)} markets" if plan.markets else "all markets",
            sid,
        )
        return sid

    async def _command_loop(self, ws: WebSocket, session: _Session) -> None:
        for plan in self._plans:
            await self._subscribe(ws, session, plan)
        session.subscribed = True
        self.up = True
        if self._task_status is not None:
            self._task_status.started()
            self._task_status = None
        retry_delay = SUBSCRIBE_RETRY_INITIAL_S
        while True:
            if session.refused:
                with trio.move_on_after(retry_delay):
                    await session.resubscribe_wanted.wait()
            else:
                await session.resubscribe_wanted.wait()
            if session.refused and not session.resubscribe_wanted.is_set():
                plans, session.refused = session.refused, []
                for plan in plans:
                    await self._subscribe(ws, session, plan)
                retry_delay = min(retry_delay * 2, SUBSCRIBE_RETRY_MAX_S)
                continue
            session.resubscribe_wanted = trio.Event()
            while session.resubscribe_pending:
                old_sid = next(iter(session.resubscribe_pending))
                del session.resubscribe_pending[old_sid]
                replaced = session.subscriptions.pop(old_sid, None)
                if replaced is not None:
                    await self._resubscribe(ws, session, old_sid, replaced)

    async def _resubscribe(
        self, ws: WebSocket, session: _Session, old_sid: int, plan: SubscriptionPlan
    ) -> None:
        await self._command(ws, session, "unsubscribe", {"sids": [old_sid]})
        session.next_seq.pop(old_sid, None)

        def record(reply: dict[str, Any]) -> ResubscribeRecord:
            new_sid = None if reply.get("type") == "error" else _reply_sid(reply)
            return ResubscribeRecord(
                self.index,
                "gap",
                plan.channel,
                old_sid,
                new_sid,
                list(plan.markets),
                self._clock.now_ns(),
            )

        new_sid = await self._subscribe(ws, session, plan, record)
        self.stats.resubscribes += 1
        log.info(
            "conn %d: resubscribed %s: sid %d -> %s", self.index, plan.channel, old_sid, new_sid
        )
