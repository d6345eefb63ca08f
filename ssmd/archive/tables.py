"""The export's tables: one schema each, and the rows each archived record becomes.

Every table has `recv_ns` (receive time, ns), `seq` (stream sequence) and `market` (the
subject's routing key). Prices and sizes are float64 in the venue's natural unit (Kalshi
dollars and contracts from either message form); the exchange's own time is
`exchange_ts`. A record whose type no table models is still in `raw`, as every record is.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pyarrow as pa

from ssmd.archive.books.kalshi import CENT, delta_price, delta_size, side_levels
from ssmd.archive.records import Record, iso_ns
from ssmd.subjects import DISCONTINUITY_TYPE

Row = dict[str, Any]
# Microseconds: every venue's clock is ms or µs, and DuckDB's TIMESTAMPTZ is µs.
TS = pa.timestamp("us", tz="UTC")
F64 = pa.float64()
STR = pa.string()
_COMMON = [("recv_ns", pa.int64()), ("seq", pa.int64()), ("market", STR)]

SCHEMAS: dict[str, pa.Schema] = {
    name: pa.schema(_COMMON + cols)
    for name, cols in {
        "trades": [
            ("exchange_ts", TS), ("asset_id", STR), ("trade_id", STR),
            ("price", F64), ("size", F64), ("side", STR), ("backfilled", pa.bool_()),
        ],
        "tickers": [
            ("exchange_ts", TS), ("asset_id", STR), ("price", F64), ("bid", F64), ("ask", F64),
            ("bid_size", F64), ("ask_size", F64), ("volume", F64), ("open_interest", F64),
        ],
        "book_snapshots": [
            ("exchange_ts", TS), ("asset_id", STR), ("side", STR), ("level", pa.int32()),
            ("price", F64), ("size", F64),
        ],
        "book_deltas": [
            ("exchange_ts", TS), ("asset_id", STR), ("side", STR), ("price", F64),
            ("delta", F64), ("size", F64),
        ],
        "lifecycle": [("exchange_ts", TS), ("event_type", STR), ("event", STR), ("payload", STR)],
        "markets": [("exchange_ts", TS), ("payload", STR)],
        "discontinuities": [
            ("kind", STR), ("ts", TS), ("conn", pa.int64()), ("reason", STR), ("sid", pa.int64()),
            ("channel", STR), ("markets", pa.list_(STR)), ("count", pa.int64()), ("payload", STR),
        ],
        "raw": [("subject", STR), ("type", STR), ("payload", STR)],
    }.items()
}  # fmt: skip
TABLES = tuple(SCHEMAS)


def _num(value: object, scale: Decimal | None = None) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        d = value if isinstance(value, Decimal) else Decimal(str(value))
    except ArithmeticError:
        return None
    return float(d * scale if scale is not None else d)


def _pick(msg: dict[str, Any], new: tuple[str, ...], cents: str | None) -> float | None:
    """The first present fixed-point field, else the integer-cent one in dollars."""
    for key in new:
        if msg.get(key) is not None:
            return _num(msg[key])
    return _num(msg.get(cents), CENT) if cents is not None else None


def _ts(value: object, unit_ns: int = 1_000_000) -> int | None:
    """Microseconds (the column's unit) from ms/s/ns numbers or RFC 3339 text."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | Decimal):
        return int(value) * unit_ns // 1000
    if isinstance(value, str):
        ns = int(value) * unit_ns if value.isdigit() else iso_ns(value)
        return None if ns is None else ns // 1000
    return None


def _kalshi_ts(msg: dict[str, Any], envelope: dict[str, Any]) -> int | None:
    if msg.get("ts_ms") is not None:
        return _ts(msg["ts_ms"])
    if isinstance(msg.get("ts"), int):
        return _ts(msg["ts"], 1_000_000_000)
    if isinstance(msg.get("ts"), str):
        return _ts(msg["ts"])
    return _ts(envelope.get("sending_ts_ms"))


def _kalshi_rest_trade(trade: dict[str, Any], backfilled: bool) -> Row:
    """A trade as the REST API gives it (a backfilled trade)."""
    ts = trade.get("created_time")
    return {
        "exchange_ts": _ts(ts) if ts is not None else _ts(trade.get("ts"), 1_000_000_000),
        "trade_id": trade.get("trade_id"),
        "price": _pick(trade, ("yes_price_dollars",), "yes_price"),
        "size": _num(trade["count_fp"]) if "count_fp" in trade else _num(trade.get("count")),
        "side": trade.get("taker_side"),
        "backfilled": backfilled,
    }


def _kalshi(record: Record, payload: Any) -> Iterator[tuple[str, Row]]:
    if not isinstance(payload, dict):
        return
    if record.type_token in ("market", "event") and "msg" not in payload:
        # A catalogue record: the REST market or event object itself.
        ts = _ts(payload.get("updated_time") or payload.get("created_time"))
        yield "markets", {"exchange_ts": ts, "payload": record.payload_json()}
        return
    if record.type_token == "trade" and "msg" not in payload:
        yield "trades", _kalshi_rest_trade(payload, record.backfilled)
        return
    if not isinstance(payload.get("msg"), dict):
        return
    msg, kind = payload["msg"], payload.get("type")
    ts = _kalshi_ts(msg, payload)
    if kind == "trade":
        yield "trades", {
            "exchange_ts": ts, "trade_id": msg.get("trade_id"),
            "price": _pick(msg, ("yes_price_dollars",), "yes_price"),
            "size": _pick(msg, ("count_fp",), None) if "count_fp" in msg else _num(msg.get("count")),
            "side": msg.get("taker_side") or msg.get("taker_outcome_side"),
            "backfilled": False,
        }  # fmt: skip
    elif kind in ("ticker", "ticker_v2"):
        yield "tickers", {
            "exchange_ts": ts, "price": _pick(msg, ("price_dollars",), "price"),
            "bid": _pick(msg, ("yes_bid_dollars",), "yes_bid"),
            "ask": _pick(msg, ("yes_ask_dollars",), "yes_ask"),
            "bid_size": _num(msg.get("yes_bid_size_fp")), "ask_size": _num(msg.get("yes_ask_size_fp")),
            "volume": _num(msg.get("volume_fp", msg.get("volume"))),
            "open_interest": _num(msg.get("open_interest_fp", msg.get("open_interest"))),
        }  # fmt: skip
    elif kind == "orderbook_snapshot":
        sides = {side: side_levels(msg, side) for side in ("yes", "no")}
        rows = [
            {
                "exchange_ts": ts,
                "side": side,
                "level": i,
                "price": float(p),
                "size": float(levels[p]),
            }
            for side, levels in sides.items()
            for i, p in enumerate(sorted(levels, reverse=True))
        ]
        yield from (("book_snapshots", r) for r in rows or [{"exchange_ts": ts}])
    elif kind == "orderbook_delta":
        yield "book_deltas", {
            "exchange_ts": ts, "side": msg.get("side"),
            "price": float(delta_price(msg)), "delta": float(delta_size(msg)),
        }  # fmt: skip
    elif record.type_token in ("lifecycle", "event_lifecycle", "event_fee_update") or kind in (
        "market_lifecycle_v2",
        "event_lifecycle",
        "event_fee_update",
    ):
        yield "lifecycle", {
            "exchange_ts": ts, "event_type": msg.get("event_type") or kind,
            "event": msg.get("event_ticker"), "payload": record.payload_json(),
        }  # fmt: skip
    elif record.type_token in ("market", "markets", "catalog"):
        yield "markets", {"exchange_ts": ts, "payload": record.payload_json()}


def _levels(rows: object, key: str = "size") -> list[tuple[Any, Any]]:
    if not isinstance(rows, list):
        return []
    return [(r.get("price"), r.get(key)) for r in rows if isinstance(r, dict)]


def _polymarket(record: Record, payload: Any) -> Iterator[tuple[str, Row]]:
    for event in payload if isinstance(payload, list) else [payload]:
        if not isinstance(event, dict):
            continue
        kind, ts = event.get("event_type"), _ts(event.get("timestamp"))
        asset = event.get("asset_id")
        if kind == "book":
            rows = [
                {"exchange_ts": ts, "asset_id": asset, "side": side, "level": i,
                 "price": _num(p), "size": _num(s)}
                for side, key in (("bid", "bids"), ("ask", "asks"))
                for i, (p, s) in enumerate(sorted(_levels(event.get(key)), key=lambda ps: Decimal(str(ps[0])), reverse=side == "bid"))
            ]  # fmt: skip
            yield from (
                ("book_snapshots", r) for r in rows or [{"exchange_ts": ts, "asset_id": asset}]
            )
        elif kind == "price_change":
            for change in event.get("price_changes") or []:
                yield "book_deltas", {
                    "exchange_ts": ts, "asset_id": change.get("asset_id"),
                    "side": "bid" if str(change.get("side")).upper() == "BUY" else "ask",
                    "price": _num(change.get("price")), "size": _num(change.get("size")),
                }  # fmt: skip
        elif kind == "last_trade_price":
            yield "trades", {
                "exchange_ts": ts, "asset_id": asset, "trade_id": event.get("transaction_hash"),
                "price": _num(event.get("price")), "size": _num(event.get("size")),
                "side": event.get("side"),
            }  # fmt: skip
        elif kind == "best_bid_ask":
            yield "tickers", {
                "exchange_ts": ts, "asset_id": asset,
                "bid": _num(event.get("best_bid")), "ask": _num(event.get("best_ask")),
            }  # fmt: skip
        elif kind in ("tick_size_change", "market_resolved"):
            yield "lifecycle", {
                "exchange_ts": ts, "event_type": kind, "event": event.get("market"),
                "payload": record.payload_json(),
            }  # fmt: skip
        elif kind == "new_market":
            yield "markets", {"exchange_ts": ts, "payload": record.payload_json()}


def _kraken(record: Record, payload: Any) -> Iterator[tuple[str, Row]]:
    if not isinstance(payload, dict):
        return
    channel, snapshot = payload.get("channel"), payload.get("type") == "snapshot"
    for item in payload.get("data") or []:
        if not isinstance(item, dict):
            continue
        ts = _ts(item.get("timestamp"))
        if channel == "book" and snapshot:
            rows = [
                {"exchange_ts": ts, "side": side, "level": i, "price": _num(p), "size": _num(q)}
                for side, key in (("bid", "bids"), ("ask", "asks"))
                for i, (p, q) in enumerate(_levels(item.get(key), "qty"))
            ]
            yield from (("book_snapshots", r) for r in rows or [{"exchange_ts": ts}])
        elif channel == "book":
            for side, key in (("bid", "bids"), ("ask", "asks")):
                for p, q in _levels(item.get(key), "qty"):
                    yield (
                        "book_deltas",
                        {"exchange_ts": ts, "side": side, "price": _num(p), "size": _num(q)},
                    )
        elif channel == "trade":
            yield "trades", {
                "exchange_ts": ts, "trade_id": str(item.get("trade_id")),
                "price": _num(item.get("price")), "size": _num(item.get("qty")), "side": item.get("side"),
            }  # fmt: skip
        elif channel == "ticker":
            yield "tickers", {
                "exchange_ts": ts, "price": _num(item.get("last")), "bid": _num(item.get("bid")),
                "ask": _num(item.get("ask")), "bid_size": _num(item.get("bid_qty")),
                "ask_size": _num(item.get("ask_qty")), "volume": _num(item.get("volume")),
            }  # fmt: skip
        elif channel == "instrument":
            yield "markets", {"exchange_ts": ts, "payload": json_text(item)}
    if channel == "status":
        yield "lifecycle", {"event_type": "status", "payload": record.payload_json()}


def json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _discontinuity(record: Record, payload: Any) -> Iterator[tuple[str, Row]]:
    body = payload if isinstance(payload, dict) else {}
    markets = body.get("markets")
    kind = record.subject.rsplit(".", 1)[-1]
    reason, count = body.get("reason") or body.get("error"), body.get("dropped")
    if kind == "backfill":
        # Its outcome (`repaired`, `partial`, `unrepaired: why`) and the trades published.
        outcome = body.get("outcome", "repaired")
        reason = f"{outcome}: {body['error']}" if body.get("error") else outcome
        count = body.get("published")
    yield "discontinuities", {
        "kind": kind, "ts": _ts(body.get("ts_ns"), 1),
        "conn": body.get("conn") if isinstance(body.get("conn"), int) else None,
        "reason": reason,
        "sid": body.get("sid", body.get("new_sid")) if isinstance(body.get("sid", body.get("new_sid")), int) else None,
        "channel": body.get("channel"),
        "markets": [str(m) for m in markets] if isinstance(markets, list) else None,
        "count": count if isinstance(count, int) else None,
        "payload": record.payload_json(),
    }  # fmt: skip


Extractor = Callable[[Record, Any], Iterator[tuple[str, Row]]]
EXTRACTORS: dict[str, Extractor] = {
    "kalshi": _kalshi,
    "polymarket": _polymarket,
    "kraken": _kraken,
}


def extractor_for(feed: str) -> Extractor | None:
    for name, fn in EXTRACTORS.items():
        if feed == name or feed.startswith(name + "-") or feed.startswith(name + "_"):
            return fn
    return None


def record_rows(
    record: Record, extract: Extractor | None, untyped: Counter[str] | None = None
) -> Iterator[tuple[str, Row]]:
    """(table, row) for every row the record becomes, `raw` included; common columns set.
    A record whose typed rows cannot be made is counted in `untyped` by type token."""
    base = {"recv_ns": record.recv_ns, "seq": record.seq, "market": record.market}
    payload = record.payload()
    yield (
        "raw",
        {
            **base,
            "subject": record.subject,
            "type": record.type_token,
            "payload": record.payload_json(),
        },
    )
    if record.type_token == DISCONTINUITY_TYPE:
        typed: Iterator[tuple[str, Row]] = _discontinuity(record, payload)
    elif extract is None:
        return
    else:
        typed = extract(record, payload)
    try:
        rows = list(typed)
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError):
        if untyped is not None:
            untyped[record.type_token] += 1
        return  # a message of an unexpected shape: it stays in `raw`, whole
    for table, row in rows:
        yield table, {**base, **row}
