"""The selected market set, kept by live events and periodic REST reconciliation.

A REST walk over thousands of pages is an interval, not a snapshot: a market that a
live event added after the walk began may be missing from its pages, and one a live
event removed may still be on them. So each market remembers when a live event last
changed it, and a walk only overrules changes older than the walk's start; a walk's
page (stamped with the walk's start) never undoes a later live event either.

Cursor pagination over a set that changes while it is read can skip a market that is
still open (the venue's offsets shift when markets before it close). So one complete
walk without a market is not enough to drop it: it is removed when `misses_to_remove`
complete walks in a row (2 by default) did not list it. A lifecycle event that ends a
market still removes it at once.

Pure bookkeeping, no I/O; times are whatever monotonic clock the caller uses (the walk
schedule, `Refresher`, reads Trio's).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import attrs
import trio


@attrs.frozen
class Diff:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


class MarketSet:
    def __init__(self, misses_to_remove: int = 2) -> None:
        if misses_to_remove < 1:
            raise ValueError(f"misses_to_remove must be at least 1, got {misses_to_remove}")
        self.misses_to_remove = misses_to_remove
        self._members: dict[str, None] = {}
        self._changed_at: dict[str, float] = {}
        # Members the last complete walks did not list: how many walks in a row.
        self._missed: dict[str, int] = {}

    def __contains__(self, market: object) -> bool:
        return market in self._members

    def __len__(self) -> int:
        return len(self._members)

    @property
    def members(self) -> frozenset[str]:
        return frozenset(self._members)

    @property
    def missed(self) -> frozenset[str]:
        """Members the last complete walk did not list, kept until the next one."""
        return frozenset(self._missed)

    def _stale(self, market: str, now: float) -> bool:
        """A live event after `now` already decided about `market`."""
        return self._changed_at.get(market, now) > now

    def live_add(self, market: str, now: float) -> bool:
        """A live event (or a walk's page, stamped with the walk's start) says the market
        is open; True when it is new to the set. Ignored when a live event after `now`
        already changed the market: a page read before a settlement does not undo it."""
        if self._stale(market, now):
            return False
        self._changed_at[market] = now
        self._missed.pop(market, None)
        if market in self._members:
            return False
        self._members[market] = None
        return True

    def live_remove(self, market: str, now: float) -> bool:
        """A live event says the market is finished; True when it was in the set."""
        if self._stale(market, now):
            return False
        self._changed_at[market] = now
        self._missed.pop(market, None)
        return self._members.pop(market, False) is None

    def settle_missed(self, looked_up: Iterable[str], still_open: Iterable[str]) -> list[str]:
        """A lookup of missed markets answered: those of `looked_up` it did not find
        open are removed now (returned); those it found open were skipped by a walk's
        paging and are no longer counted as missed. A market a live event changed since
        the walk (no longer counted as missed) is left as that event made it."""
        open_now = set(still_open)
        removed: list[str] = []
        for market in dict.fromkeys(looked_up):
            if market not in self._missed:
                continue
            del self._missed[market]
            if market not in open_now:
                del self._members[market]
                removed.append(market)
        return removed

    def reconcile(self, walked: Iterable[str], walk_started: float) -> Diff:
        """Bring the set to what a complete REST walk begun at `walk_started` saw,
        except where a live event since then knows better. A member the walk did not
        list is removed only when it is the `misses_to_remove`-th walk in a row."""
        seen = dict.fromkeys(walked)
        changed = self._changed_at
        added = [
            m
            for m in seen
            if m not in self._members and changed.get(m, walk_started) <= walk_started
        ]
        missing = [
            m
            for m in self._members
            if m not in seen and changed.get(m, walk_started) <= walk_started
        ]
        removed: list[str] = []
        missed: dict[str, int] = {}
        for market in missing:
            count = self._missed.get(market, 0) + 1
            if count >= self.misses_to_remove:
                removed.append(market)
            else:
                missed[market] = count
        self._missed = missed
        for market in added:
            self._members[market] = None
        for market in removed:
            del self._members[market]
        # What happened before this walk began is settled by it.
        self._changed_at = {m: t for m, t in changed.items() if t > walk_started}
        return Diff(tuple(added), tuple(removed))


class Refresher:
    """When the periodic walk starts: every `period` from the start of the last one
    (start to start, so a walk's own duration does not stretch the period). A walk that
    took longer than `period` is followed at once, and the schedule counts from the late
    start: no burst of catch-up walks after an outage."""

    def __init__(self, period: float) -> None:
        if period <= 0:
            raise ValueError(f"a refresh period must be positive, got {period}")
        self.period = period
        self.started: float | None = None

    def begin(self) -> float:
        """A walk starts now; returns the time."""
        self.started = trio.current_time()
        return self.started

    async def wait(self) -> None:
        """Sleep until the next walk is due (at once when none has begun)."""
        if self.started is not None:
            await trio.sleep_until(self.started + self.period)


class Catalogue:
    """Which catalogue objects (markets, events) were published already, by content.

    Fields that move with trading (prices, volume, open interest) are left out of the
    comparison, so an object is published again only when what it *is* changes.

    Markets close for good, so a long run would remember every market it ever saw:
    after each complete walk (`walk_complete`), keys that none of the last `keep_walks`
    complete walks saw are forgotten (one that comes back is published again, as when
    a run first sees it). Memory is one dict entry per key: the key and an 8-byte
    digest, about 150 bytes for a Kalshi ticker.
    """

    def __init__(self, volatile: Iterable[str] = (), *, keep_walks: int = 3) -> None:
        if keep_walks < 1:
            raise ValueError(f"keep_walks must be at least 1, got {keep_walks}")
        self._volatile = frozenset(volatile)
        self.keep_walks = keep_walks
        # The digests by the walk that last saw their key, oldest first; the last one
        # is the walk under way.
        self._generations: list[dict[str, int]] = [{}]

    def __len__(self) -> int:
        return sum(len(generation) for generation in self._generations)

    def __contains__(self, key: object) -> bool:
        return any(key in generation for generation in self._generations)

    def _digest(self, obj: Mapping[str, object]) -> int:
        stable = sorted((k, repr(v)) for k, v in obj.items() if k not in self._volatile)
        digest = hashlib.blake2b(repr(stable).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    def changed(self, key: str, obj: Mapping[str, object]) -> bool:
        """True (and remembered) when `obj` is new or differs from the last one seen."""
        digest = self._digest(obj)
        current = self._generations[-1]
        previous = current.get(key)
        if previous is None:
            for generation in self._generations[-2::-1]:
                previous = generation.pop(key, None)
                if previous is not None:
                    break
        current[key] = digest
        return previous != digest

    def walk_complete(self) -> None:
        """A complete walk ended: forget the keys the last `keep_walks` walks missed."""
        self._generations.append({})
        del self._generations[: -1 - self.keep_walks]
