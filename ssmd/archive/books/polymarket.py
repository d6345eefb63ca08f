"""Polymarket books, one per outcome token (`asset_id`) under the market's subject.

`book` replaces a token's book; each `price_changes[]` item sets a level's new total
(`"0"` removes it; BUY is a bid, SELL an ask). The item's `best_bid`/`best_ask` are the
exchange's own top of book after the change: a mismatch makes the book invalid.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from ssmd.archive.books.base import Book, Levels, MarketBooks, bid_ask_levels, dec
from ssmd.archive.records import Record


def _levels(rows: object) -> Levels:
    levels: Levels = {}
    for row in rows if isinstance(rows, list) else []:
        size = dec(row["size"])
        if size:
            levels[dec(row["price"])] = size
    return levels


def _top_matches(levels: Levels, best: object, descending: bool, empty: tuple[str, ...]) -> bool:
    if best is None or best == "":
        return True
    if not levels:
        return str(best) in empty or dec(best) in {Decimal(e) for e in empty}
    top = max(levels) if descending else min(levels)
    return top == dec(best)


class PolymarketVenue:
    name = "polymarket"
    book_types = frozenset({"book", "price_change"})
    side_names = ("bids", "asks")

    def is_snapshot_line(self, line: bytes) -> bool:
        return b'"event_type":"book"' in line or b'"event_type": "book"' in line

    def apply(self, books: MarketBooks, record: Record) -> None:
        payload = record.payload()
        for event in payload if isinstance(payload, list) else [payload]:
            if isinstance(event, dict):
                try:
                    self._event(books, event, record.seq)
                except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
                    books.invalidate(
                        f"unreadable {event.get('event_type')} at seq {record.seq}: {exc!r}"
                    )

    def _event(self, books: MarketBooks, event: dict[str, Any], seq: int) -> None:
        kind = event.get("event_type")
        if kind == "book":
            books.book(str(event["asset_id"])).reset(
                _levels(event.get("bids")), _levels(event.get("asks")), seq
            )
        elif kind == "price_change":
            touched: dict[str, dict[str, Any]] = {}
            for change in event.get("price_changes") or []:
                book = books.book(str(change["asset_id"]))
                book.seq = seq
                levels = book.bids if str(change["side"]).upper() == "BUY" else book.asks
                price, size = dec(change["price"]), dec(change["size"])
                if size:
                    levels[price] = size
                else:
                    levels.pop(price, None)
                touched[str(change["asset_id"])] = change
            for asset, change in touched.items():
                self._check_top(books.book(asset), change, seq)

    def _check_top(self, book: Book, change: dict[str, Any], seq: int) -> None:
        if not book.valid:
            return
        bid_ok = _top_matches(book.bids, change.get("best_bid"), True, ("0",))
        ask_ok = _top_matches(book.asks, change.get("best_ask"), False, ("0", "1"))
        if not (bid_ok and ask_ok):
            book.invalidate(
                f"top of book differs from the exchange's best_bid/best_ask at seq {seq}"
            )

    def levels_json(self, book: Book, depth: int | None) -> dict[str, Any]:
        return bid_ask_levels(book, depth)
