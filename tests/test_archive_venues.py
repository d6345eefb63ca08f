"""Books of the other venues: Polymarket (one per outcome token under a market's
subject, checked against the exchange's best bid/ask) and Kraken (checked against the
CRC32 checksum of every message)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ssmd.archive.books.kraken import levels_checksum
from ssmd.cli.main import main
from ssmd.connector.records import DisconnectRecord
from ssmd.subjects import market_subject
from tests.archive_harness import utc_ns
from tests.market_tape import ENV, Tape, archive_tape

MS = 1_000_000
T0 = utc_ns(2026, 1, 5, 12, 0)
# Kraken's documented snapshot (book-checksum-v2): its checksum is 3310070434.
KRAKEN_DOC_SNAPSHOT = (
    '{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD","bids":[{"price":45283.5,"qty":0.10000000},{"price":45283.4,"qty":1.54582015},{"price":45282.1,"qty":0.10000000},{"price":45281.0,"qty":0.10000000},{"price":45280.3,"qty":1.54592586},{"price":45279.0,"qty":0.07990000},{"price":45277.6,"qty":0.03310103},{"price":45277.5,"qty":0.30000000},{"price":45277.3,"qty":1.54602737},{"price":45276.6,"qty":0.15445238}],'
    '"asks":[{"price":45285.2,"qty":0.00100000},{"price":45286.4,"qty":1.54571953},{"price":45286.6,"qty":1.54571109},{"price":45289.6,"qty":1.54560911},{"price":45290.2,"qty":0.15890660},{"price":45291.8,"qty":1.54553491},{"price":45294.7,"qty":0.04454749},{"price":45296.1,"qty":0.35380000},{"price":45297.5,"qty":0.09945542},{"price":45299.5,"qty":0.18772827}],"checksum":3310070434,"timestamp":"2023-10-06T17:35:55.440295Z"}]}'
)


def book(
    capsys: pytest.CaptureFixture[str], root: Path, feed: str, market: str, at: int, *extra: str
) -> list[dict[str, Any]]:
    code = main(
        ["data", "book", feed, market, "--at", str(at), "--json", "--path", str(root), *extra]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    return [json.loads(line) for line in out.splitlines()]


def testlevels_checksum_matches_the_documented_vector() -> None:
    data = json.loads(KRAKEN_DOC_SNAPSHOT, parse_float=Decimal)["data"][0]
    bids = {d["price"]: d["qty"] for d in data["bids"]}
    asks = {d["price"]: d["qty"] for d in data["asks"]}
    assert levels_checksum(bids, asks) == 3310070434
    asks[Decimal("45285.2")] = Decimal("0.00200000")
    assert levels_checksum(bids, asks) != 3310070434


def _kraken_update(
    bids: dict[Decimal, Decimal],
    asks: dict[Decimal, Decimal],
    changes: dict[str, list[tuple[str, str]]],
    checksum: int | None = None,
    depth: int = 10,
) -> bytes:
    for side, rows in changes.items():
        levels = bids if side == "bids" else asks
        for price, qty in rows:
            if Decimal(qty):
                levels[Decimal(price)] = Decimal(qty)
            else:
                levels.pop(Decimal(price), None)
    for levels, desc in ((bids, True), (asks, False)):
        for p in sorted(levels, reverse=desc)[depth:]:
            del levels[p]
    crc = levels_checksum(bids, asks) if checksum is None else checksum
    side_json = {
        side: ",".join(f'{{"price":{p},"qty":{q}}}' for p, q in rows)
        for side, rows in changes.items()
    }
    return (
        '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD",'
        f'"bids":[{side_json.get("bids", "")}],"asks":[{side_json.get("asks", "")}],'
        f'"checksum":{crc},"timestamp":"2026-01-05T12:00:01.000000Z"}}]}}'
    ).encode()


def test_kraken_book_follows_updates_truncates_to_depth_and_a_bad_checksum_invalidates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tape = Tape(feed="kraken")
    subject = market_subject(ENV, "kraken", "book", "BTC/USD")
    data = json.loads(KRAKEN_DOC_SNAPSHOT, parse_float=Decimal)["data"][0]
    bids = {d["price"]: d["qty"] for d in data["bids"]}
    asks = {d["price"]: d["qty"] for d in data["asks"]}
    tape.add(subject, KRAKEN_DOC_SNAPSHOT.encode(), T0)
    # An insert above the best bid pushes the 10th bid out (Kraken sends no delete).
    tape.add(
        subject,
        _kraken_update(
            bids, asks, {"bids": [("45284.0", "0.50000000")], "asks": [("45285.2", "0")]}
        ),
        T0 + 100 * MS,
    )
    after_first = (dict(bids), dict(asks))
    tape.add(
        subject,
        _kraken_update(bids, asks, {"asks": [("45285.9", "2.00000000")]}, checksum=12345),
        T0 + 200 * MS,
    )
    tape.add(subject, KRAKEN_DOC_SNAPSHOT.encode(), T0 + 300 * MS)
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))

    [view] = book(capsys, tmp_path, "kraken", "BTC/USD", T0 + 150 * MS)
    assert view["valid"] is True and "yes" not in view
    assert view["bids"] == [
        [format(p, "f"), format(q, "f")] for p, q in sorted(after_first[0].items(), reverse=True)
    ]
    assert view["asks"] == [
        [format(p, "f"), format(q, "f")] for p, q in sorted(after_first[1].items())
    ]
    assert len(view["bids"]) == 10 and view["bids"][0][0] == "45284.0"
    [bad] = book(capsys, tmp_path, "kraken", "BTC/USD", T0 + 250 * MS)
    assert (
        bad["valid"] is False and "checksum mismatch" in bad["reason"] and "12345" in bad["reason"]
    )
    [again] = book(capsys, tmp_path, "kraken", "BTC/USD", T0 + 350 * MS)
    assert again["valid"] is True and again["asks"][0] == ["45285.2", "0.00100000"]


def test_kraken_levels_past_the_checksum_need_the_subscribed_depth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A thin 12-level snapshot at depth 100 looks like depth 25: inserts then grow the
    book to 30 levels. Without the subscribed depth only the 10 checksummed levels are
    shown; with it (flag or the connector's config) all 30, exactly."""
    tape = Tape(feed="kraken")
    subject = market_subject(ENV, "kraken", "book", "BTC/USD")
    bids = {Decimal(100 - i): Decimal(1 + i) for i in range(12)}
    asks = {Decimal(101 + i): Decimal(1 + i) for i in range(12)}
    rows = ",".join(f'{{"price":{p},"qty":{q}}}' for p, q in sorted(bids.items(), reverse=True))
    arows = ",".join(f'{{"price":{p},"qty":{q}}}' for p, q in sorted(asks.items()))
    tape.add(
        subject,
        (
            '{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD",'
            f'"bids":[{rows}],"asks":[{arows}],"checksum":{levels_checksum(bids, asks)}}}]}}'
        ).encode(),
        T0,
    )
    deeper = [(str(Decimal(88 - i)), "5") for i in range(18)]  # bids 13..30
    tape.add(subject, _kraken_update(bids, asks, {"bids": deeper}, depth=100), T0 + 100 * MS)
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    exchange = [[format(p, "f"), format(q, "f")] for p, q in sorted(bids.items(), reverse=True)]
    assert len(exchange) == 30
    [unknown] = book(capsys, tmp_path, "kraken", "BTC/USD", T0 + 200 * MS)
    assert unknown["valid"] is True and unknown["bids"] == exchange[:10]
    [known] = book(capsys, tmp_path, "kraken", "BTC/USD", T0 + 200 * MS, "--book-depth", "100")
    assert known["valid"] is True and known["bids"] == exchange
    config = tmp_path / "ssmd.toml"
    config.write_text(
        'env = "prod"\n[[connector]]\nfeed = "kraken"\nchannels = ["book"]\n'
        'markets = ["BTC/USD"]\ndepth = 100\n'
    )
    [configured] = book(capsys, tmp_path, "kraken", "BTC/USD", T0 + 200 * MS, "-c", str(config))
    assert configured["bids"] == exchange


COND = "0x" + "ab" * 32
YES, NO = "1" * 77, "2" * 77


def test_polymarket_books_per_token_checked_against_best_bid_ask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tape = Tape(feed="polymarket")

    def sub(kind: str) -> str:
        return market_subject(ENV, "polymarket", kind, COND)

    for asset, bids, asks in (
        (YES, [("0.48", "100")], [("0.52", "80")]),
        (NO, [("0.47", "60")], [("0.53", "90")]),
    ):
        tape.add(sub("book"), {
            "event_type": "book", "market": COND, "asset_id": asset, "timestamp": "1767614400000",
            "bids": [{"price": p, "size": s} for p, s in bids], "asks": [{"price": p, "size": s} for p, s in asks],
        }, T0)  # fmt: skip
    change = {
        "event_type": "price_change", "market": COND, "timestamp": "1767614400100",
        "price_changes": [
            {"asset_id": YES, "price": "0.49", "size": "10", "side": "BUY", "best_bid": "0.49", "best_ask": "0.52"},
            {"asset_id": NO, "price": "0.53", "size": "0", "side": "SELL", "best_bid": "0.47", "best_ask": "1"},
        ],
    }  # fmt: skip
    tape.add(sub("price_change"), change, T0 + 100 * MS)
    wrong = {
        "event_type": "price_change", "market": COND, "timestamp": "1767614400200",
        "price_changes": [{"asset_id": YES, "price": "0.30", "size": "5", "side": "BUY", "best_bid": "0.50", "best_ask": "0.52"}],
    }  # fmt: skip
    tape.add(sub("price_change"), wrong, T0 + 200 * MS)
    tape.record(DisconnectRecord(0, "ConnectionLost", T0 + 300 * MS), T0 + 300 * MS)
    trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))

    views = {v["asset_id"]: v for v in book(capsys, tmp_path, "polymarket", COND, T0 + 150 * MS)}
    assert views[YES]["valid"] and views[YES]["bids"] == [["0.49", "10"], ["0.48", "100"]]
    assert views[NO]["valid"] and views[NO]["asks"] == [] and views[NO]["bids"] == [["0.47", "60"]]
    views = {v["asset_id"]: v for v in book(capsys, tmp_path, "polymarket", COND, T0 + 250 * MS)}
    assert views[YES]["valid"] is False and "best_bid/best_ask" in views[YES]["reason"]
    assert views[NO]["valid"] is True
    [only] = book(capsys, tmp_path, "polymarket", COND, T0 + 350 * MS, "--asset", NO)
    assert only["asset_id"] == NO and only["valid"] is False and "disconnect" in only["reason"]


def test_polymarket_and_kraken_export_into_the_same_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ssmd.archive

    kraken = Tape(feed="kraken")
    kraken.add(market_subject(ENV, "kraken", "book", "BTC/USD"), KRAKEN_DOC_SNAPSHOT.encode(), T0)
    trade = '{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy","price":45285.2,"qty":0.5,"ord_type":"limit","trade_id":7,"timestamp":"2026-01-05T12:00:01.000000Z"},{"symbol":"BTC/USD","side":"sell","price":45283.5,"qty":0.25,"ord_type":"market","trade_id":8,"timestamp":"2026-01-05T12:00:01.500000Z"}]}'
    kraken.add(market_subject(ENV, "kraken", "trade", "BTC/USD"), trade.encode(), T0 + MS)
    poly = Tape(feed="polymarket")
    poly.add(market_subject(ENV, "polymarket", "book", COND), {
        "event_type": "book", "market": COND, "asset_id": YES, "timestamp": "1767614400000",
        "bids": [{"price": "0.48", "size": "100"}], "asks": [{"price": "0.52", "size": "80"}, {"price": "0.55", "size": "5"}],
    }, T0)  # fmt: skip
    poly.add(market_subject(ENV, "polymarket", "last_trade_price", COND), {
        "event_type": "last_trade_price", "market": COND, "asset_id": YES, "price": "0.52", "size": "12.5",
        "side": "BUY", "timestamp": "1767614400500", "transaction_hash": "0xabc",
    }, T0 + MS)  # fmt: skip
    for tape in (kraken, poly):
        trio.run(archive_tape, tmp_path, tape, clock=trio.testing.MockClock(autojump_threshold=0))
    assert main(["data", "export", "--out", str(tmp_path / "pq"), "--path", str(tmp_path)]) == 0
    capsys.readouterr()
    con = ssmd.archive.open(tmp_path).duckdb(tmp_path / "pq")
    doc = json.loads(KRAKEN_DOC_SNAPSHOT, parse_float=Decimal)["data"][0]
    kraken_qty = float(sum(level["qty"] for level in doc["bids"] + doc["asks"]))
    assert con.execute(
        "SELECT feed, market, asset_id, count(*), sum(size) FROM book_snapshots GROUP BY ALL ORDER BY feed"
    ).fetchall() == [
        ("kraken", "BTC/USD", None, 20, pytest.approx(kraken_qty)),
        ("polymarket", COND, YES, 3, 185.0),
    ]
    assert con.execute(
        "SELECT feed, trade_id, price, size, epoch_ms(exchange_ts) FROM trades ORDER BY feed, trade_id"
    ).fetchall() == [
        ("kraken", "7", 45285.2, 0.5, 1767614401000),
        ("kraken", "8", 45283.5, 0.25, 1767614401500),
        ("polymarket", "0xabc", 0.52, 12.5, 1767614400500),
    ]
