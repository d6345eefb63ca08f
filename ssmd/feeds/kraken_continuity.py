"""Kraken's continuity checks (see kraken-ws.md), kept by `KrakenSession`.

- Books: each symbol's book is kept at the subscribed depth and every book message's
  CRC32 is checked. A mismatch is a `gap` record (reason `checksum`, expected = ours,
  got = Kraken's) and queues the symbol for repair: the session unsubscribes its book and
  subscribes it again for a fresh snapshot.
- Trades: a jump in a symbol's `trade_id` is a `gap` record (reason `trade_id`) and
  nothing else: a resubscribe would not bring missed trades back. The last id per symbol
  survives reconnects, so the first trade after one measures exactly what was missed.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from ssmd.connector.publisher import Inbound
from ssmd.connector.records import GapRecord
from ssmd.feeds.base import ConnectionStats, Subjects
from ssmd.feeds.kraken_book import KrakenBook, decode_book_frame

log = logging.getLogger("ssmd.connector.kraken")


class Item(msgspec.Struct):
    symbol: Any = None
    trade_id: Any = None


def int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class KrakenContinuity:
    """One connection's books and last trade ids, and the books queued for repair."""

    def __init__(self, conn: int, stats: ConnectionStats, subjects: Subjects, depth: int) -> None:
        self._conn = conn
        self._stats = stats
        self._subjects = subjects
        self._depth = depth
        self.last_trade_id: dict[str, int] = {}  # survives reconnects
        self.reset()

    def reset(self) -> None:
        """A new socket: no books, no repairs; the last trade ids stay."""
        self.books: dict[str, KrakenBook] = {}
        self.repairs: dict[str, None] = {}  # symbols whose book is to be resubscribed
        self.repairing: set[str] = set()  # symbols whose repair requests are in flight

    def check_book(
        self, payload: bytes, recv_ns: int, out: list[Inbound], subscribed: set[str]
    ) -> bool:
        """Apply a book message and check its checksums; True when a repair was queued."""
        try:
            frame = decode_book_frame(payload)
        except (msgspec.MsgspecError, RecursionError):
            log.warning("conn %d: book message without readable levels", self._conn)
            return False
        queued = False
        for data in frame.data:
            book = self.books.get(data.symbol)
            if frame.type == "snapshot":
                book = self.books[data.symbol] = KrakenBook(self._depth)
                book.apply_snapshot(data.bids, data.asks)
            elif book is None:
                # Nothing to check against. Unless a repair is under way (or the symbol
                # is not subscribed yet), the book is lost: resubscribe for a snapshot.
                symbol = data.symbol
                if (
                    symbol in subscribed
                    and symbol not in self.repairing
                    and symbol not in self.repairs
                ):
                    log.warning(
                        "conn %d: book %s update without a book: resubscribing", self._conn, symbol
                    )
                    self.repairs[symbol] = None
                    queued = True
                continue
            else:
                book.apply_update(data.bids, data.asks)
            if data.checksum is None:
                continue
            ours = book.checksum()
            if ours == data.checksum:
                continue
            self._stats.gap("checksum")
            log.warning(
                "conn %d: book %s checksum mismatch (ours %d, Kraken's %d): resubscribing",
                self._conn,
                data.symbol,
                ours,
                data.checksum,
            )
            record = GapRecord(
                self._conn, None, "book", ours, data.checksum, [data.symbol], recv_ns, "checksum"
            )
            out.append(self._subjects.record(record))
            del self.books[data.symbol]
            self.repairs[data.symbol] = None
            queued = True
        return queued

    def note_trade(self, item: Item) -> None:
        trade_id = int_or_none(item.trade_id)
        if isinstance(item.symbol, str) and trade_id is not None:
            last = self.last_trade_id.get(item.symbol)
            self.last_trade_id[item.symbol] = trade_id if last is None else max(last, trade_id)

    def check_trades(self, items: list[Item], recv_ns: int, out: list[Inbound]) -> None:
        for item in items:
            trade_id = int_or_none(item.trade_id)
            symbol = item.symbol
            if trade_id is None or not isinstance(symbol, str):
                continue
            last = self.last_trade_id.get(symbol)
            if last is not None and trade_id <= last:
                # A repeat or an older trade: nothing missed, and `last` never goes back
                # (100, 99, 101 is no gap at all).
                self._stats.trade_ids_behind += 1
                continue
            self.last_trade_id[symbol] = trade_id
            if last is None or trade_id == last + 1:
                continue
            self._stats.gap("trade_id")
            log.warning(
                "conn %d: trade_id jump on %s: expected %d, got %d",
                self._conn,
                symbol,
                last + 1,
                trade_id,
            )
            record = GapRecord(
                self._conn, None, "trade", last + 1, trade_id, [symbol], recv_ns, "trade_id"
            )
            out.append(self._subjects.record(record))
