"""Kalshi's live subscription changes on one connection (the `DynamicSession` part of
`KalshiSession`): `update_subscription` add/delete on one sid, the `ok` reply's `seq`
re-basing the sid, the `ssmd.subscription` records, and errors 25, 26 and 27.

A mixin: `KalshiSession` owns the state declared here and builds the commands.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import attrs

from ssmd.connector.layout import AddMarkets, DeleteMarkets, Subscribe, Unsubscribe
from ssmd.connector.publisher import Inbound
from ssmd.connector.records import GapRecord, SubscribeErrorRecord, SubscriptionRecord
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds.base import Change, Command, ConnectionStats, Subjects

log = logging.getLogger("ssmd.connector.connection")

ERROR_BUFFER_OVERFLOW = 25  # the exchange dropped a subscription: data lost
ERROR_MARKET_LIMIT = 26  # too many markets on one subscription
ERROR_TOO_MANY_REQUESTS = 27  # per-subscription command rate


def error_code(reply: dict[str, Any]) -> int | None:
    body = reply.get("msg")
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


@attrs.frozen
class _Subscribe:
    plan: SubscriptionPlan
    replaces: int | None = None  # the sid a resubscribe replaces
    slot: int | None = None
    reason: str | None = None  # set for a live change: its subscription record's reason


@attrs.frozen
class _Unsubscribe:
    sid: int
    slot: int | None = None
    reason: str | None = None
    markets: tuple[str, ...] = ()
    channel: str = ""


@attrs.frozen
class _Update:
    """`update_subscription` of one sid: markets added or deleted."""

    change: Change
    sid: int
    markets: tuple[str, ...]
    add: bool


class LiveChanges:
    """State shared with `KalshiSession`, which sets it up in `__init__`/`start`."""

    _conn: int
    _next_id: int
    _stats: ConnectionStats
    _subjects: Subjects
    _pending: dict[int, _Subscribe | _Unsubscribe | _Update]
    # The wanted subscriptions by slot (the planner's from 0, static plans negative).
    _slots: dict[int, SubscriptionPlan]
    _slot_sid: dict[int, int]
    _sid_slot: dict[int, int]
    _refused: list[tuple[int | None, SubscriptionPlan]]
    _refused_too_large: list[tuple[int, tuple[str, ...], bool]]
    _throttled: list[Change]
    _dropped: set[int]
    _resubscribe: dict[int, None]
    subscriptions: dict[int, SubscriptionPlan]
    next_seq: dict[int, int]

    def _command(self, cmd: str, params: dict[str, object]) -> Command:
        raise NotImplementedError

    def _subscribe(
        self,
        plan: SubscriptionPlan,
        replaces: int | None = None,
        *,
        slot: int | None = None,
        reason: str | None = None,
    ) -> Command:
        raise NotImplementedError

    # Live changes (the `DynamicSession` extension).

    def apply(self, change: Change) -> Command | None:
        """Update the wanted state of the change's slot; the command that carries it."""
        action = change.action
        if isinstance(action, Subscribe):
            plan = SubscriptionPlan(action.channel, action.markets)
            self._slots[action.slot] = plan
            return self._subscribe(plan, slot=action.slot, reason=change.reason)
        if isinstance(action, AddMarkets | DeleteMarkets):
            add = isinstance(action, AddMarkets)
            wanted = self._slots.get(action.slot)
            if wanted is None:
                log.warning("conn %d: no subscription slot %d to change", self._conn, action.slot)
                # Queued behind a refused subscribe: the planner, told the slot was
                # dropped, already placed every market on it again, these included.
                return None
            if add:
                markets = tuple(dict.fromkeys((*wanted.markets, *action.markets)))
            else:
                gone = set(action.markets)
                markets = tuple(m for m in wanted.markets if m not in gone)
            self._slots[action.slot] = SubscriptionPlan(wanted.channel, markets)
            sid = self._slot_sid.get(action.slot)
            if sid is None:
                return None  # refused and waiting: the retry subscribes the wanted set
            return self._update(change, sid, action.markets, add)
        if isinstance(action, Unsubscribe):
            wanted = self._slots.pop(action.slot, None)
            sid = self._slot_sid.pop(action.slot, None)
            self._refused = [(s, p) for s, p in self._refused if s != action.slot]
            if sid is None:
                return None
            self._sid_slot.pop(sid, None)
            command = self._command("unsubscribe", {"sids": [sid]})
            markets = wanted.markets if wanted else ()
            self.subscriptions.pop(sid, None)
            self._pending[self._next_id] = _Unsubscribe(
                sid, action.slot, change.reason, markets, action.channel
            )
            return command
        return None

    def _update(self, change: Change, sid: int, markets: tuple[str, ...], add: bool) -> Command:
        params = {
            "sids": [sid],
            "market_tickers": list(markets),
            "action": "add_markets" if add else "delete_markets",
        }
        command = self._command("update_subscription", params)
        self._pending[self._next_id] = _Update(change, sid, markets, add)
        return command

    def sid_markets(self) -> dict[int, tuple[str, int]]:
        return {sid: (plan.channel, len(plan.markets)) for sid, plan in self.subscriptions.items()}

    def take_refused(self) -> list[tuple[int, tuple[str, ...], bool]]:
        refused, self._refused_too_large = self._refused_too_large, []
        return refused

    def _on_update_reply(
        self, pending: _Update, reply: dict[str, Any], recv_ns: int, out: list[Inbound]
    ) -> None:
        action = pending.change.action
        assert isinstance(action, AddMarkets | DeleteMarkets)
        if reply.get("type") == "error":
            code = error_code(reply)
            self._stats.subscribe_errors += 1
            log.warning(
                "conn %d: update_subscription of sid %d refused: %s",
                self._conn,
                pending.sid,
                reply.get("msg"),
            )
            if code == ERROR_MARKET_LIMIT and pending.add:
                wanted = self._slots.get(action.slot)
                if wanted is not None:
                    gone = set(pending.markets)
                    markets = tuple(m for m in wanted.markets if m not in gone)
                    self._slots[action.slot] = SubscriptionPlan(wanted.channel, markets)
                self._refused_too_large.append((action.slot, pending.markets, False))
            else:
                # 27 (too many requests) and the rest: the change is retried later.
                self._throttled.append(pending.change)
            if pending.add:
                error = json.dumps(reply.get("msg"), separators=(",", ":"))
                refusal = SubscribeErrorRecord(
                    self._conn, action.channel, list(pending.markets), error, recv_ns
                )
                out.append(self._subjects.record(refusal))
            return
        seq = reply.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            # The reply gives the sid's position: an add or delete is no gap.
            self.next_seq[pending.sid] = seq + 1
        wanted = self._slots.get(action.slot)
        if wanted is not None and self._slot_sid.get(action.slot) == pending.sid:
            self.subscriptions[pending.sid] = wanted
        added = list(pending.markets) if pending.add else []
        removed = [] if pending.add else list(pending.markets)
        record = SubscriptionRecord(
            self._conn,
            pending.sid,
            action.channel,
            added,
            removed,
            pending.change.reason,
            recv_ns,
        )
        out.append(self._subjects.record(record))

    def _on_dropped(self, reply: dict[str, Any], recv_ns: int, out: list[Inbound]) -> None:
        """Error 25: the exchange dropped a subscription because this reader fell behind.
        Its data is lost: a gap record, then a fresh subscription of the same markets."""
        body = reply.get("msg")
        sid = reply.get("sid")
        if sid is None and isinstance(body, dict):
            sid = body.get("sid")
        plan = self.subscriptions.get(sid) if isinstance(sid, int) else None
        if plan is None or not isinstance(sid, int):
            # It names no subscription we hold (the reference: a 25 may name no sid), so
            # any of them may have lost data: each gets its gap and is subscribed again.
            log.error(
                "conn %d: the exchange dropped a subscription it does not name (%s); "
                "resubscribing all %d",
                self._conn,
                body,
                len(self.subscriptions),
            )
            # None is known to be ended: each is unsubscribed before it is subscribed
            # again, so one still running is not doubled.
            for held_sid, held in list(self.subscriptions.items()):
                if held_sid not in self._dropped:
                    self._drop_sid(held_sid, held, recv_ns, out, ended=False)
            return
        self._drop_sid(sid, plan, recv_ns, out)

    def _drop_sid(
        self,
        sid: int,
        plan: SubscriptionPlan,
        recv_ns: int,
        out: list[Inbound],
        *,
        ended: bool = True,
    ) -> None:
        self._stats.gaps += 1
        position = self.next_seq.get(sid, 0)
        log.warning(
            "conn %d: the exchange dropped sid %d (%s, error 25); resubscribing",
            self._conn,
            sid,
            plan.channel,
        )
        gap = GapRecord(
            self._conn,
            sid,
            plan.channel,
            position,
            position,
            list(plan.markets),
            recv_ns,
            reason=f"error:{ERROR_BUFFER_OVERFLOW}",
        )
        out.append(self._subjects.record(gap))
        if ended:
            self._dropped.add(sid)
        self._resubscribe[sid] = None
