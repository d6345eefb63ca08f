"""Kraken WebSocket v2 level-2 book of one symbol, kept to check Kraken's CRC32 checksums.

Kraken's book guide (see kraken-ws.md) sets the rules this follows: apply every level of a
message, then check; a `qty` of 0 deletes the level; after every message truncate each
side to the subscribed depth (Kraken sends no delete for a level an insert pushed out of
range); the checksum is the CRC32 of the 10 best asks (low to high) then the 10 best bids
(high to low), each level written as its price then its qty with the decimal point
removed and the leading zeros stripped, all concatenated.

Prices and quantities are `Decimal`s parsed from the frame's own text (`decode_book_frame`
does it with msgspec): a float turns `0.10000000` into `0.1` and the checksum breaks.
Each side is a dict from price to qty plus its prices in one ascending list (bisect), so
an update costs a few list moves and a checksum formats nothing: every level's checksum
text is made once, when the level is set.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Iterable
from decimal import Decimal

import msgspec

CHECKSUM_LEVELS = 10
DEPTHS = (10, 25, 100, 500, 1000)


class Level(msgspec.Struct, frozen=True):
    price: Decimal
    qty: Decimal


class BookData(msgspec.Struct):
    """One element of a `book` message's `data`: a symbol's levels and checksum."""

    symbol: str
    bids: list[Level] = []
    asks: list[Level] = []
    checksum: int | None = None


class BookFrame(msgspec.Struct):
    channel: str
    type: str
    data: list[BookData]


_BOOK_FRAME = msgspec.json.Decoder(BookFrame)


def decode_book_frame(frame: bytes) -> BookFrame:
    """A `book` frame with exact Decimal prices and quantities; raises `msgspec.MsgspecError`."""
    return _BOOK_FRAME.decode(frame)


def checksum_digits(value: Decimal) -> str:
    """A price or qty as Kraken's checksum writes it: `0.00100000` -> `100000`."""
    return format(value, "f").replace(".", "").lstrip("0")


def book_checksum(
    asks: Iterable[tuple[Decimal, Decimal]], bids: Iterable[tuple[Decimal, Decimal]]
) -> int:
    """Kraken's checksum of the best levels given, asks best (lowest) first, bids best
    (highest) first; only the first 10 of each count. Written from the reference, for
    anyone who has levels but no `KrakenBook`."""
    parts: list[str] = []
    for side in (asks, bids):
        for count, (price, qty) in enumerate(side):
            if count == CHECKSUM_LEVELS:
                break
            parts.append(checksum_digits(price) + checksum_digits(qty))
    return zlib.crc32("".join(parts).encode("ascii"))


class _Side:
    """One side of the book: qty and checksum text by price, and the prices in order."""

    __slots__ = ("best_is_highest", "prices", "qty", "text")

    def __init__(self, best_is_highest: bool) -> None:
        self.best_is_highest = best_is_highest
        self.prices: list[Decimal] = []  # ascending
        self.qty: dict[Decimal, Decimal] = {}
        self.text: dict[Decimal, str] = {}

    def clear(self) -> None:
        self.prices.clear()
        self.qty.clear()
        self.text.clear()

    def set(self, price: Decimal, qty: Decimal) -> None:
        if not qty:
            if self.qty.pop(price, None) is not None:
                del self.text[price]
                del self.prices[bisect.bisect_left(self.prices, price)]
            return
        if price not in self.qty:
            bisect.insort(self.prices, price)
        self.qty[price] = qty
        self.text[price] = checksum_digits(price) + checksum_digits(qty)

    def truncate(self, depth: int) -> None:
        excess = len(self.prices) - depth
        if excess <= 0:
            return
        if self.best_is_highest:
            dropped = self.prices[:excess]
            del self.prices[:excess]
        else:
            dropped = self.prices[depth:]
            del self.prices[depth:]
        for price in dropped:
            del self.qty[price]
            del self.text[price]

    def best(self, n: int) -> list[Decimal]:
        if self.best_is_highest:
            return self.prices[: -n - 1 if n < len(self.prices) else None : -1]
        return self.prices[:n]


class KrakenBook:
    """The book of one symbol at one subscribed depth."""

    def __init__(self, depth: int = 10) -> None:
        if depth < CHECKSUM_LEVELS:
            raise ValueError(f"depth must be at least {CHECKSUM_LEVELS}, got {depth}")
        self.depth = depth
        self._bids = _Side(best_is_highest=True)
        self._asks = _Side(best_is_highest=False)

    def apply_snapshot(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Replace the whole book."""
        self._bids.clear()
        self._asks.clear()
        self.apply_update(bids, asks)

    def apply_update(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Set (or, with qty 0, delete) each level, then truncate both sides to the depth."""
        for side, levels in ((self._bids, bids), (self._asks, asks)):
            for level in levels:
                side.set(level.price, level.qty)
            side.truncate(self.depth)

    def checksum(self) -> int:
        asks, bids = self._asks, self._bids
        text = "".join(
            [asks.text[p] for p in asks.best(CHECKSUM_LEVELS)]
            + [bids.text[p] for p in bids.best(CHECKSUM_LEVELS)]
        )
        return zlib.crc32(text.encode("ascii"))

    def levels(self, n: int | None = None) -> tuple[list[Level], list[Level]]:
        """(bids best first, asks best first), at most `n` levels each (all by default)."""
        count = self.depth if n is None else n
        return (
            [Level(p, self._bids.qty[p]) for p in self._bids.best(count)],
            [Level(p, self._asks.qty[p]) for p in self._asks.best(count)],
        )

    def __len__(self) -> int:
        return len(self._bids.prices) + len(self._asks.prices)
