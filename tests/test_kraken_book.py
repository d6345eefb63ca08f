"""Kraken v2 book and checksum: Kraken's own test vector, hand-made cases, and a model."""

from __future__ import annotations

import json
import zlib
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmd.feeds.kraken_book import (
    KrakenBook,
    Level,
    book_checksum,
    checksum_digits,
    decode_book_frame,
)

# Kraken's documented snapshot (book checksum guide, kraken-ws.md): checksum 3310070434.
DOCS_SNAPSHOT = (
    b'{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD","bids":['
    b'{"price":45283.5,"qty":0.10000000},{"price":45283.4,"qty":1.54582015},'
    b'{"price":45282.1,"qty":0.10000000},{"price":45281.0,"qty":0.10000000},'
    b'{"price":45280.3,"qty":1.54592586},{"price":45279.0,"qty":0.07990000},'
    b'{"price":45277.6,"qty":0.03310103},{"price":45277.5,"qty":0.30000000},'
    b'{"price":45277.3,"qty":1.54602737},{"price":45276.6,"qty":0.15445238}],"asks":['
    b'{"price":45285.2,"qty":0.00100000},{"price":45286.4,"qty":1.54571953},'
    b'{"price":45286.6,"qty":1.54571109},{"price":45289.6,"qty":1.54560911},'
    b'{"price":45290.2,"qty":0.15890660},{"price":45291.8,"qty":1.54553491},'
    b'{"price":45294.7,"qty":0.04454749},{"price":45296.1,"qty":0.35380000},'
    b'{"price":45297.5,"qty":0.09945542},{"price":45299.5,"qty":0.18772827}],'
    b'"checksum":3310070434,"timestamp":"2023-10-06T17:35:55.440295Z"}]}'
)
DOCS_CHECKSUM = 3310070434


def lv(price: str, qty: str) -> Level:
    return Level(Decimal(price), Decimal(qty))


def docs_book() -> KrakenBook:
    data = decode_book_frame(DOCS_SNAPSHOT).data[0]
    book = KrakenBook(10)
    book.apply_snapshot(data.bids, data.asks)
    return book


def test_kraken_docs_snapshot_checksum() -> None:
    frame = decode_book_frame(DOCS_SNAPSHOT)
    assert frame.channel == "book" and frame.type == "snapshot"
    data = frame.data[0]
    assert data.symbol == "BTC/USD"
    assert data.checksum == DOCS_CHECKSUM
    assert docs_book().checksum() == DOCS_CHECKSUM
    # The guide's first ask contributes `452852` then `100000`.
    first_ask = data.asks[0]
    assert checksum_digits(first_ask.price) + checksum_digits(first_ask.qty) == "452852100000"


def test_reference_function_agrees_on_the_docs_vector() -> None:
    bids, asks = docs_book().levels()
    assert book_checksum([(a.price, a.qty) for a in asks], [(b.price, b.qty) for b in bids]) == (
        DOCS_CHECKSUM
    )


def test_float_parsing_breaks_the_checksum() -> None:
    """What a client that lets json.loads make floats computes: 0.10000000 becomes 0.1."""
    data = json.loads(DOCS_SNAPSHOT)["data"][0]
    book = KrakenBook(10)
    book.apply_snapshot(
        [Level(Decimal(repr(b["price"])), Decimal(repr(b["qty"]))) for b in data["bids"]],
        [Level(Decimal(repr(a["price"])), Decimal(repr(a["qty"]))) for a in data["asks"]],
    )
    assert book.checksum() != DOCS_CHECKSUM
    # And a stdlib parse with parse_float=Decimal is as good as msgspec's.
    exact = json.loads(DOCS_SNAPSHOT, parse_float=Decimal, parse_int=Decimal)["data"][0]
    book.apply_snapshot(
        [Level(b["price"], b["qty"]) for b in exact["bids"]],
        [Level(a["price"], a["qty"]) for a in exact["asks"]],
    )
    assert book.checksum() == DOCS_CHECKSUM


def test_checksum_digits() -> None:
    assert checksum_digits(Decimal("0.00100000")) == "100000"
    assert checksum_digits(Decimal("45285.2")) == "452852"
    assert checksum_digits(Decimal("5.0E-7")) == "50"  # 0.00000050, never "5.0E-7"
    assert checksum_digits(Decimal("100")) == "100"  # a whole number without a point
    assert checksum_digits(Decimal("0.10000000")) == "10000000"  # trailing zeros count


def test_hand_computed_small_book() -> None:
    book = KrakenBook(10)
    book.apply_snapshot(
        bids=[lv("0.5", "10.00"), lv("0.4", "2")], asks=[lv("0.6", "1.50"), lv("0.7", "3")]
    )
    # asks low to high: 0.6/1.50 -> "6" "150", 0.7/3 -> "7" "3"; bids high to low: 0.5/10.00
    # -> "5" "1000", 0.4/2 -> "4" "2".
    assert book.checksum() == zlib.crc32(b"6150" + b"73" + b"51000" + b"42")
    book.apply_update(bids=[lv("0.5", "0")], asks=[lv("0.65", "0.001")])
    assert book.checksum() == zlib.crc32(b"6150" + b"651" + b"73" + b"42")


def test_zero_qty_deletes_and_unknown_deletes_are_ignored() -> None:
    book = docs_book()
    book.apply_update(bids=[lv("45283.5", "0.00000000"), lv("1", "0")], asks=[])
    bids, asks = book.levels()
    assert [b.price for b in bids][:2] == [Decimal("45283.4"), Decimal("45282.1")]
    assert len(bids) == 9 and len(asks) == 10


def test_truncates_to_depth_after_every_update() -> None:
    """An insert that pushes a level out of range: Kraken sends no delete for it."""
    book = docs_book()
    worst_bid = Decimal("45276.6")
    book.apply_update(bids=[lv("45283.9", "1.0")], asks=[lv("45284.0", "2.0")])
    bids, asks = book.levels()
    assert len(bids) == 10 and len(asks) == 10
    assert worst_bid not in [b.price for b in bids]
    assert Decimal("45299.5") not in [a.price for a in asks]
    # Deleting the new best does not bring the truncated level back.
    book.apply_update(bids=[lv("45283.9", "0")], asks=[])
    assert worst_bid not in [b.price for b in book.levels()[0]]
    assert len(book.levels()[0]) == 9


def test_deeper_book_checksums_only_the_top_ten() -> None:
    book = KrakenBook(25)
    bids = [lv(f"{100 - i}.0", f"{i + 1}.5") for i in range(25)]
    asks = [lv(f"{101 + i}.0", f"{i + 1}.25") for i in range(25)]
    book.apply_snapshot(bids, asks)
    top = book.checksum()
    book.apply_update(bids=[lv("80.0", "9")], asks=[lv("120.0", "9")])  # outside the top 10
    assert book.checksum() == top
    book.apply_update(bids=[lv("95.0", "9")], asks=[])
    assert book.checksum() != top
    assert len(book.levels(None)[0]) == 25
    assert [b.price for b in book.levels(3)[0]] == [Decimal(100), Decimal(99), Decimal(98)]


def test_levels_and_len() -> None:
    book = docs_book()
    bids, asks = book.levels(2)
    assert bids == [lv("45283.5", "0.10000000"), lv("45283.4", "1.54582015")]
    assert asks == [lv("45285.2", "0.00100000"), lv("45286.4", "1.54571953")]
    assert book.levels(0) == ([], [])
    assert len(book) == 20


def test_depth_below_ten_is_refused() -> None:
    with pytest.raises(ValueError, match="depth"):
        KrakenBook(5)


def test_decode_keeps_the_frames_digits_and_rejects_garbage() -> None:
    frame = b'{"channel":"book","type":"update","data":[{"symbol":"ETH/USD","bids":[{"price":2500,"qty":0.0100}],"asks":[],"checksum":1,"timestamp":"t"}]}'
    data = decode_book_frame(frame).data[0]
    assert data.bids == [Level(Decimal("2500"), Decimal("0.0100"))]
    assert str(data.bids[0].qty) == "0.0100"
    for bad in (
        b"",
        b"[]",
        b'{"channel":"book"}',
        b'{"channel":"book","type":"update","data":[{}]}',
    ):
        with pytest.raises(msgspec.MsgspecError):
            decode_book_frame(bad)


# A model: the reference algorithm over plain dicts, truncating by sorting.
def model_apply(
    bids: dict[Decimal, Decimal],
    asks: dict[Decimal, Decimal],
    updates: tuple[list[Level], list[Level]],
    depth: int,
) -> None:
    for side, levels in ((bids, updates[0]), (asks, updates[1])):
        for level in levels:
            if level.qty == 0:
                side.pop(level.price, None)
            else:
                side[level.price] = level.qty
    for price in sorted(bids, reverse=True)[depth:]:
        del bids[price]
    for price in sorted(asks)[depth:]:
        del asks[price]


def model_checksum(bids: dict[Decimal, Decimal], asks: dict[Decimal, Decimal]) -> int:
    parts = [checksum_digits(p) + checksum_digits(asks[p]) for p in sorted(asks)[:10]]
    parts += [
        checksum_digits(p) + checksum_digits(bids[p]) for p in sorted(bids, reverse=True)[:10]
    ]
    return zlib.crc32("".join(parts).encode())


PRICES = st.integers(1, 60).map(lambda n: Decimal(n) / 4)  # a small grid: many collisions
QTYS = st.one_of(
    st.just(Decimal("0")),
    st.just(Decimal("0.00000000")),
    st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal(1000), places=8),
)
LEVELS = st.lists(st.builds(Level, PRICES, QTYS), max_size=8)


@settings(max_examples=200)
@given(st.sampled_from((10, 25)), st.lists(st.tuples(LEVELS, LEVELS), min_size=1, max_size=30))
def test_book_matches_the_reference_model(
    depth: int, messages: list[tuple[list[Level], list[Level]]]
) -> None:
    book = KrakenBook(depth)
    bids: dict[Decimal, Decimal] = {}
    asks: dict[Decimal, Decimal] = {}
    for message in messages:
        book.apply_update(*message)
        model_apply(bids, asks, message, depth)
        assert book.checksum() == model_checksum(bids, asks)
        got_bids, got_asks = book.levels()
        assert [(b.price, b.qty) for b in got_bids] == sorted(bids.items(), reverse=True)
        assert [(a.price, a.qty) for a in got_asks] == sorted(asks.items())
