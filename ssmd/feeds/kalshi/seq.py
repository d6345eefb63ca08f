"""Kalshi's `seq` per sid: each data message's, and an `update_subscription` `ok`
reply's. A jump is a gap: recorded, and on a channel whose subscription starts with a
snapshot (SNAPSHOT_CHANNELS) the sid is queued for its repair.

A mixin of `KalshiSession`, which owns the state declared here.
"""

from __future__ import annotations

import logging

from ssmd.connector.publisher import Inbound
from ssmd.connector.records import GapRecord
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds.base import ConnectionStats, Subjects
from ssmd.feeds.kalshi.routing import Routed

log = logging.getLogger("ssmd.connector.connection")

# Channels whose gaps a fresh subscription repairs (it starts with a snapshot).
SNAPSHOT_CHANNELS = frozenset({"orderbook_delta"})


class SeqCheck:
    _conn: int
    _stats: ConnectionStats
    _subjects: Subjects
    _resubscribe: dict[int, None]
    # sid -> the old position, while a mid-sequence snapshot numbered 1 leaves open
    # whether the sid goes on from there or from 2.
    _renumbered: dict[int, int]
    subscriptions: dict[int, SubscriptionPlan]
    next_seq: dict[int, int]

    def _ok_position(self, sid: int, seq: int, recv_ns: int, out: list[Inbound]) -> None:
        """An `ok` reply's `seq`: the sid's position (kalshi-ws.md: next is `seq + 1`), or
        a number the `ok` took itself. Either is no gap; a position past that is one
        (recorded, and repaired on a snapshot channel); one behind what was already seen
        never moves the sid back."""
        expected = self.next_seq.get(sid)
        if expected is None or seq == expected - 1 or seq == expected:
            self.next_seq[sid] = seq + 1 if expected is None else max(expected, seq + 1)
            return
        if seq < expected:
            return
        self.next_seq[sid] = seq + 1
        plan = self.subscriptions.get(sid)
        self._stats.gap("seq")
        log.warning(
            "conn %d: exchange gap on sid %d: expected seq %d, the ok reply says %d",
            self._conn,
            sid,
            expected,
            seq,
        )
        if plan is not None and plan.channel in SNAPSHOT_CHANNELS:
            self._resubscribe.setdefault(sid, None)
        channel = plan.channel if plan is not None else None
        markets = list(plan.markets) if plan is not None else []
        out.append(
            self._subjects.record(
                GapRecord(self._conn, sid, channel, expected, seq, markets, recv_ns)
            )
        )

    def _check_seq(self, routed: Routed, sid: int, seq: int, recv_ns: int) -> GapRecord | None:
        """Track `seq` per sid; on a jump, schedule a resubscribe and give a gap record."""
        expected = self.next_seq.get(sid)
        if expected is None or seq == expected:
            self.next_seq[sid] = seq + 1
            if self._renumbered:
                self._renumbered.pop(sid, None)
            return None
        if seq == 1 and routed.message_type == "orderbook_snapshot":
            # Some feeds number each market's snapshot from 1 within a shared sid; the
            # reference has a sid's messages counted on past it. The next message says
            # which: the old position stays good, and 2 is taken too.
            self._renumbered[sid] = self._renumbered.get(sid, expected)
            self.next_seq[sid] = 2
            return None
        renumbered = self._renumbered.pop(sid, None) if self._renumbered else None
        if renumbered is not None and seq == renumbered:
            self.next_seq[sid] = seq + 1
            return None
        if renumbered is not None:
            expected = renumbered
        self.next_seq[sid] = seq + 1
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
