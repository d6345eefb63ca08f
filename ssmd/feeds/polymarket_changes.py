"""Polymarket's live subscription changes on one connection (the `DynamicSession` part
of `PolymarketSession`).

The planner places condition ids in slots; the session subscribes their token ids with
`{"assets_ids": [...], "operation": "subscribe"}` and ends them with `"operation":
"unsubscribe"`. Polymarket answers neither: a subscribe is evidenced by the `book` per
token that follows (a token without one is handled like any other: `subscribe_error`,
then a retry), an unsubscribe by nothing. So each change is an `ssmd.subscription` record
(`sid` null, `added`/`removed` the condition ids) placed before the first frame read
after the command went out: the archive says there when each market's capture began and
ended. The wanted slots survive reconnects: `start()` subscribes them again.

A mixin: `PolymarketSession` owns the state declared here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from ssmd.connector.layout import AddMarkets, DeleteMarkets, Subscribe, Unsubscribe
from ssmd.connector.publisher import Inbound
from ssmd.connector.records import SubscriptionRecord
from ssmd.feeds.base import Change, Command, ConnectionStats, Subjects

log = logging.getLogger("ssmd.connector.polymarket")

CHANNEL = "market"


class LiveAssets:
    """State shared with `PolymarketSession`, which sets it up in `__init__`/`start`."""

    _conn: int
    _stats: ConnectionStats
    _subjects: Subjects
    _keepalives: int
    _awaiting: dict[str, int]
    _missing: list[str]
    _refused: list[str]
    _unit_source: Callable[[str], tuple[str, ...]]
    # Planner slot -> condition id -> its token ids, as wanted now.
    _slots: dict[int, dict[str, tuple[str, ...]]]
    # Changes sent and not yet recorded: (added, removed, reason).
    _noted: list[tuple[list[str], list[str], str]]

    def apply(self, change: Change) -> Command | None:
        action = change.action
        if isinstance(action, Subscribe | AddMarkets):
            slot = self._slots.setdefault(action.slot, {})
            added: list[str] = []
            tokens: list[str] = []
            for market in action.markets:
                units = self._unit_source(market)
                if market in slot or not units:
                    continue
                slot[market] = units
                added.append(market)
                tokens += units
            if not tokens:
                return None
            self._awaiting.update(dict.fromkeys(tokens, self._keepalives))
            self._noted.append((added, [], change.reason))
            return self._operation("subscribe", tokens, added)
        if isinstance(action, DeleteMarkets | Unsubscribe):
            held = self._slots.get(action.slot, {})
            markets = action.markets if isinstance(action, DeleteMarkets) else tuple(held)
            removed = [m for m in markets if m in held]
            tokens = [t for m in removed for t in held.pop(m)]
            if isinstance(action, Unsubscribe) or not held:
                self._slots.pop(action.slot, None)
            if not tokens:
                return None
            gone = set(tokens)
            for token in tokens:
                self._awaiting.pop(token, None)
            self._missing = [t for t in self._missing if t not in gone]
            self._refused = [t for t in self._refused if t not in gone]
            self._noted.append(([], removed, change.reason))
            return self._operation("unsubscribe", tokens, removed)
        return None

    def _operation(self, operation: str, tokens: list[str], markets: list[str]) -> Command:
        self._stats.changes["sent"] += 1
        message = {"assets_ids": tokens, "operation": operation, "custom_feature_enabled": True}
        return Command(
            json.dumps(message), None, f"{operation} {len(tokens)} assets ({len(markets)} markets)"
        )

    def _record_changes(self, recv_ns: int, out: list[Inbound]) -> None:
        noted, self._noted = self._noted, []
        for added, removed, reason in noted:
            record = SubscriptionRecord(self._conn, None, CHANNEL, added, removed, reason, recv_ns)
            out.append(self._subjects.record(record))

    def slot_assets(self) -> list[str]:
        return [t for slot in self._slots.values() for units in slot.values() for t in units]

    def take_refused(self) -> list[tuple[int, tuple[str, ...], bool, int]]:
        return []  # Polymarket refuses nothing: a missing book is retried by the session

    def sid_markets(self) -> dict[int, tuple[str, int]]:
        """Markets per planner slot (Polymarket has no subscription ids)."""
        return {slot: (CHANNEL, len(markets)) for slot, markets in self._slots.items() if markets}
