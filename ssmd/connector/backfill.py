"""Repair of the trade tape: after a loss on Kalshi's `trade` channel, fetch the lost
window's trades from REST, drop those already received, and publish the rest marked as
backfilled, after an `ssmd.backfill` record that says how many, or that the window was
not (or only partly) repaired, and why.

The rule that keeps a trade from being published twice (once from REST, once live):
a window ends at the resubscribe (or at the frame that showed the gap) plus the margin,
and it is fetched only once the connection's live tape has passed that end (its clock
past `settled_ns`, and a frame received since, or `settle_limit` more seconds): a trade
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
from ssmd.connector.publisher import Inbound
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
# Between asking again for a window REST answered with something other than trades.
MALFORMED_BACKOFF = Backoff(5.0, 60.0, jitter=0.5)
# How long past a window's end to wait for a live frame before fetching it anyway.
SETTLE_LIMIT_S = 10.0

REPAIRED = "repaired"
PARTIAL = "partial"  # the window's start was cut at the ledger's horizon
UNREPAIRED = "unrepaired"
DROPPED = "dropped"  # too many windows waiting: recorded, never fetched


@attrs.define
class BackfillStats:
    backfilled_trades: int = 0
    outcomes: collections.Counter[str] = attrs.field(factory=collections.Counter)


@attrs.frozen
class _Fetch:
    trades: list[dict[str, Any]]
    error: str | None = None


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
    ) -> None:
        self.rest = rest
        self.subjects = subjects
        self.clock = clock
        self.trades = trades
        self.deadline = deadline
        self.settle_limit = settle_limit
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
                    await send.send(await self.backfill(conn, window))
                    current = None
                    if self._dropped is not None:
                        (conn, window), self._dropped = self._dropped, None
                        error = "too many trade backfills waiting"
                        record = self._record(conn, window, window.min_ts, 0, 0, error, DROPPED)
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
            record = self._record(conn, window, window.min_ts, 0, 0, error)
            try:
                send.send_nowait([record])
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                log.error(
                    "backfill: trades %d..%d: not repaired, not recorded",
                    window.min_ts,
                    window.max_ts,
                )

    async def backfill(self, conn: int, window: BackfillWindow) -> list[Inbound]:
        """The batch a window becomes: its record, then the trades it was missing."""
        requested = window.min_ts
        await self._settle(conn, window)
        fetch = _Fetch([], "older than the trade ledger remembers (trades could be doubled)")
        first = self.trades.first_ts()
        if first <= window.max_ts:
            window = attrs.evolve(window, min_ts=max(window.min_ts, first))
            fetch = await self._fetch(window)
        # The ledger may have forgotten more while REST answered: what it can no longer
        # deduplicate is dropped, and the window's start moves with it.
        first = self.trades.first_ts()
        if first > window.min_ts:
            window = attrs.evolve(window, min_ts=min(first, window.max_ts + 1))
            kept = [t for t in fetch.trades if (trade_ts(t) or first) >= first]
            fetch = attrs.evolve(fetch, trades=kept)
        missing = self.trades.missing(fetch.trades)
        record = self._record(conn, window, requested, len(fetch.trades), len(missing), fetch.error)
        now = self.clock.now_ns()
        batch = [record]
        for trade in missing:
            ticker = trade.get("ticker")
            subject = (
                self.subjects.data("trade", ticker) if isinstance(ticker, str) else None
            ) or self.subjects.unrouted("trade")
            payload = json.dumps(trade, separators=(",", ":"), ensure_ascii=False).encode()
            batch.append(Inbound(subject, payload, now, backfilled=True))
        self.stats.backfilled_trades += len(missing)
        log.log(
            logging.INFO if fetch.error is None else logging.ERROR,
            "backfill: trades %d..%d (%s, %s): %d fetched, %d were missing%s",
            window.min_ts,
            window.max_ts,
            f"{len(window.markets)} markets" if window.markets else "all markets",
            window.cause or "?",
            len(fetch.trades),
            len(missing),
            f"; NOT repaired: {fetch.error}" if fetch.error else "",
        )
        return batch

    def _record(
        self,
        conn: int,
        window: BackfillWindow,
        requested: int,
        fetched: int,
        published: int,
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
                fetched,
                published,
                self.clock.now_ns(),
                outcome=outcome,
                requested_min_ts=requested,
                cause=window.cause,
                error=error,
            )
        )

    async def _settle(self, conn: int, window: BackfillWindow) -> None:
        """Wait until the connection's live tape has passed the window's end."""
        settled = window.settled_ns()
        await self.clock.sleep_until(settled)
        if self.trades.tape_ns.get(conn, 0) >= settled:
            return
        passed = trio.Event()
        self.trades.waiting[conn] = (settled, passed.set)
        try:
            with trio.move_on_after(self.settle_limit):
                await passed.wait()
        finally:
            self.trades.waiting.pop(conn, None)

    async def _fetch(self, window: BackfillWindow) -> _Fetch:
        fetched: list[dict[str, Any]] = []
        retries = self.rest.stats.retries
        malformed: RestMalformed | None = None
        again = MALFORMED_BACKOFF.retry()
        try:
            with trio.fail_after(self.deadline):
                while True:
                    fetched = []
                    try:
                        for query in window.queries():
                            async for page in self.rest.walk(
                                TRADES_PATH,
                                query,
                                "trades",
                                limit=TRADES_PAGE_LIMIT,
                                priority=Priority.BACKGROUND,
                            ):
                                fetched.extend(page)
                        break
                    except RestMalformed as exc:
                        # Not what was asked for (a maintenance page served as 200):
                        # trouble that passes, unlike a 4xx. The window is asked again.
                        malformed = exc
                        await again.wait()
        except RestRefused as exc:
            return _Fetch(fetched, f"REST refused: {exc}")
        except trio.TooSlowError:
            failed = self.rest.stats.retries - retries
            error = f"REST gave no full answer in {self.deadline:.0f}s ({failed} failed requests)"
            if malformed is not None:
                error += f"; the last: {malformed}"
            return _Fetch(fetched, error)
        return _Fetch(fetched)

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
