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
from ssmd.connector.records import (
    ResubscribeRecord,
    SubscribeErrorRecord,
    SubscriptionRecord,
)
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds.base import Command, SessionContext
from ssmd.feeds.kalshi.changes import LiveChanges
from ssmd.feeds.kalshi.replies import (
    ERROR_BUFFER_OVERFLOW,
    ERROR_MARKET_LIMIT,
    RECONNECT,
    RETRY,
    _Subscribe,
    _Unsubscribe,
    _Update,
    error_code,
)
from ssmd.feeds.kalshi.routing import Routed, RouteKind, Router
from ssmd.feeds.kalshi.seq import SeqCheck
from ssmd.feeds.kalshi_discovery import backfill_window

log = logging.getLogger("ssmd.connector.connection")


def subscribe_params(plan: SubscriptionPlan) -> dict[str, object]:
    params: dict[str, object] = {"channels": [plan.channel]}
    if plan.markets:
        params["market_tickers"] = list(plan.markets)
    return params


def reply_sid(reply: dict[str, Any]) -> int | None:
    body = reply.get("msg")
    sid = body.get("sid") if isinstance(body, dict) else reply.get("sid")
    return sid if isinstance(sid, int) and not isinstance(sid, bool) else None


class KalshiSession(SeqCheck, LiveChanges):
    def __init__(self, context: SessionContext, plans: Sequence[SubscriptionPlan]) -> None:
        self._context = context
        self._conn = context.conn
        self._stats = context.stats
        self._subjects = context.subjects
        self._router = Router(context.subjects.env, context.subjects.feed)
        self._events = context.events
        self._trades = context.trades
        self._backfill = context.backfill
        # Trade backfill: per trade sid, the last trade it received (or when it was
        # subscribed); per slot, where a loss began (and its cause and markets), until
        # its resubscribe asks for it, or the slot goes away.
        self._trade_marks: dict[int, int] = {}
        self._trade_loss: dict[int, tuple[int, str, tuple[str, ...]]] = {}
        # The wanted subscriptions by slot: the static plans get negative slots, the
        # subscription planner's (`apply`) its own, from 0.
        self._slots: dict[int, SubscriptionPlan] = {
            -1 - index: plan for index, plan in enumerate(plans)
        }
        self._all_markets = frozenset(s for s, plan in self._slots.items() if not plan.markets)
        self._refused_too_large: list[tuple[int, tuple[str, ...], bool, int]] = []
        # Per planner slot: the planner op that placed each wanted market.
        self._ops: dict[int, dict[str, int]] = {}
        self._gone_markets: list[tuple[int, tuple[str, ...], str]] = []
        self._later: list[SubscriptionRecord] = []
        self.start()

    @property
    def _plans(self) -> list[SubscriptionPlan]:
        return list(self._slots.values())

    def start(self) -> list[Command]:
        before = self._confirmed_before()
        if self._backfill is not None and self._trade_marks:
            self._note_trade_loss(list(self._trade_marks))  # a reconnect: trades were missed
        self._trade_marks = {}  # a loss of a slot gone meanwhile is asked at the next frame
        self._next_id = 0
        self._pending: dict[int, _Subscribe | _Unsubscribe | _Update] = {}
        self._slot_sid: dict[int, int] = {}
        self._sid_slot: dict[int, int] = {}
        self._waiting: dict[int, None] = {}
        self._unsubscribing: dict[int, _Unsubscribe] = {}
        self._dropped: set[int] = set()  # sids the exchange ended (error 25)
        self.subscriptions: dict[int, SubscriptionPlan] = {}
        self.next_seq: dict[int, int] = {}
        self._resubscribe: dict[int, None] = {}
        self._refused: list[tuple[int | None, SubscriptionPlan]] = []
        self._stopping: list[int] = []
        self._unsubscribed: set[int] = set()
        # Sids this socket held and let go (repaired or unsubscribed): the last 1024.
        self._retired: dict[int, None] = {}
        # sid -> the old position, while a mid-sequence snapshot numbered 1 leaves open
        # whether the sid goes on from there or from 2.
        self._renumbered: dict[int, int] = {}
        self._repairs: list[tuple[int, int]] = []
        self._replacing: set[int] = set()
        self._split: dict[int, int] = {}
        self._ready: dict[int, None] = {}
        self._refusals: dict[int, int] = {}
        commands = []
        for slot, plan in self._slots.items():
            was = before.get(slot)
            if not self._emptied(slot, plan):
                commands.append(self._subscribe(plan, slot=slot, before=was))
            elif was:
                # Wanted nothing more by the time of the reconnect: its markets ended.
                record = SubscriptionRecord(
                    self._conn, None, plan.channel, [], list(was), RECONNECT, 0
                )
                self._later.append(record)
        return commands

    def _confirmed_before(self) -> dict[int, tuple[str, ...]]:
        """Per slot, what the exchange had confirmed when the connection was lost (empty
        for a planner slot, or a refused one, never confirmed); none before the first."""
        if not hasattr(self, "_slot_sid"):
            return {}
        before: dict[int, tuple[str, ...]] = {s: () for s in self._slots if s >= 0}
        before.update({s: () for s, _ in self._refused if s is not None})
        for slot, sid in self._slot_sid.items():
            plan = self.subscriptions.get(sid)
            if plan is not None:
                before[slot] = plan.markets
        return before

    def _command(self, cmd: str, params: dict[str, object]) -> Command:
        self._next_id += 1
        text = json.dumps({"id": self._next_id, "cmd": cmd, "params": params})
        return Command(text, self._next_id, f"{cmd} (id {self._next_id})")

    def _subscribe(
        self,
        plan: SubscriptionPlan,
        replaces: int | None = None,
        *,
        slot: int | None = None,
        reason: str | None = None,
        retried: bool = False,
        before: tuple[str, ...] | None = None,
    ) -> Command:
        command = self._command("subscribe", subscribe_params(plan))
        self._pending[self._next_id] = _Subscribe(plan, replaces, slot, reason, retried, before)
        return command

    def on_frame(self, payload: bytes, recv_ns: int, out: list[Inbound]) -> bool:
        routed = self._router.route(payload)
        if self._trades is not None:
            self._trades.heard(self._conn, recv_ns, routed.exchange_ns)
        if routed.kind is RouteKind.CONTROL:
            self._on_control(routed, recv_ns, out)
            if self._trade_loss:
                self._ask_orphaned_losses(recv_ns)
            return True
        if self._trade_loss:
            self._ask_orphaned_losses(recv_ns)
        stats = self._stats
        gap = None
        if routed.seq is not None and routed.sid is not None:
            gap = self._check_seq(routed, routed.sid, routed.seq, recv_ns)
            if gap is not None:
                out.append(self._subjects.record(gap))
                if gap.channel == "trade" and self._backfill is not None:
                    since = self._trade_marks.get(routed.sid, recv_ns)
                    window = backfill_window(since, recv_ns, gap.markets, "gap")
                    self._backfill(self._conn, window)
        if self._trades is not None and routed.message_type == "trade" and not routed.trade_id:
            self._trades.unnamed += 1
        if routed.trade_id is not None and self._trades is not None:
            self._trades.seen(routed.trade_id, recv_ns)
            if routed.sid is not None:
                # The trades lost after this one were done after its exchange time, which
                # a reader running behind receives long after.
                stamp = routed.exchange_ns
                self._trade_marks[routed.sid] = recv_ns if stamp is None else min(recv_ns, stamp)
        stats.messages += 1
        stats.by_type[routed.message_type or "invalid"] += 1
        if routed.kind is RouteKind.UNROUTED:
            stats.unrouted += 1
            log.debug("conn %d: unrouted message (%s)", self._conn, routed.reason)
        assert routed.subject is not None
        out.append(Inbound(routed.subject, payload, recv_ns))
        if self._events is not None and routed.message_type == "market_lifecycle_v2":
            self._events(payload)
        return gap is not None  # a gap may have queued a resubscribe

    def _on_control(self, routed: Routed, recv_ns: int, out: list[Inbound]) -> None:
        """Count and log a reply; settle its command; records go in place."""
        reply = routed.envelope or {}
        kind = routed.message_type or "?"
        self._stats.control[kind] += 1
        if self._later:
            later, self._later = self._later, []
            for record in later:
                out.append(self._subjects.record(attrs.evolve(record, ts_ns=recv_ns)))
        command_id = reply.get("id")
        if kind == "error":
            log.warning(
                "conn %d: exchange error (command %s): %s", self._conn, command_id, reply.get("msg")
            )
        else:
            log.debug("conn %d: %s (command %s)", self._conn, kind, command_id)
        if kind == "unsubscribed" and self._stopping and (sid := reply_sid(reply)) is not None:
            self._unsubscribed.add(sid)  # only while stopping: nothing grows on a long run
        if kind == "error" and error_code(reply) == ERROR_BUFFER_OVERFLOW:
            # Unsolicited, even when it carries an id: no command's answer.
            self._on_dropped(reply, recv_ns, out)
            self._note_trade_loss(list(self._resubscribe), "error:25")
            return
        if not isinstance(command_id, int) or isinstance(command_id, bool):
            return
        pending = self._pending.pop(command_id, None)
        if pending is None:
            return
        if isinstance(pending, _Update) or pending.reason is not None:
            code = error_code(reply) if kind == "error" else None
            self._stats.changes["ok" if code is None else f"error:{code}"] += 1
        if isinstance(pending, _Unsubscribe):
            self._on_unsubscribe_reply(pending, reply, recv_ns, out)
            return
        if isinstance(pending, _Update):
            self._on_update_reply(pending, reply, recv_ns, out)
            return
        self._on_subscribe_reply(pending, reply, recv_ns, out)
        if pending.retried and kind != "error":
            self._on_retried_subscribe(pending, reply_sid(reply), recv_ns, out)

    def _on_subscribe_reply(
        self, pending: _Subscribe, reply: dict[str, Any], recv_ns: int, out: list[Inbound]
    ) -> None:
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
            error = json.dumps(reply.get("msg"), separators=(",", ":"))
            out.append(
                self._subjects.record(
                    SubscribeErrorRecord(
                        self._conn, plan.channel, list(plan.markets), error, recv_ns
                    )
                )
            )
            slot = pending.slot
            if slot is not None and slot >= 0 and error_code(reply) == ERROR_MARKET_LIMIT:
                # The planner splits it: this slot is gone, its markets placed anew.
                log.warning(
                    "conn %d: subscribe %s (%d markets) over the market limit; splitting",
                    self._conn,
                    plan.channel,
                    len(plan.markets),
                )
                self._slots.pop(slot, None)
                self._refused_too_large.append((slot, plan.markets, True, 0))
                return
            self._on_subscribe_refused(pending, reply, recv_ns, out)
            return
        if plan.channel == "trade" and self._backfill is not None:
            loss = self._trade_loss.pop(pending.slot, None) if pending.slot is not None else None
            if loss is not None:
                # Subscribed again after a loss: ask REST for what it missed, once.
                since, cause, _ = loss
                self._backfill(self._conn, backfill_window(since, recv_ns, plan.markets, cause))
            if new_sid is not None:
                self._trade_marks[new_sid] = recv_ns
        if new_sid is not None:
            self.subscriptions[new_sid] = plan
            # A sid number used before starts afresh.
            self.next_seq.pop(new_sid, None)
            self._renumbered.pop(new_sid, None)
            if pending.slot is not None:
                self._slot_sid[pending.slot] = new_sid
                self._sid_slot[new_sid] = pending.slot
        if pending.slot is not None:
            self._refusals.pop(pending.slot, None)
            wanted = self._slots.get(pending.slot)
            if pending.slot in self._split or (wanted is not None and wanted != plan):
                # The rest of a split subscribe, or changes applied while it was in
                # flight (a market placed back on the slot by a walk): sent now.
                self._ready[pending.slot] = None
        if pending.before is not None:
            self._on_reconnected(pending, new_sid, recv_ns, out)
        if pending.reason is not None:
            record = SubscriptionRecord(
                self._conn, new_sid, plan.channel, list(plan.markets), [], pending.reason, recv_ns
            )
            out.append(self._subjects.record(record))
        log.info(
            "conn %d: subscribed %s (%s) as sid %s",
            self._conn,
            plan.channel,
            f"{len(plan.markets)} markets" if plan.markets else "all markets",
            new_sid,
        )

    def _on_reconnected(
        self, pending: _Subscribe, sid: int | None, recv_ns: int, out: list[Inbound]
    ) -> None:
        """A reconnect subscribed what the slot wants now: what that adds to or drops from
        the slot's last confirmed sid changed coverage, and is recorded."""
        was = pending.before or ()
        now = pending.plan.markets
        had, has = set(was), set(now)
        added = [m for m in now if m not in had]
        removed = [m for m in was if m not in has]
        if added or removed:
            record = SubscriptionRecord(
                self._conn, sid, pending.plan.channel, added, removed, RECONNECT, recv_ns
            )
            out.append(self._subjects.record(record))

    def _note_trade_loss(self, sids: list[int], cause: str = "disconnect") -> None:
        """Trade sids the exchange ended or the connection lost: each one's slot, once
        subscribed again, asks for a backfill from the sid's last trade on."""
        for sid in sids:
            plan = self.subscriptions.get(sid)
            slot = self._sid_slot.get(sid)
            mark = self._trade_marks.get(sid)
            if plan is None or plan.channel != "trade" or slot is None or mark is None:
                continue
            earlier = self._trade_loss.get(slot)
            if earlier is not None and earlier[0] <= mark:
                mark, cause = earlier[0], earlier[1]
            markets = (
                tuple(dict.fromkeys((*earlier[2], *plan.markets))) if earlier else plan.markets
            )
            self._trade_loss[slot] = (mark, cause, markets)

    def _ask_orphaned_losses(self, recv_ns: int) -> None:
        """A loss whose slot went away before it was subscribed again (split by error 26,
        or removed) is asked for now, for the markets it held. Those placed on other slots
        are subscribed again within the window's margin, and the ledger drops what they
        received live."""
        assert self._backfill is not None
        for slot in [s for s in self._trade_loss if s not in self._slots]:
            since, cause, markets = self._trade_loss.pop(slot)
            self._backfill(self._conn, backfill_window(since, recv_ns, markets, cause))

    def replied(self, token: Hashable) -> bool:
        """Ids count up per socket and a command waits in `_pending` until answered, so
        nothing needs remembering once it is."""
        return isinstance(token, int) and 0 < token <= self._next_id and token not in self._pending

    def take_commands(self) -> list[Command]:
        """One gap repair at a time: unsubscribe the old sid, and once it has ended,
        subscribe the slot again; then the slots whose changes go out at once."""
        while self._repairs:
            repaired, ended_sid = self._repairs.pop(0)
            wanted = self._slots.get(repaired)
            if wanted is None or self._emptied(repaired, wanted) or repaired in self._slot_sid:
                continue
            return [self._subscribe(wanted, replaces=ended_sid, slot=repaired)]
        while self._resubscribe:
            old_sid = next(iter(self._resubscribe))
            del self._resubscribe[old_sid]
            slot = self._sid_slot.pop(old_sid, None)
            if slot is None:
                self._dropped.discard(old_sid)
                continue  # no longer wanted: its unsubscribe is under way
            self._slot_sid.pop(slot, None)
            if old_sid not in self._dropped:
                channel = self.subscriptions[old_sid].channel
                self._replacing.add(old_sid)
                return [self._unsubscribe(_Unsubscribe(old_sid, channel=channel, repair=slot))]
            self._dropped.discard(old_sid)
            self.subscriptions.pop(old_sid, None)
            self.next_seq.pop(old_sid, None)
            self._retire(old_sid)
            self._repairs.append((slot, old_sid))
            return self.take_commands()
        while self._ready:
            slot = next(iter(self._ready))
            del self._ready[slot]
            if slot in self._waiting:
                continue  # the retry sends it
            commands = self._slot_changes(slot, RETRY)
            if commands:
                return commands
        return []

    def retries_waiting(self) -> bool:
        return bool(self._refused or self._waiting or self._unsubscribing)

    def take_retries(self) -> list[Command]:
        refused, self._refused = self._refused, []
        commands = []
        for slot, plan in refused:
            if slot is not None:
                wanted = self._slots.get(slot)
                if wanted is None or self._emptied(slot, wanted) or slot in self._slot_sid:
                    continue  # removed meanwhile, or subscribed since
                size = self._split.get(slot)
                plan = SubscriptionPlan(
                    wanted.channel, wanted.markets[:size] if size else wanted.markets
                )
            commands.append(self._subscribe(plan, slot=slot, retried=True))
        return commands + self._retry_changes()

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
