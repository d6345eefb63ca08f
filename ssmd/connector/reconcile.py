"""The selected market set, kept by live events and periodic REST reconciliation.

A REST walk over thousands of pages is an interval, not a snapshot: a market that a
live event added after the walk began may be missing from its pages, and one a live
event removed may still be on them. So each market remembers when a live event last
changed it, and a walk only overrules changes older than the walk's start.

Pure bookkeeping, no I/O; times are whatever monotonic clock the caller uses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import attrs


@attrs.frozen
class Diff:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


class MarketSet:
    def __init__(self) -> None:
        self._members: dict[str, None] = {}
        self._changed_at: dict[str, float] = {}

    def __contains__(self, market: object) -> bool:
        return market in self._members

    def __len__(self) -> int:
        return len(self._members)

    @property
    def members(self) -> frozenset[str]:
        return frozenset(self._members)

    def live_add(self, market: str, now: float) -> bool:
        """A live event says the market is open; True when it is new to the set."""
        self._changed_at[market] = now
        if market in self._members:
            return False
        self._members[market] = None
        return True

    def live_remove(self, market: str, now: float) -> bool:
        """A live event says the market is finished; True when it was in the set."""
        self._changed_at[market] = now
        return self._members.pop(market, False) is None

    def reconcile(self, walked: Iterable[str], walk_started: float) -> Diff:
        """Bring the set to what a REST walk begun at `walk_started` saw, except where
        a live event since then knows better."""
        seen = dict.fromkeys(walked)
        changed = self._changed_at
        added = [
            m
            for m in seen
            if m not in self._members and changed.get(m, walk_started) <= walk_started
        ]
        removed = [
            m
            for m in self._members
            if m not in seen and changed.get(m, walk_started) <= walk_started
        ]
        for market in added:
            self._members[market] = None
        for market in removed:
            del self._members[market]
        # What happened before this walk began is settled by it.
        self._changed_at = {m: t for m, t in changed.items() if t > walk_started}
        return Diff(tuple(added), tuple(removed))


class Catalogue:
    """Which catalogue objects (markets, events) were published already, by content.

    Fields that move with trading (prices, volume, open interest) are left out of the
    comparison, so an object is published again only when what it *is* changes.
    """

    def __init__(self, volatile: Iterable[str] = ()) -> None:
        self._volatile = frozenset(volatile)
        self._digests: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._digests)

    def _digest(self, obj: Mapping[str, object]) -> bytes:
        stable = sorted((k, repr(v)) for k, v in obj.items() if k not in self._volatile)
        return hashlib.blake2b(repr(stable).encode(), digest_size=16).digest()

    def changed(self, key: str, obj: Mapping[str, object]) -> bool:
        """True (and remembered) when `obj` is new or differs from the last one seen."""
        digest = self._digest(obj)
        if self._digests.get(key) == digest:
            return False
        self._digests[key] = digest
        return True
