"""Repair of the trade tape: after a loss on Kalshi's `trade` channel, fetch the lost
window's trades from REST, drop those already received, and publish the rest marked as
backfilled, after an `ssmd.backfill` record that says how many."""

from __future__ import annotations

import json
import logging
from typing import Any

import attrs
import trio

from ssmd.clock import WallClock
from ssmd.connector.publisher import Inbound
from ssmd.connector.records import BackfillRecord
from ssmd.connector.rest import RestClient, RestRefused
from ssmd.feeds.base import Subjects
from ssmd.feeds.kalshi_discovery import (
    TRADES_PAGE_LIMIT,
    TRADES_PATH,
    BackfillWindow,
    TradeLedger,
)

__all__ = ["BackfillStats", "TradeBackfill"]

log = logging.getLogger("ssmd.connector.backfill")

BACKFILL_QUEUE = 1_000


@attrs.define
class BackfillStats:
    backfills: int = 0
    backfilled_trades: int = 0
    dropped: int = 0


class TradeBackfill:
    def __init__(
        self,
        *,
        rest: RestClient,
        subjects: Subjects,
        clock: WallClock,
        trades: TradeLedger,
    ) -> None:
        self.rest = rest
        self.subjects = subjects
        self.clock = clock
        self.trades = trades
        self.stats = BackfillStats()
        self._send, self._windows = trio.open_memory_channel[tuple[int, BackfillWindow]](
            BACKFILL_QUEUE
        )

    def request(self, conn: int, window: BackfillWindow) -> None:
        """Called from a connection's task; never blocks."""
        try:
            self._send.send_nowait((conn, window))
        except trio.WouldBlock:
            self.stats.dropped += 1
            log.warning("backfill: too many trade backfills waiting; one dropped")

    async def run(self, send: trio.MemorySendChannel[list[Inbound]]) -> None:
        async with send:
            async for conn, window in self._windows:
                try:
                    await self.backfill(conn, window, send)
                except RestRefused as exc:
                    log.error("backfill: trade backfill refused: %s", exc)

    async def backfill(
        self,
        conn: int,
        window: BackfillWindow,
        send: trio.MemorySendChannel[list[Inbound]],
    ) -> None:
        fetched: list[dict[str, Any]] = []
        for query in window.queries():
            async for page in self.rest.walk(TRADES_PATH, query, "trades", limit=TRADES_PAGE_LIMIT):
                fetched.extend(page)
        missing = self.trades.missing(fetched)
        now = self.clock.now_ns()
        record = BackfillRecord(
            conn,
            "trade",
            window.min_ts,
            window.max_ts,
            list(window.markets),
            len(fetched),
            len(missing),
            now,
        )
        batch = [self.subjects.record(record)]
        for trade in missing:
            ticker = trade.get("ticker")
            subject = (
                self.subjects.data("trade", ticker) if isinstance(ticker, str) else None
            ) or self.subjects.unrouted("trade")
            payload = json.dumps(trade, separators=(",", ":"), ensure_ascii=False).encode()
            batch.append(Inbound(subject, payload, now, backfilled=True))
        self.stats.backfills += 1
        self.stats.backfilled_trades += len(missing)
        log.info(
            "backfill: trades %d..%d (%s): %d fetched, %d were missing",
            window.min_ts,
            window.max_ts,
            f"{len(window.markets)} markets" if window.markets else "all markets",
            len(fetched),
            len(missing),
        )
        await send.send(batch)
