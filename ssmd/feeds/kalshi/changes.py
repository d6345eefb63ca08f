"""Kalshi's live subscription changes on one connection (the `DynamicSession` part of
`KalshiSession`): `update_subscription` add/delete on one sid, the `ok` reply's `seq`
re-basing the sid, the `ssmd.subscription` records, and errors 14, 16, 26 and 27 (25:
`drops`).

A mixin: `KalshiSession` owns the state declared here and builds the commands.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import attrs

from ssmd.connector.layout import AddMarkets, DeleteMarkets, Subscribe, Unsubscribe
from ssmd.connector.publisher import Inbound
from ssmd.connector.records import SubscribeErrorRecord, SubscriptionRecord
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds.base import Change, Command
from ssmd.feeds.kalshi.refusals import Refusals
from ssmd.feeds.kalshi.replies import (
    DEAD_UNSUBSCRIBE_TRIES,
    ERROR_MARKET_LIMIT,
    ERROR_UNKNOWN_SID,
    RETRY,
    SID_DEAD_ERRORS,
    SID_ENDED_ERRORS,
    UNKNOWN_MARKET_ERRORS,
    _Subscribe,
    _Unsubscribe,
    _Update,
    error_code,
    error_markets,
    reply_markets,
)

log = logging.getLogger("ssmd.connector.connection")


class LiveChanges(Refusals):
    """State shared with `KalshiSession`, which sets it up in `__init__`/`start`.

    Per planner slot the session keeps what is wanted (`_slots`); per sid, what the
    exchange confirmed (`subscriptions`: the `subscribed` reply's plan, then each `ok`
    reply's full market list). A change sends only what the confirmed set lacks (or
    still has); a refused change is retried as the difference between the two at that
    time, never as the command that was refused, so a later change is never undone.
    """

    _next_id: int
    _pending: dict[int, _Subscribe | _Unsubscribe | _Update]
    # The wanted subscriptions by slot (the planner's from 0, static plans negative).
    _slots: dict[int, SubscriptionPlan]
    _slot_sid: dict[int, int]
    _sid_slot: dict[int, int]
    _refused: list[tuple[int | None, SubscriptionPlan]]
    _refused_too_large: list[tuple[int, tuple[str, ...], bool, int]]
    _ops: dict[int, dict[str, int]]
    # Slots whose changes wait for the retry (error 27 and the like), and unsubscribes
    # the exchange refused (the sid still runs), by sid.
    _waiting: dict[int, None]
    _unsubscribing: dict[int, _Unsubscribe]
    # Gap repairs whose old sid has ended: (slot, old sid), to be subscribed again.
    _repairs: list[tuple[int, int]]

    def _command(self, cmd: str, params: dict[str, object]) -> Command:
        raise NotImplementedError

    def _subscribe(
        self,
        plan: SubscriptionPlan,
        replaces: int | None = None,
        *,
        slot: int | None = None,
        reason: str | None = None,
        retried: bool = False,
    ) -> Command:
        raise NotImplementedError

    def _ok_position(self, sid: int, seq: int, recv_ns: int, out: list[Inbound]) -> None:
        raise NotImplementedError

    # Live changes (the `DynamicSession` extension).

    def apply(self, change: Change) -> Command | None:
        """Update the wanted state of the change's slot; the command that carries it."""
        action = change.action
        if isinstance(action, Subscribe):
            plan = SubscriptionPlan(action.channel, action.markets)
            self._slots[action.slot] = plan
            self._ops[action.slot] = dict.fromkeys(action.markets, action.op)
            return self._subscribe(plan, slot=action.slot, reason=change.reason)
        if isinstance(action, AddMarkets | DeleteMarkets):
            add = isinstance(action, AddMarkets)
            wanted = self._slots.get(action.slot)
            if wanted is None:
                log.warning("conn %d: no subscription slot %d to change", self._conn, action.slot)
                # Queued behind a refused subscribe: the planner, told the slot was
                # dropped, already placed every market on it again, these included.
                return None
            ops = self._ops.setdefault(action.slot, {})
            if isinstance(action, AddMarkets):
                markets = tuple(dict.fromkeys((*wanted.markets, *action.markets)))
                ops.update(dict.fromkeys(action.markets, action.op))
            else:
                gone = set(action.markets)
                markets = tuple(m for m in wanted.markets if m not in gone)
                for market in gone:
                    ops.pop(market, None)
            plan = SubscriptionPlan(wanted.channel, markets)
            self._slots[action.slot] = plan
            sid = self._slot_sid.get(action.slot)
            if sid is not None and not add and self._emptied(action.slot, plan):
                if action.slot in self._waiting:
                    return None  # the retry ends it
                # A sid with no market carries nothing, and would be subscribed again
                # with an empty list: it ends.
                return self._end_sid(action.slot, change.reason)
            if sid is None:
                if not markets or self._subscribing(action.slot):
                    return None  # its subscribe (or the retry) carries the wanted set
                # Every market the exchange would not know was dropped: a fresh start.
                return self._subscribe(plan, slot=action.slot, reason=change.reason)
            if action.slot in self._waiting:
                return None  # the retry sends what is wanted then
            confirmed = set(self._confirmed(sid))
            sent = tuple(m for m in dict.fromkeys(action.markets) if (m in confirmed) != add)
            if not sent:
                return None  # already so on the exchange
            return self._update(action.slot, action.channel, sid, sent, add, change.reason)
        if isinstance(action, Unsubscribe):
            self._slots.pop(action.slot, None)
            self._ops.pop(action.slot, None)
            self._waiting.pop(action.slot, None)
            sid = self._slot_sid.pop(action.slot, None)
            self._refused = [(s, p) for s, p in self._refused if s != action.slot]
            self._split.pop(action.slot, None)
            self._ready.pop(action.slot, None)
            self._refusals.pop(action.slot, None)
            if sid is None:
                # Under a gap repair: its unsubscribe, once done, records the end.
                for old_sid, waiting in self._unsubscribing.items():
                    if waiting.repair == action.slot:
                        self._unsubscribing[old_sid] = attrs.evolve(
                            waiting, reason=change.reason, channel=action.channel
                        )
                return None
            self._sid_slot.pop(sid, None)
            return self._unsubscribe(_Unsubscribe(sid, action.slot, change.reason, action.channel))
        return None

    def _end_sid(self, slot: int, reason: str) -> Command:
        """Unsubscribe the slot's sid; the slot stays, wanting nothing, until an add."""
        sid = self._slot_sid.pop(slot)
        self._sid_slot.pop(sid, None)
        channel = self._slots[slot].channel
        return self._unsubscribe(_Unsubscribe(sid, slot, reason, channel))

    def _subscribing(self, slot: int) -> bool:
        """Whether a subscribe of `slot` is in flight, waits for its retry, or waits for
        its gap repair's unsubscribe."""
        return (
            any(s == slot for s, _ in self._refused)
            or any(
                (isinstance(p, _Subscribe) and p.slot == slot)
                or (isinstance(p, _Unsubscribe) and p.repair == slot)
                for p in self._pending.values()
            )
            or any(p.repair == slot for p in self._unsubscribing.values())
            or any(s == slot for s, _ in self._repairs)
        )

    def _confirmed(self, sid: int) -> tuple[str, ...]:
        plan = self.subscriptions.get(sid)
        return plan.markets if plan is not None else ()

    def _update(
        self, slot: int, channel: str, sid: int, markets: tuple[str, ...], add: bool, reason: str
    ) -> Command:
        params = {
            "sids": [sid],
            "market_tickers": list(markets),
            "action": "add_markets" if add else "delete_markets",
        }
        command = self._command("update_subscription", params)
        placed = self._ops.get(slot, {})
        ops = tuple(placed.get(m, 0) for m in markets) if add else ()
        self._pending[self._next_id] = _Update(slot, channel, sid, markets, add, reason, ops)
        return command

    def _unsubscribe(self, pending: _Unsubscribe) -> Command:
        command = self._command("unsubscribe", {"sids": [pending.sid]})
        self._pending[self._next_id] = pending
        return command

    def sid_markets(self) -> dict[int, tuple[str, int]]:
        return {sid: (plan.channel, len(plan.markets)) for sid, plan in self.subscriptions.items()}

    def take_refused(self) -> list[tuple[int, tuple[str, ...], bool, int]]:
        refused, self._refused_too_large = self._refused_too_large, []
        return refused

    def _retry_changes(self) -> list[Command]:
        """Each waiting slot's difference between wanted and confirmed (deletes first, to
        make room), and the refused unsubscribes again."""
        commands = []
        waiting, self._waiting = self._waiting, {}
        for slot in waiting:
            commands.extend(self._slot_changes(slot, RETRY))
        unsubscribing, self._unsubscribing = self._unsubscribing, {}
        for pending in unsubscribing.values():
            reason = RETRY if pending.reason is not None else None
            commands.append(self._unsubscribe(attrs.evolve(pending, reason=reason)))
        return commands

    def _slot_changes(self, slot: int, reason: str) -> list[Command]:
        """What brings the slot's sid to what the slot wants: its deletes, then its adds
        (cut to the split size while a refusal is split); an unsubscribe when it wants
        nothing; a subscribe (so cut) when it has no sid."""
        wanted = self._slots.get(slot)
        if wanted is None or self._subscribing(slot):
            return []
        size = self._split.get(slot)
        sid = self._slot_sid.get(slot)
        if sid is None:
            if self._emptied(slot, wanted):
                return []
            markets = wanted.markets[:size] if size else wanted.markets
            plan = SubscriptionPlan(wanted.channel, markets)
            return [self._subscribe(plan, slot=slot, retried=True)]
        if self._emptied(slot, wanted):
            return [self._end_sid(slot, reason)]
        confirmed = self._confirmed(sid)
        wanted_set, confirmed_set = set(wanted.markets), set(confirmed)
        gone = tuple(m for m in confirmed if m not in wanted_set)
        new = tuple(m for m in wanted.markets if m not in confirmed_set)
        if not new:
            self._split.pop(slot, None)
        commands = []
        if gone:
            commands.append(self._update(slot, wanted.channel, sid, gone, False, reason))
        if new:
            sent = new[:size] if size else new
            commands.append(self._update(slot, wanted.channel, sid, sent, True, reason))
        return commands

    def _on_update_reply(
        self, pending: _Update, reply: dict[str, Any], recv_ns: int, out: list[Inbound]
    ) -> None:
        sid = pending.sid
        before = self._confirmed(sid)
        if reply.get("type") == "error":
            code = error_code(reply)
            self._stats.subscribe_errors += 1
            log.warning(
                "conn %d: update_subscription of sid %d refused: %s",
                self._conn,
                sid,
                reply.get("msg"),
            )
            if pending.add:
                error = json.dumps(reply.get("msg"), separators=(",", ":"))
                refusal = SubscribeErrorRecord(
                    self._conn, pending.channel, list(pending.markets), error, recv_ns
                )
                out.append(self._subjects.record(refusal))
            if code == ERROR_MARKET_LIMIT and pending.add:
                self._on_add_too_large(pending)
                return
            if code in SID_ENDED_ERRORS:
                # The repair subscribes what the slot wants, this change included.
                self._on_sid_ended(sid, code, recv_ns, out)
                return
            if pending.add and self._on_add_refused(
                pending.slot, pending.channel, sid, pending.markets, reply, recv_ns, out
            ):
                return
            if not pending.add and code in UNKNOWN_MARKET_ERRORS:
                named = error_markets(reply, pending.markets)
                if named:  # not on the exchange: gone from the confirmed set too
                    self._drop_markets(
                        pending.slot, pending.channel, sid, named, code, recv_ns, out
                    )
            # 27 (too many requests) and the rest: the slot's changes wait for the retry.
            self._waiting[pending.slot] = None
            return
        seq = reply.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            self._ok_position(sid, seq, recv_ns, out)
        after = reply_markets(reply)
        if after is None:
            if pending.add:
                after = tuple(dict.fromkeys((*before, *pending.markets)))
            else:
                gone = set(pending.markets)
                after = tuple(m for m in before if m not in gone)
        if sid in self.subscriptions:
            self.subscriptions[sid] = SubscriptionPlan(pending.channel, after)
        had, has = set(before), set(after)
        if pending.add:
            added, removed = [m for m in pending.markets if m in has and m not in had], []
            missing = tuple(m for m in pending.markets if m not in has)
            if missing:
                self._on_add_omitted(pending.slot, pending.channel, sid, missing, recv_ns, out)
            else:
                self._refusals.pop(pending.slot, None)
        else:
            added, removed = [], [m for m in pending.markets if m in had and m not in has]
        if pending.slot in self._split:
            self._ready[pending.slot] = None  # the next part of a split add
        if added or removed:
            record = SubscriptionRecord(
                self._conn, sid, pending.channel, added, removed, pending.reason, recv_ns
            )
            self._record(out, record)

    def _on_add_too_large(self, pending: _Update) -> None:
        """Error 26 on an add: its markets leave the slot's wanted set and go back to the
        planner, by the op that placed them; one the planner placed on the slot again
        since (deleted and added back) stays: that later add gets its own answer."""
        placed = self._ops.get(pending.slot, {})
        by_op: dict[int, list[str]] = {}
        ops = pending.ops or (0,) * len(pending.markets)
        for market, op in zip(pending.markets, ops, strict=True):
            if placed.get(market) == op:
                by_op.setdefault(op, []).append(market)
                del placed[market]
        gone = {m for refused in by_op.values() for m in refused}
        wanted = self._slots.get(pending.slot)
        if wanted is not None and gone:
            kept = tuple(m for m in wanted.markets if m not in gone)
            self._slots[pending.slot] = SubscriptionPlan(wanted.channel, kept)
        for op, refused in by_op.items():
            self._refused_too_large.append((pending.slot, tuple(refused), False, op))

    def _on_retried_subscribe(
        self, pending: _Subscribe, sid: int | None, recv_ns: int, out: list[Inbound]
    ) -> None:
        """A refused subscribe went through on a later try: capture begins here."""
        markets = list(pending.plan.markets)
        self._record(
            out,
            SubscriptionRecord(self._conn, sid, pending.plan.channel, markets, [], RETRY, recv_ns),
        )

    def _on_unsubscribe_reply(
        self, pending: _Unsubscribe, reply: dict[str, Any], recv_ns: int, out: list[Inbound]
    ) -> None:
        """`unsubscribed`, or error 7 (the exchange knows no such sid): the sid's data
        ended. 10 or 17 (dead, says the reference, but not proven: the sid may still run)
        and any other error: the unsubscribe is tried again; a 10/17 for the
        DEAD_UNSUBSCRIBE_TRIES-th time is taken as the end. A gap repair's slot is
        subscribed again only once its old sid has ended, never beside it."""
        code = error_code(reply) if reply.get("type") == "error" else None
        if code is not None and code != ERROR_UNKNOWN_SID:
            dead = pending.dead + (code in SID_DEAD_ERRORS)
            if code not in SID_DEAD_ERRORS or dead < DEAD_UNSUBSCRIBE_TRIES:
                log.warning(
                    "conn %d: unsubscribe of sid %d refused: %s; will retry",
                    self._conn,
                    pending.sid,
                    reply.get("msg"),
                )
                self._stats.subscribe_errors += 1
                self._unsubscribing[pending.sid] = attrs.evolve(pending, dead=dead)
                return
        plan = self.subscriptions.pop(pending.sid, None)
        self.next_seq.pop(pending.sid, None)
        self._retire(pending.sid)
        if pending.repair is not None:
            self._repairs.append((pending.repair, pending.sid))
        if pending.reason is not None:
            markets = list(plan.markets) if plan is not None else []
            reason = pending.reason if code is None else f"error:{code}"
            channel = plan.channel if plan is not None else pending.channel
            self._record(
                out,
                SubscriptionRecord(self._conn, pending.sid, channel, [], markets, reason, recv_ns),
            )
