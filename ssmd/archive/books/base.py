"""An L2 book as rebuilt from the archive, with whether it can be trusted and why not."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Protocol

import attrs

from ssmd.archive.records import Record

NO_SNAPSHOT = "no snapshot yet"
Levels = dict[Decimal, Decimal]


@attrs.define
class Book:
    """One book: a Kalshi market, a Polymarket outcome token, a Kraken symbol.

    `bids`/`asks` hold Kalshi's YES/NO bids. `valid` is False from anything that may
    have lost an update until the next snapshot; `reason` says what (the first cause).
    """

    asset: str | None = None
    bids: Levels = attrs.field(factory=dict)
    asks: Levels = attrs.field(factory=dict)
    valid: bool = False
    reason: str | None = NO_SNAPSHOT
    seq: int | None = None
    snapshot_seq: int | None = None
    depth: int | None = None

    def reset(self, bids: Levels, asks: Levels, seq: int) -> None:
        self.bids, self.asks = bids, asks
        self.valid, self.reason = True, None
        self.seq = self.snapshot_seq = seq

    def invalidate(self, reason: str) -> None:
        if self.valid:
            self.valid, self.reason = False, reason


@attrs.define
class MarketBooks:
    """The books under one subject key; Polymarket keeps one per token, others one."""

    market: str
    books: dict[str | None, Book] = attrs.field(factory=dict)

    def book(self, asset: str | None = None) -> Book:
        book = self.books.get(asset)
        if book is None:
            book = self.books[asset] = Book(asset)
        return book

    def invalidate(self, reason: str) -> None:
        for book in self.books.values():
            book.invalidate(reason)


class Venue(Protocol):
    """How one venue's book messages are applied and printed."""

    name: str
    book_types: frozenset[str]
    side_names: tuple[str, str]

    def apply(self, books: MarketBooks, record: Record) -> None: ...

    def is_snapshot_line(self, line: bytes) -> bool: ...

    def levels_json(self, book: Book, depth: int | None) -> dict[str, Any]: ...


def best_first(levels: Levels, descending: bool, depth: int | None) -> list[Decimal]:
    prices = sorted(levels, reverse=descending)
    return prices if depth is None else prices[:depth]


def bid_ask_levels(book: Book, depth: int | None) -> dict[str, Any]:
    """`bids` (best, highest, first) and `asks` (lowest first) as [price, size] text."""
    return {
        "bids": [
            [format(p, "f"), format(book.bids[p], "f")] for p in best_first(book.bids, True, depth)
        ],
        "asks": [
            [format(p, "f"), format(book.asks[p], "f")] for p in best_first(book.asks, False, depth)
        ],
    }


def dec(value: object) -> Decimal:
    """A price or size from the payload (string, int or Decimal) as an exact Decimal."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int | str):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    raise ValueError(f"not a number: {value!r}")
