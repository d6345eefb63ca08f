"""Market discovery on a running connector: REST walks, live events, live changes.

A producer task beside the connections, venue-neutral: what to ask REST, which objects
are wanted markets, what they are subscribed by and what a live event changes come from
the venue's `DiscoverySource` (`ssmd.feeds.discovery`; Kalshi and Polymarket). It walks
the venue's open markets over REST (at start, then every `refresh`), follows the live
events the sessions hand it (`SessionContext.events`, a bounded memory channel: the hot
path never waits for it), and turns what changed into subscription planner actions
(`SubscriptionLayout`) that it gives to the connections (`Connection.change`), opening
new connections when the planner asks. Each REST market (and Kalshi event) object goes
into the archive as a catalogue record when first seen in the run and whenever what it
is changes.

The planner places market keys (a Kalshi ticker, a Polymarket condition id); a session
subscribes their units (the ticker; the market's token ids), which `units_of` gives.

A REST outage pauses discovery (the client retries forever); the connections keep
recording what they have. Nothing is kept across restarts: a restart walks again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

import attrs
import trio

from ssmd.backoff import Backoff
from ssmd.clock import WallClock
from ssmd.connector.backfill import TradeBackfill
from ssmd.connector.connection import Connection
from ssmd.connector.layout import Action, OpenConnection, SubscriptionLayout
from ssmd.connector.metrics import discovery_metrics
from ssmd.connector.publisher import Inbound
from ssmd.connector.reconcile import Catalogue, MarketSet, Refresher
from ssmd.connector.rest import RestClient, RestRefused
from ssmd.feeds.base import Change, Subjects
from ssmd.feeds.discovery import ConfirmsMarkets, DiscoverySource, Walk

__all__ = ["Discovery", "DiscoveryStats"]

log = logging.getLogger("ssmd.connector.discovery")

EVENT_QUEUE = 10_000
# The first retry of a failed walk (doubling up to `refresh`).
WALK_RETRY_S = 5.0

OpenConnectionFn = Callable[[int, trio.MemorySendChannel[list[Inbound]]], Connection]


@attrs.define
class DiscoveryStats:
    walks: int = 0
    last_reconcile_ns: int = 0
    known: int = 0  # open markets on the exchange in the last walk (every selected walk)
    lifecycle_events: int = 0
    lifecycle_dropped: int = 0
    catalogue_markets: int = 0
    catalogue_events: int = 0
    changes: int = 0  # planner actions given to connections
    overran: int = 0  # walks that took longer than `refresh`


def without(obj: dict[str, Any], volatile: frozenset[str]) -> dict[str, Any]:
    """`obj` without the `volatile` keys at any depth: a Gamma market embeds its events,
    whose volume and liquidity move with trading as the market's own do."""

    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in volatile}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return {k: strip(v) for k, v in obj.items() if k not in volatile}


class Discovery:
    def __init__(
        self,
        *,
        source: DiscoverySource,
        layout: SubscriptionLayout | None,
        rest: RestClient,
        subjects: Subjects,
        clock: WallClock,
        refresh: float,
        connections: list[Connection],
        open_connection: OpenConnectionFn,
        static_markets: Iterable[str] = (),
        backfill: TradeBackfill | None = None,
    ) -> None:
        self.source = source
        self.layout = layout
        self.rest = rest
        self.subjects = subjects
        self.clock = clock
        self.refresh = refresh
        self.connections = connections
        self._open_connection = open_connection
        self.static = frozenset(static_markets)
        self._static_retry: set[str] = set()  # static markets the exchange refused
        # Static markets whose units a walk must find first (Polymarket token ids).
        self._unresolved = set(self.static) if source.static_walks(sorted(self.static)) else set()
        self.markets = MarketSet()
        # Subscription units of markets whose units are not their key.
        self._units: dict[str, tuple[str, ...]] = {}
        self.market_catalogue = Catalogue(source.volatile_fields)
        self.event_catalogue = Catalogue()
        self.stats = DiscoveryStats()
        self._events_send, self._events = trio.open_memory_channel[bytes](EVENT_QUEUE)
        self.backfill = backfill
        self._send: trio.MemorySendChannel[list[Inbound]] | None = None
        self.refused: str | None = None
        self.static_refused: str | None = None
        self.unknown_static: list[str] = []  # static markets REST does not know
        for connection in connections:
            connection.on_refused = self.on_refused
            connection.on_dropped = self.on_dropped

    # Called from the connections' tasks; never block.

    def on_event(self, payload: bytes) -> None:
        try:
            self._events_send.send_nowait(payload)
        except trio.WouldBlock:
            # The next reconciliation catches up on what this event said.
            self.stats.lifecycle_dropped += 1

    def on_refused(
        self, conn: int, slot: int, markets: tuple[str, ...], dropped: bool, op: int
    ) -> None:
        if self.layout is not None:
            actions = self.layout.refused_as_too_large(slot, markets, dropped=dropped, op=op)
            self._dispatch(actions, "error:26")

    def on_dropped(self, conn: int, slot: int, markets: tuple[str, ...], reason: str) -> None:
        """A session dropped markets the exchange would not take on `slot` (Kalshi 14/16):
        the planner takes them off every channel and the selected set forgets them, so
        the next REST walk (one begun after now) places them again if it still lists
        them: one more try per refresh, never a loop."""
        if self.layout is None or slot not in self.layout.slots():
            return
        held = set(self.layout.subscription(slot)[2])
        gone = [m for m in markets if m in held]  # not ones moved elsewhere since
        if not gone:
            return
        now = trio.current_time()
        for market in gone:
            if market in self.static:
                # Configured by hand: no walk need list it, so it is tried again after
                # the next complete walk whatever the selection.
                self._static_retry.add(market)
            else:
                self.markets.live_remove(market, now)
        log.warning(
            "discovery: %d markets refused on conn %d (%s); retried at the next refresh",
            len(gone),
            conn,
            reason,
        )
        self._dispatch(self.layout.remove(gone), reason)

    # The planner's actions, to the connections they are for.

    def _connection(self, conn: int) -> Connection:
        for connection in self.connections:
            if connection.index == conn:
                return connection
        assert self._send is not None
        connection = self._open_connection(conn, self._send.clone())
        connection.on_refused = self.on_refused
        connection.on_dropped = self.on_dropped
        self.connections.append(connection)
        log.info("discovery: opened connection %d", conn)
        return connection

    def _dispatch(self, actions: Sequence[Action], reason: str) -> None:
        for action in actions:
            connection = self._connection(action.conn)
            if not isinstance(action, OpenConnection):
                connection.change([Change(action, reason)])
                self.stats.changes += 1

    def add(self, markets: Sequence[str], reason: str) -> None:
        if self.layout is not None and markets:
            self._dispatch(self.layout.add(markets), reason)

    def remove(self, markets: Sequence[str], reason: str) -> None:
        gone = [m for m in markets if m not in self.static]
        if self.layout is not None and gone:
            self._dispatch(self.layout.remove(gone), reason)

    def _forget_units(self) -> None:
        """Drop the units of markets no longer followed (kept until now: a change queued
        on a connection that is down may still need them; a refresh is long after)."""
        placed = self.layout.markets if self.layout is not None else frozenset()
        self._units = {
            m: u
            for m, u in self._units.items()
            if m in self.markets or m in self.static or m in placed
        }

    def units_of(self, market: str) -> tuple[str, ...]:
        """What a session subscribes for a placed market: its units, or the key itself
        where that is the unit. A change queued for a market whose units were since
        forgotten subscribes nothing (never a condition id as a token)."""
        return self._units.get(market, (market,) if self.source.key_is_unit else ())

    def _learn_units(self, market: str, units: Sequence[str]) -> bool:
        """Remember a market's units (a walk's word wins over a live event's); False when
        it has none (it cannot be subscribed). A placed market whose units changed is
        subscribed again with the new ones."""
        if not units:
            return False
        known = self._units.get(market)
        if tuple(units) != (market,):
            self._units[market] = tuple(units)
        layout = self.layout
        if layout is None or known is None or known == tuple(units):
            return True
        if market in layout.markets:
            log.warning(
                "discovery: %s is subscribed by %d unit(s), REST lists %d; resubscribing",
                market,
                len(known),
                len(units),
            )
            self._dispatch(layout.remove([market]), "reconcile")
            self._dispatch(layout.add([market]), "reconcile")
        return True

    # The task.

    async def run(
        self,
        send: trio.MemorySendChannel[list[Inbound]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with send, self.rest:
            self._send = send
            self.add(sorted(self.static - self._unresolved), "static")
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow_events)
                if self._unresolved:
                    nursery.start_soon(self._resolve_static_until_done)
                if self.backfill is not None:
                    nursery.start_soon(self.backfill.run, send.clone())
                reason = "discovery"
                refresher = Refresher(self.refresh)
                retry = Backoff(min(WALK_RETRY_S, self.refresh), self.refresh).retry()
                while True:
                    started = refresher.begin()
                    try:
                        await self.walk(reason)
                    except RestRefused as exc:
                        # Bad credentials or parameters, or pages that are not what was
                        # asked for: recording goes on, the alert and /ready say why, and
                        # the walk is tried again, sooner than a refresh, with backoff.
                        self.refused = str(exc)
                        log.error("discovery: REST walk refused: %s", exc)
                        await trio.sleep(retry.next_delay())
                        continue
                    reason = "reconcile"
                    retry.reset()
                    took = trio.current_time() - started
                    if took >= self.refresh:
                        self.stats.overran += 1
                        log.warning(
                            "discovery: a REST walk took %.0fs, longer than refresh (%.0fs): "
                            "walks run back to back, and backfill gets only its share of "
                            "the REST budget",
                            took,
                            self.refresh,
                        )
                    await refresher.wait()

    async def _follow_events(self) -> None:
        async for payload in self._events:
            try:
                envelope = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(envelope, dict):
                continue
            change = self.source.live_change(envelope)
            if change is None:
                continue
            self.stats.lifecycle_events += 1
            now = trio.current_time()
            if change.add:
                if change.units and change.market not in self._units:
                    self._learn_units(change.market, change.units)
                if self.markets.live_add(change.market, now):
                    self.add([change.market], change.reason)
            elif self.markets.live_remove(change.market, now):
                self.remove([change.market], change.reason)

    async def walk(self, reason: str) -> None:
        """One full REST walk: catalogue records, and the selected set brought up to
        date. Markets are added page by page; removals wait for the whole walk."""
        started = trio.current_time()
        source = self.source
        walked: list[str] = []
        known = 0
        for walk in source.market_walks():
            async for page in self._pages(walk):
                fresh: list[str] = []
                records: list[Inbound] = []
                for market in page:
                    key = source.market_key(market)
                    if key is None:
                        continue
                    known += 1
                    if source.catalogued(market):
                        self._catalogue(
                            walk.type_token, key, market, self.market_catalogue, records
                        )
                    if source.wants(market) and self._learn_units(key, source.units(market)):
                        walked.append(key)
                        # Stamped with the walk's start: the walk's word on it stands.
                        if self.markets.live_add(key, started):
                            fresh.append(key)
                self.stats.catalogue_markets += len(records)
                # Placed before the publish's await: a live event that ends one of them
                # meanwhile then finds it placed, and its removal takes it off.
                self.add(fresh, reason)
                await self._publish(records)
        diff = self.markets.reconcile(walked, started)
        retry, self._static_retry = sorted(self._static_retry), set()
        self.add(retry, "retry")
        self.market_catalogue.walk_complete()
        self.remove(list(diff.removed), reason)
        self.add(list(diff.added), reason)
        await self._confirm_missed(reason)
        self._sweep(reason)
        self.stats.known = known
        self.stats.walks += 1
        self.stats.last_reconcile_ns = self.clock.now_ns()
        self.refused = None
        self._forget_units()
        for walk in source.catalogue_walks():
            async for page in self._pages(walk):
                records = []
                for obj in page:
                    key = obj.get(walk.key_field)
                    if isinstance(key, str) and key:
                        self._catalogue(walk.type_token, key, obj, self.event_catalogue, records)
                self.stats.catalogue_events += len(records)
                await self._publish(records)
        self.event_catalogue.walk_complete()
        log.info(
            "discovery (%s): %d open markets, %d selected, %d on subscriptions",
            reason,
            known,
            len(self.markets),
            len(self.layout.markets) if self.layout is not None else 0,
        )

    async def _confirm_missed(self, reason: str) -> None:
        """Look up the markets this walk missed for the first time (one batched request
        per `confirm_walks` walk): one the venue no longer lists as open goes at once,
        one still open was skipped by the walk's paging and stays. Without a lookup, or
        when it fails, a miss waits for the next walk (the two-miss rule)."""
        missed = sorted(self.markets.missed - self.static)
        if not missed or not isinstance(self.source, ConfirmsMarkets):
            return
        still_open: list[str] = []
        try:
            for walk in self.source.confirm_walks(missed):
                async for page in self._pages(walk):
                    for market in page:
                        key = self.source.market_key(market)
                        if key is not None and self.source.wants(market):
                            still_open.append(key)
        except RestRefused as exc:
            log.warning(
                "discovery: could not look up %d market(s) the walk missed (%s); "
                "they go if the next walk misses them too",
                len(missed),
                exc,
            )
            return
        closed = self.markets.settle_missed(missed, still_open)
        self.remove(closed, reason)

    def _sweep(self, reason: str) -> None:
        """Take off any subscription a market that is neither selected nor static (none
        should be: this keeps the rule against any ordering of events and walks)."""
        if self.layout is None:
            return
        stray = sorted(self.layout.markets - self.markets.members - self.static)
        if stray:
            log.warning(
                "discovery: %d market(s) on a subscription but not selected, removed: %s",
                len(stray),
                ", ".join(stray[:5]),
            )
            self.remove(stray, reason)

    def _pages(self, walk: Walk) -> AsyncIterator[list[dict[str, Any]]]:
        return self.rest.walk(
            walk.path, walk.query, walk.items_key, limit=walk.limit, cursor_key=walk.paging
        )

    async def _resolve_static_until_done(self) -> None:
        """Resolve the static markets beside the walks (a refusal here holds up no
        walk), again every `refresh` while REST refuses the lookup."""
        refresher = Refresher(self.refresh)
        while self._unresolved:
            refresher.begin()
            try:
                await self._resolve_static()
                self.static_refused = None
            except RestRefused as exc:
                self.static_refused = str(exc)
                log.error("discovery: REST refused the static markets' lookup: %s", exc)
                await refresher.wait()

    async def _resolve_static(self) -> None:
        """Find the static markets' units (Polymarket: their token ids) and subscribe
        them; ones REST does not know are left out, and named by `/ready`."""
        for walk in self.source.static_walks(sorted(self._unresolved)):
            async for page in self._pages(walk):
                found: list[str] = []
                records: list[Inbound] = []
                for market in page:
                    key = self.source.market_key(market)
                    if key not in self._unresolved or key is None:
                        continue
                    self._catalogue(walk.type_token, key, market, self.market_catalogue, records)
                    if self._learn_units(key, self.source.units(market)):
                        found.append(key)
                        self._unresolved.discard(key)
                self.stats.catalogue_markets += len(records)
                await self._publish(records)
                # Subscribed page by page: a later lookup refused loses none of these.
                self.add(sorted(found), "static")
        if self._unresolved:
            self.unknown_static = sorted(self._unresolved)
            log.error(
                "discovery: REST has no subscribable market for static market(s) %s "
                "(connector.markets)",
                ", ".join(self.unknown_static[:5]),
            )
            self._unresolved.clear()

    def _catalogue(
        self,
        type_token: str,
        key: str,
        obj: dict[str, Any],
        catalogue: Catalogue,
        out: list[Inbound],
    ) -> None:
        volatile = self.source.volatile_fields if catalogue is self.market_catalogue else None
        if not catalogue.changed(key, without(obj, volatile) if volatile else obj):
            return
        subject = self.subjects.data(type_token, key) or self.subjects.unrouted(type_token)
        payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        out.append(Inbound(subject, payload, self.clock.now_ns()))

    async def _publish(self, records: list[Inbound]) -> None:
        if records:
            assert self._send is not None
            await self._send.send(records)

    def planned(self) -> dict[str, int]:
        """Markets the planner placed, per market-scoped channel."""
        if self.layout is None:
            return {}
        count = len(self.layout.markets)
        return dict.fromkeys(self.layout.channels, count)

    def metrics(self, feed: str) -> Iterator[object]:
        return discovery_metrics(
            feed,
            self.stats,
            self.rest.stats,
            self.refresh,
            len(self.markets),
            self.planned(),
            self.connections,
            self.backfill,
        )

    def not_ready(self) -> str | None:
        """Why discovery has not completed its first walk, while REST is failing; or
        why a static market is not recorded."""
        if self.unknown_static:
            return (
                "discovery: connector.markets: REST has no subscribable market for "
                f"{', '.join(self.unknown_static[:5])}"
                + (
                    f" and {len(self.unknown_static) - 5} more"
                    if len(self.unknown_static) > 5
                    else ""
                )
            )
        if self.static_refused is not None:
            return f"discovery: REST refused the static markets' lookup: {self.static_refused}"
        if self.refused is not None:
            return f"discovery: REST refused the walk: {self.refused}"
        if self.stats.walks == 0 and self.rest.stats.retries > 0:
            return (
                f"discovery: the first REST walk is not complete ({self.rest.stats.retries} "
                "failed requests); recording what is subscribed meanwhile (static markets, "
                "all-market channels, live events)"
            )
        return None
