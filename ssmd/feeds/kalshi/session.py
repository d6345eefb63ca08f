"""Kalshi's protocol on one connection slot: commands with ids, `sid` replies, `seq` rules.

Every command carries an `id` that its reply echoes; a `subscribed` reply names the new
subscription's `sid`. Data messages carry their `sid` and, on most channels, a `seq`
that counts up by one per sid. A jump is a gap: it is recorded, and on a channel whose
subscription starts with a snapshot (SNAPSHOT_CHANNELS) the subscription is replaced, so
a fresh snapshot repairs the book. For the others a resubscribe would only open a new
window of loss, so the gap is only recorded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Sequence
from typing import Any

import attrs

from ssmd.connector.publisher import Inbound
from ssmd.connector.records import GapRecord, ResubscribeRecord, SubscribeErrorRecord
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds.base import Command, SessionContext
from ssmd.feeds.kalshi.routing import Routed, RouteKind, Router

log = logging.getLogger("ssmd.connector.connection")

# Channels whose gaps a fresh subscription repairs (it starts with a snapshot).
SNAPSHOT_CHANNELS = frozenset({"orderbook_delta"})


def subscribe_params(plan: SubscriptionPlan) -> dict[str, object]:
    params: dict[str, object] = {"channels": [plan.channel]}
    if plan.markets:
        params["market_tickers"] = list(plan.markets)
    return params


def reply_sid(reply: dict[str, Any]) -> int | None:
    body = reply.get("msg")
    sid = body.get("sid") if isinstance(body, dict) else reply.get("sid")
    return sid if isinstance(sid, int) and not isinstance(sid, bool) else None


@attrs.frozen
class _Subscribe:
    plan: SubscriptionPlan
    replaces: int | None = None  # the sid a resubscribe replaces


@attrs.frozen
class _Unsubscribe:
    sid: int


class KalshiSession:
    def __init__(self, context: SessionContext, plans: Sequence[SubscriptionPlan]) -> None:
        self._context = context
        self._conn = context.conn
        self._stats = context.stats
        self._subjects = context.subjects
        self._router = Router(context.subjects.env, context.subjects.feed)
        self._plans = list(plans)
        self.start()

    def start(self) -> list[Command]:
        self._next_id = 0
        self._pending: dict[int, _Subscribe | _Unsubscribe] = {}
        self._replied: set[int] = set()
        self.subscriptions: dict[int, SubscriptionPlan] = {}
        self.next_seq: dict[int, int] = {}
        self._resubscribe: dict[int, None] = {}
        self._refused: list[SubscriptionPlan] = []
        self._stopping: list[int] = []
        self._unsubscribed: set[int] = set()
        return [self._subscribe(plan) for plan in self._plans]

    def _command(self, cmd: str, params: dict[str, object]) -> Command:
        self._next_id += 1
        text = json.dumps({"id": self._next_id, "cmd": cmd, "params": params})
        return Command(text, self._next_id, f"{cmd} (id {self._next_id})")

    def _subscribe(self, plan: SubscriptionPlan, replaces: int | None = None) -> Command:
        command = self._command("subscribe", subscribe_params(plan))
        self._pending[self._next_id] = _Subscribe(plan, replaces)
        return command

    def on_frame(self, payload: bytes, recv_ns: int, out: list[Inbound]) -> bool:
        routed = self._router.route(payload)
        if routed.kind is RouteKind.CONTROL:
            self._on_control(routed, recv_ns, out)
            return True
        stats = self._stats
        gap = None
        if routed.seq is not None and routed.sid is not None:
            gap = self._check_seq(routed, routed.sid, routed.seq, recv_ns)
            if gap is not None:
                out.append(self._subjects.record(gap))
        stats.messages += 1
        stats.by_type[routed.message_type or "invalid"] += 1
        if routed.kind is RouteKind.UNROUTED:
            stats.unrouted += 1
            log.debug("conn %d: unrouted message (%s)", self._conn, routed.reason)
        assert routed.subject is not None
        out.append(Inbound(routed.subject, payload, recv_ns))
        return gap is not None  # a gap may have queued a resubscribe

    def _on_control(self, routed: Routed, recv_ns: int, out: list[Inbound]) -> None:
        """Count and log a reply; settle its command; records go in place."""
        reply = routed.envelope or {}
        kind = routed.message_type or "?"
        self._stats.control[kind] += 1
        command_id = reply.get("id")
        if kind == "error":
            log.warning(
                "conn %d: exchange error (command %s): %s", self._conn, command_id, reply.get("msg")
            )
        else:
            log.debug("conn %d: %s (command %s)", self._conn, kind, command_id)
        if kind == "unsubscribed" and (sid := reply_sid(reply)) is not None:
            self._unsubscribed.add(sid)
        if not isinstance(command_id, int) or isinstance(command_id, bool):
            return
        pending = self._pending.pop(command_id, None)
        if pending is None:
            return
        self._replied.add(command_id)
        if isinstance(pending, _Unsubscribe):
            self.next_seq.pop(pending.sid, None)
            return
        plan = pending.plan
        refused = reply.get("type") == "error"
        new_sid = None if refused else reply_sid(reply)
        if pending.replaces is not None:
            # Before the fresh snapshot that follows the reply.
            out.append(
                self._subjects.record(
                    ResubscribeRecord(
                        self._conn,
                        "gap",
                        plan.channel,
                        pending.replaces,
                        new_sid,
                        list(plan.markets),
                        recv_ns,
                    )
                )
            )
            self._stats.resubscribes += 1
            log.info(
                "conn %d: resubscribed %s: sid %d -> %s",
                self._conn,
                plan.channel,
                pending.replaces,
                new_sid,
            )
        if refused:
            self._stats.subscribe_errors += 1
            log.error(
                "conn %d: subscribe %s (%d markets) refused: %s; will retry",
                self._conn,
                plan.channel,
                len(plan.markets),
                reply.get("msg"),
            )
            self._refused.append(plan)
            error = json.dumps(reply.get("msg"), separators=(",", ":"))
            out.append(
                self._subjects.record(
                    SubscribeErrorRecord(
                        self._conn, plan.channel, list(plan.markets), error, recv_ns
                    )
                )
            )
            return
        if new_sid is not None:
            self.subscriptions[new_sid] = plan
        log.info(
            "conn %d: subscribed %s (%s) as sid %s",
            self._conn,
            plan.channel,
            f"{len(plan.markets)} markets" if plan.markets else "all markets",
            new_sid,
        )

    def _check_seq(self, routed: Routed, sid: int, seq: int, recv_ns: int) -> GapRecord | None:
        """Track `seq` per sid; on a jump, schedule a resubscribe and give a gap record."""
        expected = self.next_seq.get(sid)
        self.next_seq[sid] = seq + 1
        if expected is None or seq == expected:
            return None
        if seq == 1 and routed.message_type == "orderbook_snapshot":
            # Some feeds number each market's snapshot from 1 within a shared sid.
            return None
        plan = self.subscriptions.get(sid)
        markets = list(plan.markets) if plan else ([routed.key] if routed.key else [])
        self._stats.gap("seq")
        log.warning(
            "conn %d: exchange gap on sid %d: expected seq %d, got %d",
            self._conn,
            sid,
            expected,
            seq,
        )
        if plan is None:
            log.warning(
                "conn %d: sid %d is not one of ours; cannot resubscribe it", self._conn, sid
            )
        elif plan.channel in SNAPSHOT_CHANNELS and sid not in self._resubscribe:
            self._resubscribe[sid] = None
        return GapRecord(
            self._conn, sid, plan.channel if plan else None, expected, seq, markets, recv_ns
        )

    def replied(self, token: Hashable) -> bool:
        return token in self._replied

    def take_commands(self) -> list[Command]:
        """One gap repair at a time: unsubscribe the old sid, subscribe the plan again."""
        while self._resubscribe:
            old_sid = next(iter(self._resubscribe))
            del self._resubscribe[old_sid]
            plan = self.subscriptions.pop(old_sid, None)
            if plan is None:
                continue
            unsubscribe = self._command("unsubscribe", {"sids": [old_sid]})
            self._pending[self._next_id] = _Unsubscribe(old_sid)
            return [unsubscribe, self._subscribe(plan, replaces=old_sid)]
        return []

    def retries_waiting(self) -> bool:
        return bool(self._refused)

    def take_retries(self) -> list[Command]:
        plans, self._refused = self._refused, []
        return [self._subscribe(plan) for plan in plans]

    def keepalive(self, count: int) -> str | None:
        return None  # WebSocket pings; Kalshi answers them with pongs

    def stop(self) -> list[Command]:
        self._stopping = list(self.subscriptions)
        self._unsubscribed.clear()
        if not self._stopping:
            return []
        return [self._command("unsubscribe", {"sids": self._stopping})]

    def stop_confirmed(self) -> bool:
        return self._unsubscribed.issuperset(self._stopping)
