"""Error 25 on a Kalshi connection: the exchange dropped a subscription because this
reader fell behind. A real loss: a `gap` record (reason `error:25`), then a fresh
subscription of the same markets, once per sid however many 25s arrive.

A mixin of `KalshiSession`, which owns the state declared here.
"""

from __future__ import annotations

import logging
from typing import Any

from ssmd.connector.publisher import Inbound
from ssmd.connector.records import GapRecord
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds.base import ConnectionStats, Subjects
from ssmd.feeds.kalshi.replies import ERROR_BUFFER_OVERFLOW, ERROR_UNKNOWN_SID, RETIRED_SIDS

log = logging.getLogger("ssmd.connector.connection")


class Drops:
    _conn: int
    _stats: ConnectionStats
    _subjects: Subjects
    _dropped: set[int]  # sids the exchange ended (a 25 naming them)
    _resubscribe: dict[int, None]  # sids whose repair is queued
    _retired: dict[int, None]
    _replacing: set[int]  # sids whose repair's unsubscribe is under way
    _renumbered: dict[int, int]
    subscriptions: dict[int, SubscriptionPlan]
    next_seq: dict[int, int]

    def _retire(self, sid: int) -> None:
        """Remember a sid let go, so an error 25 naming it is not taken for one naming no
        sid we know (which would repair every subscription); the last RETIRED_SIDS."""
        self._retired[sid] = None
        self._replacing.discard(sid)
        self._renumbered.pop(sid, None)
        if len(self._retired) > RETIRED_SIDS:
            del self._retired[next(iter(self._retired))]

    def _on_dropped(self, reply: dict[str, Any], recv_ns: int, out: list[Inbound]) -> None:
        """Error 25: the exchange dropped a subscription because this reader fell behind.
        Its data is lost: a gap record, then a fresh subscription of the same markets."""
        body = reply.get("msg")
        sid = reply.get("sid")
        if sid is None and isinstance(body, dict):
            sid = body.get("sid")
        plan = self.subscriptions.get(sid) if isinstance(sid, int) else None
        if isinstance(sid, int) and sid in self._replacing:
            return  # its gap is recorded; its replacement waits for its end
        if plan is None and isinstance(sid, int) and sid in self._retired:
            return  # let go already (a repair replaces it, or it was unsubscribed)
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
            # again, so one still running is not doubled. One already queued for its
            # repair is repaired once, with one gap record.
            for held_sid, held in list(self.subscriptions.items()):
                if held_sid in self._replacing:
                    continue  # its replacement, subscribed once it ends, starts afresh
                if held_sid not in self._dropped and held_sid not in self._resubscribe:
                    self._drop_sid(held_sid, held, recv_ns, out, ended=False)
            return
        if sid in self._resubscribe:
            # Its gap is recorded and its repair queued: now known ended, so the repair
            # does not unsubscribe it.
            self._dropped.add(sid)
            return
        self._drop_sid(sid, plan, recv_ns, out)

    def _on_sid_ended(self, sid: int, code: int, recv_ns: int, out: list[Inbound]) -> None:
        """A command on `sid` was answered 7, 10 or 17: the sid no longer runs (7), or is
        dead by the reference (10, 17) though that is not proven: what it carried since
        may be lost, as after a 25. After a 10 or 17 the repair unsubscribes it first, so
        a sid still streaming is not doubled by its replacement."""
        plan = self.subscriptions.get(sid)
        if plan is None or sid in self._replacing:
            return
        ended = code == ERROR_UNKNOWN_SID
        if sid in self._resubscribe:
            if ended:
                self._dropped.add(sid)  # its gap is recorded and its repair queued
            return
        self._drop_sid(sid, plan, recv_ns, out, ended=ended, code=code)

    def _drop_sid(
        self,
        sid: int,
        plan: SubscriptionPlan,
        recv_ns: int,
        out: list[Inbound],
        *,
        ended: bool = True,
        code: int = ERROR_BUFFER_OVERFLOW,
    ) -> None:
        reason = f"error:{code}"
        self._stats.gap(reason)
        position = self.next_seq.get(sid, 0)
        log.warning(
            "conn %d: the exchange dropped sid %d (%s, error %d); resubscribing",
            self._conn,
            sid,
            plan.channel,
            code,
        )
        gap = GapRecord(
            self._conn, sid, plan.channel, position, position, list(plan.markets), recv_ns, reason
        )
        out.append(self._subjects.record(gap))
        if ended:
            self._dropped.add(sid)
        self._resubscribe[sid] = None
