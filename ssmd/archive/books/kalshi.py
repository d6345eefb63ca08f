"""Kalshi order books from `orderbook_snapshot` and `orderbook_delta`, in either form.

Integer cents (`yes`, `no`, `price`, `delta`), the transitional `yes_dollars` pairs, and
the 2026 fixed-point strings (`yes_dollars_fp`, `price_dollars`, `delta_fp`) all become
exact Decimal dollars and contracts. Both sides are bids (YES and NO), printed best
(highest) first as fixed-point strings: `["0.4500", "100.00"]`.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from ssmd.archive.books.base import Book, Levels, MarketBooks, best_first, dec
from ssmd.archive.records import Record

CENT = Decimal("0.01")
PRICE_PLACES = Decimal("0.0001")
QTY_PLACES = Decimal("0.01")


def side_levels(msg: dict[str, Any], side: str) -> Levels:
    levels: Levels = {}
    if f"{side}_dollars_fp" in msg:
        pairs, scale = msg[f"{side}_dollars_fp"], None
    elif f"{side}_dollars" in msg:
        pairs, scale = msg[f"{side}_dollars"], None
    else:
        pairs, scale = msg.get(side) or [], CENT
    for price, qty in pairs:
        p = dec(price) * scale if scale is not None else dec(price)
        q = dec(qty)
        if q:
            levels[p] = q
    return levels


def delta_price(msg: dict[str, Any]) -> Decimal:
    if "price_dollars" in msg:
        return dec(msg["price_dollars"])
    return dec(msg["price"]) * CENT


def delta_size(msg: dict[str, Any]) -> Decimal:
    return dec(msg["delta_fp"]) if "delta_fp" in msg else dec(msg["delta"])


class KalshiVenue:
    name = "kalshi"
    book_types = frozenset({"orderbook"})
    side_names = ("yes", "no")

    def is_snapshot_line(self, line: bytes) -> bool:
        return b'"orderbook_snapshot"' in line

    def apply(self, books: MarketBooks, record: Record) -> None:
        payload = record.payload()
        if not isinstance(payload, dict) or not isinstance(payload.get("msg"), dict):
            return
        msg = payload["msg"]
        book = books.book()
        kind = payload.get("type")
        try:
            if kind == "orderbook_snapshot":
                book.reset(side_levels(msg, "yes"), side_levels(msg, "no"), record.seq)
            elif kind == "orderbook_delta":
                self._delta(book, msg, record.seq)
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            book.invalidate(f"unreadable {kind} at seq {record.seq}: {exc!r}")

    def _delta(self, book: Book, msg: dict[str, Any], seq: int) -> None:
        book.seq = seq
        if book.snapshot_seq is None:
            return
        levels = book.bids if msg["side"] == "yes" else book.asks
        price = delta_price(msg)
        size = levels.get(price, Decimal(0)) + delta_size(msg)
        if size < 0:
            book.invalidate(f"delta at seq {seq} takes {msg['side']} {price} below zero")
            levels.pop(price, None)
        elif size == 0:
            levels.pop(price, None)
        else:
            levels[price] = size

    def levels_json(self, book: Book, depth: int | None) -> dict[str, Any]:
        return {
            name: [
                [str(p.quantize(PRICE_PLACES)), str(levels[p].quantize(QTY_PLACES))]
                for p in best_first(levels, True, depth)
            ]
            for name, levels in (("yes", book.bids), ("no", book.asks))
        }
