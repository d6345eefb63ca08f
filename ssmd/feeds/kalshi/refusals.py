"""Refused adds and subscribes on a Kalshi connection, beyond 25/26: markets the exchange
does not know (14/16) and refusals it gives no reason to retry.

- An error naming one of the command's markets drops that market, and the rest of the
  command goes out at once (not at the retry); one naming none, on a command of several
  markets, splits the command in halves (sent at once), so only a market refused alone
  is dropped.
- Any other refusal but 18/27 is counted per slot: after REFUSALS_TO_SPLIT (at once for
  a "client bug" code) the command is split likewise, and a market refused alone dropped.
- A dropped market leaves the wanted set with a `ssmd.subscription` record (reason
  `error:<code>`) and is handed to the planner (`take_dropped`), which forgets it, so the
  next reconciliation places it again if REST still lists it.

A mixin of `KalshiSession` (through `LiveChanges`), which owns the state declared here.
"""

from __future__ import annotations

import logging
from typing import Any

from ssmd.connector.publisher import Inbound
from ssmd.connector.records import SubscriptionRecord
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds.kalshi.drops import Drops
from ssmd.feeds.kalshi.replies import (
    CLIENT_BUG_ERRORS,
    OMITTED,
    REFUSALS_TO_SPLIT,
    RETRY_ERRORS,
    SID_ENDED_ERRORS,
    UNKNOWN_MARKET_ERRORS,
    _Subscribe,
    error_code,
    error_markets,
)

log = logging.getLogger("ssmd.connector.connection")


class Refusals(Drops):
    _slots: dict[int, SubscriptionPlan]
    _refused: list[tuple[int | None, SubscriptionPlan]]
    _waiting: dict[int, None]
    # (slot, markets, reason) dropped since the planner last asked (planner slots only).
    _gone_markets: list[tuple[int, tuple[str, ...], str]]
    # Per slot: the size its adds (or its subscribe) are cut to while a refusal is split.
    _split: dict[int, int]
    # Slots whose difference between wanted and confirmed goes out now, not at the retry.
    _ready: dict[int, None]
    _refusals: dict[int, int]  # per slot: refusals in a row of an unclassified code
    _all_markets: frozenset[int]  # static slots subscribed with no market list

    def _emptied(self, slot: int | None, plan: SubscriptionPlan) -> bool:
        """A market-scoped slot left with no market: never subscribed (an empty list
        would be refused, or taken as every market)."""
        return not plan.markets and slot not in self._all_markets

    def _record(self, out: list[Inbound], record: SubscriptionRecord) -> None:
        out.append(self._subjects.record(record))

    def take_dropped(self) -> list[tuple[int, tuple[str, ...], str]]:
        """(slot, markets, reason): markets the exchange would not take on a planner slot
        (errors 14/16, or refused alone too often), since last asked."""
        gone, self._gone_markets = self._gone_markets, []
        return gone

    def _drop_markets(
        self,
        slot: int | None,
        channel: str,
        sid: int | None,
        markets: tuple[str, ...],
        code: int | None,
        recv_ns: int,
        out: list[Inbound],
    ) -> None:
        """The exchange will not take these markets: out of the wanted set (and the
        confirmed one), with a record (reason `error:<code>`, `omitted` when an `ok`
        kept leaving them out), and handed to the planner."""
        reason = f"error:{code}" if code is not None else OMITTED
        log.warning(
            "conn %d: the exchange will not take %s on %s (error %s); no longer wanted",
            self._conn,
            ", ".join(markets),
            channel,
            code,
        )
        unknown = set(markets)
        wanted = self._slots.get(slot) if slot is not None else None
        if slot is not None and wanted is not None:
            kept = tuple(m for m in wanted.markets if m not in unknown)
            self._slots[slot] = SubscriptionPlan(wanted.channel, kept)
        confirmed = self.subscriptions.get(sid) if sid is not None else None
        if sid is not None and confirmed is not None:
            kept = tuple(m for m in confirmed.markets if m not in unknown)
            self.subscriptions[sid] = SubscriptionPlan(confirmed.channel, kept)
        self._record(
            out, SubscriptionRecord(self._conn, sid, channel, [], list(markets), reason, recv_ns)
        )
        if slot is not None and slot >= 0:
            self._gone_markets.append((slot, markets, reason))

    def _split_refusal(self, slot: int, markets: tuple[str, ...]) -> None:
        """Send the slot's missing markets in halves of the refused command, now."""
        self._split[slot] = max(1, len(markets) // 2)
        self._ready[slot] = None

    def _on_add_refused(
        self,
        slot: int,
        channel: str,
        sid: int | None,
        markets: tuple[str, ...],
        reply: dict[str, Any],
        recv_ns: int,
        out: list[Inbound],
    ) -> bool:
        """An add (or a subscribe) of `markets` refused with a code other than 7/10/17/25/26:
        True when handled here (markets dropped or the command split), False when the
        slot's changes are to wait for the retry."""
        code = error_code(reply)
        if not markets or code in RETRY_ERRORS or code in SID_ENDED_ERRORS:
            return False
        if code in UNKNOWN_MARKET_ERRORS:
            unknown = error_markets(reply, markets)
            if not unknown:
                self._split_refusal(slot, markets)
                return True
            self._drop_markets(slot, channel, sid, unknown, code, recv_ns, out)
            self._refusals.pop(slot, None)
            # The rest goes out now, as the slot's wanted set less the dropped markets:
            # waiting for the retry would let the next walk place a dropped market back
            # on the slot first, and the retry send it again, refused again, forever.
            self._ready[slot] = None
            return True
        tries = self._refusals.get(slot, 0) + 1
        if tries < (1 if code in CLIENT_BUG_ERRORS else REFUSALS_TO_SPLIT):
            self._refusals[slot] = tries
            return False
        self._refusals.pop(slot, None)
        if len(markets) > 1:
            self._split_refusal(slot, markets)
        else:
            self._drop_markets(slot, channel, sid, markets, code, recv_ns, out)
            self._ready[slot] = None
        return True

    def _on_subscribe_refused(
        self, pending: _Subscribe, reply: dict[str, Any], recv_ns: int, out: list[Inbound]
    ) -> None:
        """A refused subscribe other than 26: retried with the slot's wanted set then, less
        any market dropped (14/16, or refused alone too often), or split."""
        plan, slot = pending.plan, pending.slot
        if slot is not None and self._on_add_refused(
            slot, plan.channel, None, plan.markets, reply, recv_ns, out
        ):
            return
        if slot is not None:
            wanted = self._slots.get(slot)
            if wanted is not None and self._emptied(slot, wanted):
                return  # nothing left to subscribe: a later add subscribes afresh
        log.error(
            "conn %d: subscribe %s (%d markets) refused: %s; will retry",
            self._conn,
            plan.channel,
            len(plan.markets),
            reply.get("msg"),
        )
        self._refused.append((slot, plan))

    def _on_add_omitted(
        self,
        slot: int,
        channel: str,
        sid: int,
        markets: tuple[str, ...],
        recv_ns: int,
        out: list[Inbound],
    ) -> None:
        """An `ok` whose market list lacks markets the add named: taken without a word
        about them. Sent again at the retry; left out REFUSALS_TO_SPLIT times in a row,
        they are dropped like a market the exchange does not know."""
        tries = self._refusals.get(slot, 0) + 1
        log.warning(
            "conn %d: add to sid %d left out %s (%d times); will retry",
            self._conn,
            sid,
            ", ".join(markets),
            tries,
        )
        if tries < REFUSALS_TO_SPLIT:
            self._refusals[slot] = tries
            self._waiting[slot] = None
            return
        self._refusals.pop(slot, None)
        self._drop_markets(slot, channel, sid, markets, None, recv_ns, out)
