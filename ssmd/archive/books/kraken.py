"""Kraken (Spot WebSocket v2) books from `book` snapshots and updates.

Every message is checked against its CRC32 `checksum` after all its levels are applied
and each side is cut to the subscribed depth (Kraken sends no delete for a level pushed
out of range). A mismatch makes the book invalid until the next snapshot.

The checksum covers the 10 best levels only. Levels deeper than that are right only if
the subscribed depth (`connector.depth`) is known: a thin snapshot does not tell it.
Without it, a book shows its 10 checksummed levels and no more.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from ssmd.archive.books.base import Book, Levels, MarketBooks, bid_ask_levels, dec
from ssmd.archive.records import Record
from ssmd.feeds.kraken_book import CHECKSUM_LEVELS, DEPTHS, book_checksum


def levels_checksum(bids: Levels, asks: Levels) -> int:
    """Kraken's checksum of a book kept as price -> qty maps (`book_checksum`, the
    connector's one implementation, orders and cuts the levels)."""
    return book_checksum(
        ((p, asks[p]) for p in sorted(asks)),
        ((p, bids[p]) for p in sorted(bids, reverse=True)),
    )


def _apply(levels: Levels, rows: object) -> None:
    for row in rows if isinstance(rows, list) else []:
        qty = dec(row["qty"])
        if qty:
            levels[dec(row["price"])] = qty
        else:
            levels.pop(dec(row["price"]), None)


def _truncate(levels: Levels, depth: int, descending: bool) -> None:
    for price in sorted(levels, reverse=descending)[depth:]:
        del levels[price]


class KrakenVenue:
    name = "kraken"
    book_types = frozenset({"book"})
    side_names = ("bids", "asks")

    def __init__(self, subscribed_depth: int | None = None) -> None:
        self.subscribed_depth = subscribed_depth

    def is_snapshot_line(self, line: bytes) -> bool:
        return b'"type":"snapshot"' in line or b'"type": "snapshot"' in line

    def apply(self, books: MarketBooks, record: Record) -> None:
        payload = record.payload()
        if not isinstance(payload, dict) or payload.get("channel") != "book":
            return
        for item in payload.get("data") or []:
            if not isinstance(item, dict) or item.get("symbol") != books.market:
                continue
            book = books.book()
            try:
                self._item(book, item, payload.get("type") == "snapshot", record.seq)
            except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
                book.invalidate(f"unreadable book message at seq {record.seq}: {exc!r}")

    def _item(self, book: Book, item: dict[str, Any], snapshot: bool, seq: int) -> None:
        if snapshot:
            bids: Levels = {}
            asks: Levels = {}
            _apply(bids, item.get("bids"))
            _apply(asks, item.get("asks"))
            book.reset(bids, asks, seq)
            widest = max(len(bids), len(asks))
            # Unknown: the smallest depth the snapshot fits, a lower bound (never below
            # the 10 checksummed levels, so those stay exact).
            book.depth = self.subscribed_depth or next((d for d in DEPTHS if d >= widest), widest)
        else:
            book.seq = seq
            if book.snapshot_seq is None:
                return
            _apply(book.bids, item.get("bids"))
            _apply(book.asks, item.get("asks"))
            depth = book.depth or DEPTHS[0]
            _truncate(book.bids, depth, True)
            _truncate(book.asks, depth, False)
        expected = item.get("checksum")
        if isinstance(expected, int | Decimal) and book.valid:
            got = levels_checksum(book.bids, book.asks)
            if got != int(expected):
                book.invalidate(
                    f"checksum mismatch at seq {seq}: {int(expected)} sent, {got} computed"
                )

    def levels_json(self, book: Book, depth: int | None) -> dict[str, Any]:
        if self.subscribed_depth is None:
            depth = min(depth or CHECKSUM_LEVELS, CHECKSUM_LEVELS)
        return bid_ask_levels(book, depth)
