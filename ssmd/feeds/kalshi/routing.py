"""Route one Kalshi message to its subject, reading only type, sid, seq and the key.

The payload itself is never rewritten: the router only decides where the received
bytes go. Routing never raises: anything that cannot be routed goes to the fallback
subject `{env}.{feed}.json.unrouted.{type or "invalid"}`.

Every frame is decoded by msgspec into a struct of just those fields (the rest of the
document is checked and skipped, never built into Python objects). Anything that
decoder refuses, and every control reply, takes the `json.loads` path, so an odd frame
is classified exactly as the standard library would.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from typing import Any

import attrs
import msgspec

from ssmd.feeds.base import MAX_TOKEN_CHARS, Subjects
from ssmd.subjects import RESERVED_TYPES
from ssmd.text import is_utf8

# Replies to commands: control, never archived.
CONTROL_TYPES = frozenset({"subscribed", "ok", "unsubscribed", "error"})

# The subject's type token per Kalshi type (both orderbook types share `orderbook`).
TYPE_TOKENS: dict[str, str] = {
    "ticker": "ticker",
    "ticker_v2": "ticker_v2",
    "trade": "trade",
    "orderbook_snapshot": "orderbook",
    "orderbook_delta": "orderbook",
    "market_lifecycle_v2": "lifecycle",
    "event_lifecycle": "event_lifecycle",
}
KEY_FIELDS: dict[str, tuple[str, ...]] = {"event_lifecycle": ("event_ticker",)}
DEFAULT_KEY_FIELDS: tuple[str, ...] = ("market_ticker",)
UNKNOWN_TYPE_KEY_FIELDS: tuple[str, ...] = ("market_ticker", "event_ticker")

_Body = msgspec.defstruct(
    "_Body",
    [
        (name, object, None)
        for name in sorted(
            {
                *DEFAULT_KEY_FIELDS,
                *UNKNOWN_TYPE_KEY_FIELDS,
                *(f for v in KEY_FIELDS.values() for f in v),
                "trade_id",  # a trade's id, for the trade backfill
                "ts_ms",  # exchange time (ms), for the trade backfill's window and settle
                "ts",
            }
        )
    ],
)


class _Envelope(msgspec.Struct):
    type: object = None
    sid: object = None
    seq: object = None
    sending_ts_ms: object = None
    msg: _Body | None = None  # type: ignore[valid-type]


_decode_envelope = msgspec.json.Decoder(_Envelope).decode


class RouteKind(enum.Enum):
    DATA = "data"
    CONTROL = "control"
    UNROUTED = "unrouted"


@attrs.frozen(slots=True)
class Routed:
    kind: RouteKind
    subject: str | None
    message_type: str | None = None
    sid: int | None = None
    seq: int | None = None
    key: str | None = None
    envelope: dict[str, Any] | None = None
    reason: str = ""
    trade_id: str | None = None  # a `trade` message's id (trade backfill drops repeats)
    # The exchange's time of the message in ns (`ts_ms`, the envelope's `sending_ts_ms`,
    # else whole-second `ts`), for the trade backfill: None when it carries none.
    exchange_ns: int | None = None


def exchange_ns(ts_ms: object, sending_ts_ms: object, ts: object) -> int | None:
    for value, scale in ((ts_ms, 1_000_000), (sending_ts_ms, 1_000_000), (ts, 1_000_000_000)):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value * scale
    return None


def _int_field(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Router:
    def __init__(self, env: str, feed: str) -> None:
        self._subjects = Subjects(env, feed)
        self._prefix = self._subjects.prefix
        self._token = self._subjects.token  # encoded tokens, cached

    def _unrouted(
        self, reason: str, message_type: str | None = None, sid: int | None = None
    ) -> Routed:
        return Routed(
            RouteKind.UNROUTED,
            self._subjects.unrouted(message_type),
            message_type=message_type,
            sid=sid,
            reason=reason,
        )

    def route(self, payload: bytes) -> Routed:
        if not is_utf8(payload):
            return self._unrouted("not JSON")
        try:
            fields = _decode_envelope(payload)
        except (msgspec.MsgspecError, RecursionError):
            return self._route_parsed(payload)
        message_type = fields.type
        if not isinstance(message_type, str) or not message_type:
            return self._unrouted("no type")
        if message_type in CONTROL_TYPES:
            return self._route_parsed(payload)
        body = fields.msg
        return self._route_data(
            message_type,
            _int_field(fields.sid),
            _int_field(fields.seq),
            lambda field: getattr(body, field) if body is not None else None,
            fields.sending_ts_ms,
        )

    def _route_parsed(self, payload: bytes) -> Routed:
        """The standard library's reading of a frame msgspec refused, or a control reply."""
        try:
            envelope = json.loads(payload.decode("utf-8"))
        except (ValueError, RecursionError):
            return self._unrouted("not JSON")
        if not isinstance(envelope, dict):
            return self._unrouted("not a JSON object")
        message_type = envelope.get("type")
        if not isinstance(message_type, str) or not message_type:
            return self._unrouted("no type")
        if message_type in CONTROL_TYPES:
            return Routed(RouteKind.CONTROL, None, message_type=message_type, envelope=envelope)
        body = envelope.get("msg")
        return self._route_data(
            message_type,
            _int_field(envelope.get("sid")),
            _int_field(envelope.get("seq")),
            lambda field: body.get(field) if isinstance(body, dict) else None,
            envelope.get("sending_ts_ms"),
        )

    def _route_data(
        self,
        message_type: str,
        sid: int | None,
        seq: int | None,
        body_field: Callable[[str], object],
        sending_ts_ms: object = None,
    ) -> Routed:
        if message_type in RESERVED_TYPES:
            return self._unrouted("type collides with an ssmd subject token", message_type, sid)
        type_token = TYPE_TOKENS.get(message_type)
        if type_token is None:
            if len(message_type) > MAX_TOKEN_CHARS:
                return self._unrouted("type too long", None, sid)
            type_token = self._token(message_type)
            key_fields = UNKNOWN_TYPE_KEY_FIELDS
        else:
            key_fields = KEY_FIELDS.get(message_type, DEFAULT_KEY_FIELDS)
        key: object = None
        for field in key_fields:
            key = body_field(field)
            if key is not None:
                break
        if not isinstance(key, str) or not key:
            routed = self._unrouted("no routing key", message_type, sid)
            return attrs.evolve(routed, seq=seq)
        if len(key) > MAX_TOKEN_CHARS:
            routed = self._unrouted("routing key too long", message_type, sid)
            return attrs.evolve(routed, seq=seq)
        trade_id = body_field("trade_id") if message_type == "trade" else None
        return Routed(
            RouteKind.DATA,
            self._prefix + type_token + "." + self._token(key),
            message_type=message_type,
            sid=sid,
            seq=seq,
            key=key,
            trade_id=trade_id if isinstance(trade_id, str) else None,
            exchange_ns=exchange_ns(body_field("ts_ms"), sending_ts_ms, body_field("ts")),
        )
