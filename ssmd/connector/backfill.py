"""Repair of the trade tape: after a loss on Kalshi's `trade` channel, fetch the lost
window's trades from REST, drop those already received, and publish the rest marked as
backfilled, page by page in chunks the publisher's buffer has room for, then an
`ssmd.backfill` record that says how many, or that the window was not (or only partly)
repaired, and why (also when the publisher dropped any of them).

The rule that keeps a trade from being published twice (once from REST, once live):
a window ends at the resubscribe (or at the frame that showed the gap) plus the margin,
and it is fetched only once the connection's live tape has passed that end (a frame
stamped by the exchange past `settled_ns`, or one received past it plus the lag the last
stamped frame showed, or `settle_limit` plus that lag more seconds): a trade
stamped inside the window that still arrives live has arrived by then, is in the ledger,
and is dropped from the REST answer. One that arrives later still (delivered more than
the margin late) is archived live as well and counted in `doubled`. Nor does a window
reach back past the ledger's horizon: a trade older than that may have been received and
forgotten. The part cut off is recorded as not repaired.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Iterator
from typing import Any

import attrs
import trio
from prometheus_client.core import CounterMetricFamily

from ssmd.backoff import Backoff
from ssmd.clock import WallClock
from ssmd.connector.publisher import Inbound, Publisher, PublisherStats
from ssmd.connector.records import BackfillRecord
from ssmd.connector.rest import Priority, RestClient, RestMalformed, RestRefused
from ssmd.feeds.base import Subjects
from ssmd.feeds.kalshi_discovery import (
    NS,
    TRADES_PAGE_LIMIT,
    TRADES_PATH,
    BackfillWindow,
    TradeLedger,
    trade_ts,
)
from ssmd.metrics import by_label, counter, gauge

__all__ = ["BackfillStats", "TradeBackfill"]

log = logging.getLogger("ssmd.connector.backfill")

BACKFILL_QUEUE = 1_000
# A window REST has not answered in this long is given up (recorded as not repaired).
BACKFILL_DEADLINE_S = 300.0
# Between asking again for trades REST answered with something other than trades.
MALFORMED_BACKOFF = Backoff(5.0, 60.0, jitter=0.5)
# How long past a window's end to wait for a live frame before fetching it anyway.
SETTLE_LIMIT_S = 10.0
# How often to look again for room in the publisher's buffer.
ROOM_POLL_S = 0.05

REPAIRED = "repaired"
PARTIAL = "partial"  # the window's start was cut at the ledger's horizon
UNREPAIRED = "unrepaired"
DROPPED = "dropped"  # too many windows waiting: recorded, never fetched


@attrs.define
class BackfillStats:
    backfilled_trades: int = 0
    outcomes: collections.Counter[str] = attrs.field(factory=collections.Counter)


@attrs.define
class _Tally:
    fetched: int = 0  # trades REST gave for the window
    published: int = 0  # of those, not received live: handed to the publisher
    skipped: int = 0  # without a trade_id: neither deduplicated nor published
    waiting: bool = False  # for room in the publisher's buffer
    taken_from: int = 0  # the publisher's count of backfilled messages taken, at the start


class TradeBackfill:
    def __init__(
        self,
        *,
        rest: RestClient,
        subjects: Subjects,
        clock: WallClock,
        trades: TradeLedger,
        deadline: float = BACKFILL_DEADLINE_S,
        settle_limit: float = SETTLE_LIMIT_S,
        publisher: Publisher | None = None,
    ) -> None:
        self.rest = rest
        self.subjects = subjects
        self.clock = clock
        self.trades = trades
        self.deadline = deadline
        self.settle_limit = settle_limit
        # Paced on, and checked against: its buffer drops what it has no room for.
        self.publisher = publisher
        self.stats = BackfillStats()
        self._send, self._windows = trio.open_memory_channel[tuple[int, BackfillWindow]](
            BACKFILL_QUEUE
        )
        # Windows that found the queue full, merged: recorded as not repaired.
        self._dropped: tuple[int, BackfillWindow] | None = None

    def request(self, conn: int, window: BackfillWindow) -> None:
        """Called from a connection's task; never blocks."""
        try:
            self._send.send_nowait((conn, window))
        except trio.WouldBlock:
            self._dropped = (conn, merged(self._dropped[1], window) if self._dropped else window)
            log.warning("backfill: too many trade backfills waiting; one will not be repaired")

    async def run(self, send: trio.MemorySendChannel[list[Inbound]]) -> None:
        async with send:
            current: tuple[int, BackfillWindow] | None = None
            try:
                async for conn, window in self._windows:
                    current = (conn, window)
                    await self.backfill(conn, window, send)
                    current = None
                    if self._dropped is not None:
                        (conn, window), self._dropped = self._dropped, None
                        error = "too many trade backfills waiting"
                        record = self._record(conn, window, window.min_ts, _Tally(), error, DROPPED)
                        await send.send([record])
            finally:
                self._abandon(send, current)

    def _abandon(
        self,
        send: trio.MemorySendChannel[list[Inbound]],
        current: tuple[int, BackfillWindow] | None,
    ) -> None:
        """Stopping: every window not repaired yet gets its record, if the publisher
        still takes one."""
        left = [current] if current is not None else []
        while True:
            try:
                left.append(self._windows.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        if self._dropped is not None:
            left.append(self._dropped)
        for conn, window in left:
            error = "the connector stopped before the window was repaired"
            record = self._record(conn, window, window.min_ts, _Tally(), error)
            try:
                send.send_nowait([record])
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                log.error(
                    "backfill: trades %d..%d: not repaired, not recorded",
                    window.min_ts,
                    window.max_ts,
                )

    async def backfill(
        self, conn: int, window: BackfillWindow, send: trio.MemorySendChannel[list[Inbound]]
    ) -> None:
        """Publish the trades a window was missing, page by page in chunks the publisher
        has room for, then its record: what was fetched, published and accepted."""
        requested = window.min_ts
        await self._settle(conn, window)
        tally = _Tally()
        if self.trades.first_ts() > window.max_ts:
            stale = "older than the trade ledger remembers (trades could be doubled)"
            await send.send([self._record(conn, window, requested, tally, stale)])
            return
        window = attrs.evolve(window, min_ts=max(window.min_ts, self.trades.first_ts()))
        intake = self.publisher.stats if self.publisher is not None else None
        if intake is not None:
            tally.taken_from = intake.backfilled
        dropped = intake.backfilled_dropped if intake is not None else 0
        error: str | None = None
        retries = self.rest.stats.retries
        malformed: RestMalformed | None = None
        again = MALFORMED_BACKOFF.retry()
        try:
            with trio.fail_after(self.deadline):
                for query in window.queries():
                    if window.min_ts > window.max_ts:
                        break  # all of it cut at the ledger's horizon meanwhile
                    query = {**query, "min_ts": window.min_ts}
                    counted = (tally.fetched, tally.skipped)
                    while True:
                        try:
                            async for page in self.rest.walk(
                                TRADES_PATH,
                                query,
                                "trades",
                                limit=TRADES_PAGE_LIMIT,
                                priority=Priority.BACKGROUND,
                            ):
                                window = await self._page(window, page, tally, send)
                            break
                        except RestMalformed as exc:
                            # Not what was asked for (a maintenance page served as 200):
                            # trouble that passes, unlike a 4xx. Asked again; what was
                            # published is in the ledger and is not published twice.
                            malformed = exc
                            tally.fetched, tally.skipped = counted
                            await again.wait()
                if intake is not None:
                    await self._taken(intake, tally.taken_from + tally.published)
        except RestRefused as exc:
            error = f"REST refused: {exc}"
        except trio.TooSlowError:
            if tally.waiting:
                error = f"the publish buffer had no room for {self.deadline:.0f}s"
            else:
                failed = self.rest.stats.retries - retries
                error = (
                    f"REST gave no full answer in {self.deadline:.0f}s ({failed} failed requests)"
                )
                if malformed is not None:
                    error += f"; the last: {malformed}"
        if intake is not None and error is None and intake.backfilled_dropped > dropped:
            lost = intake.backfilled_dropped - dropped
            error = f"the publish buffer overflowed: {lost} backfilled trades dropped"
        if error is None and tally.skipped:
            error = f"{tally.skipped} trades without a trade_id (cannot be deduplicated)"
        self.stats.backfilled_trades += tally.published
        record = self._record(conn, window, requested, tally, error)
        if self.publisher is not None:
            with trio.move_on_after(self.deadline):
                await self._room([record], tally)  # the record must not be dropped either
        await send.send([record])
        log.log(
            logging.INFO if error is None else logging.ERROR,
            "backfill: trades %d..%d (%s, %s): %d fetched, %d were missing%s",
            window.min_ts,
            window.max_ts,
            f"{len(window.markets)} markets" if window.markets else "all markets",
            window.cause or "?",
            tally.fetched,
            tally.published,
            f"; NOT repaired: {error}" if error else "",
        )

    async def _page(
        self,
        window: BackfillWindow,
        page: list[dict[str, Any]],
        tally: _Tally,
        send: trio.MemorySendChannel[list[Inbound]],
    ) -> BackfillWindow:
        tally.fetched += len(page)
        # The ledger may have forgotten more while REST answered: what it can no longer
        # deduplicate is dropped, and the window's start moves with it.
        first = self.trades.first_ts()
        if first > window.min_ts:
            window = attrs.evolve(window, min_ts=min(first, window.max_ts + 1))
            page = [t for t in page if (trade_ts(t) or first) >= first]
        missing, skipped = self.trades.missing(page)
        tally.skipped += skipped
        now = self.clock.now_ns()
        messages = []
        for trade in missing:
            ticker = trade.get("ticker")
            subject = (
                self.subjects.data("trade", ticker) if isinstance(ticker, str) else None
            ) or self.subjects.unrouted("trade")
            payload = json.dumps(trade, separators=(",", ":"), ensure_ascii=False).encode()
            messages.append(Inbound(subject, payload, now, backfilled=True))
        while messages:
            count = await self._room(messages, tally)
            chunk, messages = messages[:count], messages[count:]
            await send.send(chunk)
            tally.published += len(chunk)
        return window

    async def _room(self, messages: list[Inbound], tally: _Tally) -> int:
        """How many of `messages` to hand over now: at most a page, and no more than half
        the room left in the publisher's buffer (live frames keep coming meanwhile),
        waiting for room while there is none."""
        count = min(len(messages), TRADES_PAGE_LIMIT)
        if self.publisher is None:
            return count
        tally.waiting = True
        # The room counts what the intake has taken: the chunks sent before first.
        await self._taken(self.publisher.stats, tally.taken_from + tally.published)
        while True:
            room, room_bytes = self.publisher.room
            size = 0
            fits = 0
            for message in messages[: min(count, room // 2)]:
                size += len(message.payload)
                if size > room_bytes // 2:
                    break
                fits += 1
            if fits:
                tally.waiting = False
                return fits
            await trio.sleep(ROOM_POLL_S)

    async def _taken(self, intake: PublisherStats, target: int) -> None:
        """Wait until the publisher's intake has taken every backfilled trade sent."""
        while True:
            if intake.backfilled >= target:
                return
            await trio.sleep(ROOM_POLL_S)

    def _record(
        self,
        conn: int,
        window: BackfillWindow,
        requested: int,
        tally: _Tally,
        error: str | None,
        outcome: str | None = None,
    ) -> Inbound:
        if outcome is None and error is not None:
            outcome = UNREPAIRED
        elif outcome is None:
            outcome = PARTIAL if window.min_ts > requested else REPAIRED
        self.stats.outcomes[outcome] += 1
        return self.subjects.record(
            BackfillRecord(
                conn,
                "trade",
                window.min_ts,
                window.max_ts,
                list(window.markets),
                tally.fetched,
                tally.published,
                self.clock.now_ns(),
                outcome=outcome,
                requested_min_ts=requested,
                cause=window.cause,
                error=error,
                skipped=tally.skipped,
            )
        )

    async def _settle(self, conn: int, window: BackfillWindow) -> None:
        """Wait until the connection's live tape has passed the window's end: by the
        exchange's stamps (a reader running behind is still receiving the window's trades
        well after its end), or by a frame received since, later by the lag the last
        stamped frame showed; at most `settle_limit` plus that lag."""
        settled = window.settled_ns()
        await self.clock.sleep_until(settled)
        if self.trades.passed(conn, settled):
            return
        passed = trio.Event()
        self.trades.waiting[conn] = (settled, passed.set)
        limit = self.settle_limit + self.trades.lag_ns.get(conn, 0) / NS
        try:
            with trio.move_on_after(limit):
                await passed.wait()
        finally:
            self.trades.waiting.pop(conn, None)

    def metrics(self, labels: dict[str, str]) -> Iterator[object]:
        yield by_label(
            CounterMetricFamily,
            "ssmd_discovery_backfills",
            "Trade backfill windows by outcome: repaired, partial (start cut at the trade "
            "ledger's horizon), unrepaired (REST refused or kept failing), dropped.",
            labels,
            "outcome",
            dict(self.stats.outcomes),
        )
        yield counter(
            "ssmd_discovery_backfilled_trades",
            "Trades fetched from REST after a loss on `trade` and published, marked backfilled.",
            labels,
            self.stats.backfilled_trades,
        )
        yield counter(
            "ssmd_discovery_backfill_doubled_trades",
            "Trades received live after a backfill had already published them.",
            labels,
            self.trades.doubled,
        )
        yield counter(
            "ssmd_trade_ledger_unnamed_trades",
            "Live trades without a trade_id: a backfill cannot tell them from REST's.",
            labels,
            self.trades.unnamed,
        )
        yield gauge(
            "ssmd_trade_ledger_ids",
            "Trade ids the ledger remembers to deduplicate backfills.",
            labels,
            len(self.trades),
        )
        yield gauge(
            "ssmd_trade_ledger_horizon_timestamp_seconds",
            "Since when the trade ledger knows every trade received (0: since start).",
            labels,
            self.trades.horizon_ns / NS,
        )


def merged(a: BackfillWindow, b: BackfillWindow) -> BackfillWindow:
    """One window covering both (all markets when either is)."""
    markets = () if not a.markets or not b.markets else tuple(dict.fromkeys(a.markets + b.markets))
    return BackfillWindow(min(a.min_ts, b.min_ts), max(a.max_ts, b.max_ts), markets, a.cause)
