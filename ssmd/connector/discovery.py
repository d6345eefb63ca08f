"""Market discovery on a running connector: REST walks, lifecycle events, live changes.

A producer task beside the connections. It walks the venue's open markets over REST
(at start, then every `refresh`), follows the lifecycle events the sessions hand it
(`SessionContext.events`, a bounded memory channel: the hot path never waits for it),
and turns what changed into subscription planner actions (`SubscriptionLayout`) that it
gives to the connections (`Connection.change`), opening new connections when the
planner asks. Each REST market and event object goes into the archive as a catalogue
record when first seen in the run and whenever what it is changes.

A REST outage pauses discovery (the client retries forever); the connections keep
recording what they have. Nothing is kept across restarts: a restart walks again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import attrs
import trio

from ssmd.clock import WallClock
from ssmd.connector.backfill import TradeBackfill
from ssmd.connector.connection import Connection
from ssmd.connector.layout import Action, OpenConnection, SubscriptionLayout
from ssmd.connector.metrics import discovery_metrics
from ssmd.connector.publisher import Inbound
from ssmd.connector.reconcile import Catalogue, MarketSet
from ssmd.connector.rest import RestClient, RestRefused
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds.base import Change, Subjects
from ssmd.feeds.kalshi_discovery import (
    EVENTS_PAGE_LIMIT,
    EVENTS_PATH,
    MARKETS_PATH,
    PAGE_LIMIT,
    VOLATILE_MARKET_FIELDS,
    Selection,
    lifecycle_change,
)

__all__ = [
    "ALL_MARKET_CHANNELS",
    "Discovery",
    "DiscoveryStats",
    "channel_split",
]

log = logging.getLogger("ssmd.connector.discovery")

LIFECYCLE_CHANNEL = "market_lifecycle_v2"
# Channels Kalshi serves for all markets with one subscription (no market list).
ALL_MARKET_CHANNELS = frozenset({"ticker", "ticker_v2", "trade", LIFECYCLE_CHANNEL})
EVENT_QUEUE = 10_000

OpenConnectionFn = Callable[[int, trio.MemorySendChannel[list[Inbound]]], Connection]


def channel_split(channels: Sequence[str], selection: Selection) -> tuple[list[str], list[str]]:
    """(all-markets channels, channels that follow the selected markets).

    `market_lifecycle_v2` is always all-markets and always there (it is how new markets
    are learned). With every series selected, `ticker` and `trade` keep their
    all-markets form; with series named, every market-scoped channel follows them.
    """
    wanted = list(dict.fromkeys([*channels, LIFECYCLE_CHANNEL]))
    if selection.everything:
        whole = [c for c in wanted if c in ALL_MARKET_CHANNELS]
    else:
        whole = [LIFECYCLE_CHANNEL]
    return whole, [c for c in wanted if c not in whole]


@attrs.define
class DiscoveryStats:
    walks: int = 0
    last_reconcile_ns: int = 0
    known: int = 0  # open markets on the exchange in the last walk (every series)
    lifecycle_events: int = 0
    lifecycle_dropped: int = 0
    catalogue_markets: int = 0
    catalogue_events: int = 0
    changes: int = 0  # planner actions given to connections


class Discovery:
    def __init__(
        self,
        *,
        selection: Selection,
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
        self.selection = selection
        self.layout = layout
        self.rest = rest
        self.subjects = subjects
        self.clock = clock
        self.refresh = refresh
        self.connections = connections
        self._open_connection = open_connection
        self.static = frozenset(static_markets)
        self.markets = MarketSet()
        self.market_catalogue = Catalogue(VOLATILE_MARKET_FIELDS)
        self.event_catalogue = Catalogue()
        self.stats = DiscoveryStats()
        self._events_send, self._events = trio.open_memory_channel[bytes](EVENT_QUEUE)
        self.backfill = backfill
        self._send: trio.MemorySendChannel[list[Inbound]] | None = None
        self.refused: str | None = None
        for connection in connections:
            connection.on_refused = self.on_refused

    # Called from the connections' tasks; never block.

    def on_event(self, payload: bytes) -> None:
        try:
            self._events_send.send_nowait(payload)
        except trio.WouldBlock:
            # The next reconciliation catches up on what this event said.
            self.stats.lifecycle_dropped += 1

    def on_refused(self, conn: int, slot: int, markets: tuple[str, ...], dropped: bool) -> None:
        if self.layout is not None:
            actions = self.layout.refused_as_too_large(slot, markets, dropped=dropped)
            self._dispatch(actions, "error:26")

    # The planner's actions, to the connections they are for.

    def _connection(self, conn: int) -> Connection:
        for connection in self.connections:
            if connection.index == conn:
                return connection
        assert self._send is not None
        connection = self._open_connection(conn, self._send.clone())
        connection.on_refused = self.on_refused
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

    # The task.

    async def run(
        self,
        send: trio.MemorySendChannel[list[Inbound]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with send, self.rest:
            self._send = send
            self.add(sorted(self.static), "static")
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow_events)
                if self.backfill is not None:
                    nursery.start_soon(self.backfill.run, send.clone())
                reason = "discovery"
                while True:
                    try:
                        await self.walk(reason)
                        reason = "reconcile"
                        self.refused = None
                    except RestRefused as exc:
                        # Bad credentials or parameters: recording goes on, the alert
                        # and /ready say why, and the walk is tried again next refresh.
                        self.refused = str(exc)
                        log.error("discovery: REST walk refused: %s", exc)
                    await trio.sleep(self.refresh)

    async def _follow_events(self) -> None:
        async for payload in self._events:
            try:
                envelope = json.loads(payload)
            except ValueError:
                continue
            if not isinstance(envelope, dict):
                continue
            change = lifecycle_change(envelope, self.selection)
            if change is None:
                continue
            self.stats.lifecycle_events += 1
            now = trio.current_time()
            if change.add:
                if self.markets.live_add(change.market, now):
                    self.add([change.market], change.reason)
            elif self.markets.live_remove(change.market, now):
                self.remove([change.market], change.reason)

    async def walk(self, reason: str) -> None:
        """One full REST walk: catalogue records, and the selected set brought up to
        date. Markets are added page by page; removals wait for the whole walk."""
        started = trio.current_time()
        walked: list[str] = []
        known = 0
        for query in self.selection.market_walks():
            async for page in self.rest.walk(MARKETS_PATH, query, "markets", limit=PAGE_LIMIT):
                fresh: list[str] = []
                records: list[Inbound] = []
                for market in page:
                    ticker = market.get("ticker")
                    if not isinstance(ticker, str) or not ticker:
                        continue
                    known += 1
                    self._catalogue("market", ticker, market, self.market_catalogue, records)
                    if self.selection.wants(market):
                        walked.append(ticker)
                        # Stamped with the walk's start: the walk's word on it stands.
                        if self.markets.live_add(ticker, started):
                            fresh.append(ticker)
                self.stats.catalogue_markets += len(records)
                await self._publish(records)
                self.add(fresh, reason)
        diff = self.markets.reconcile(walked, started)
        self.remove(list(diff.removed), reason)
        self.add(list(diff.added), reason)
        self.stats.known = known
        for query in self.selection.event_walks():
            async for page in self.rest.walk(EVENTS_PATH, query, "events", limit=EVENTS_PAGE_LIMIT):
                records = []
                for event in page:
                    key = event.get("event_ticker")
                    if isinstance(key, str) and key:
                        self._catalogue("event", key, event, self.event_catalogue, records)
                self.stats.catalogue_events += len(records)
                await self._publish(records)
        self.stats.walks += 1
        self.stats.last_reconcile_ns = self.clock.now_ns()
        log.info(
            "discovery (%s): %d open markets, %d selected, %d on subscriptions",
            reason,
            known,
            len(self.markets),
            len(self.layout.markets) if self.layout is not None else 0,
        )

    def _catalogue(
        self,
        type_token: str,
        key: str,
        obj: dict[str, Any],
        catalogue: Catalogue,
        out: list[Inbound],
    ) -> None:
        if not catalogue.changed(key, obj):
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
        """Why discovery has not completed its first walk, while REST is failing."""
        if self.refused is not None:
            return f"discovery: REST refused the walk: {self.refused}"
        if self.stats.walks == 0 and self.rest.stats.retries > 0:
            return (
                f"discovery: the first REST walk is not complete ({self.rest.stats.retries} "
                "failed requests); recording static markets and all-market channels"
            )
        return None


def initial_plans(whole: Sequence[str]) -> list[SubscriptionPlan]:
    """Connection 0's fixed subscriptions: the all-markets channels."""
    return [SubscriptionPlan(channel, ()) for channel in whole]
