"""Route one Kalshi message to its subject, reading only type, sid, seq and the key.

The payload itself is never rewritten: the router only decides where the received
bytes go. Routing never raises: anything that cannot be routed goes to the fallback
subject `{env}.{feed}.json.unrouted.{type or "invalid"}`.
"""

from __future__ import annotations

import enum
import json
from typing import Any

import attrs

from ssmd.feeds.base import MAX_TOKEN_CHARS
from ssmd.subjects import RESERVED_TYPES, encode_token, fallback_subject

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

_TOKEN_CACHE_LIMIT = 100_000


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


def _int_field(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Router:
    def __init__(self, env: str, feed: str) -> None:
        self._prefix = f"{env}.{feed}.json."
        self._env = env
        self._feed = feed
        self._tokens: dict[str, str] = {}

    def _token(self, text: str) -> str:
        token = self._tokens.get(text)
        if token is None:
            token = encode_token(text)
            if len(self._tokens) >= _TOKEN_CACHE_LIMIT:
                self._tokens.clear()
            self._tokens[text] = token
        return token

    def _unrouted(
        self, reason: str, message_type: str | None = None, sid: int | None = None
    ) -> Routed:
        type_token = message_type if message_type and len(message_type) <= MAX_TOKEN_CHARS else None
        return Routed(
            RouteKind.UNROUTED,
            fallback_subject(self._env, self._feed, type_token),
            message_type=message_type,
            sid=sid,
            reason=reason,
        )

    def route(self, payload: bytes) -> Routed:
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
        sid = _int_field(envelope.get("sid"))
        seq = _int_field(envelope.get("seq"))
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
        body = envelope.get("msg")
        key: object = None
        if isinstance(body, dict):
            for field in key_fields:
                key = body.get(field)
                if key is not None:
                    break
        if not isinstance(key, str) or not key:
            routed = self._unrouted("no routing key", message_type, sid)
            return attrs.evolve(routed, seq=seq)
        if len(key) > MAX_TOKEN_CHARS:
            routed = self._unrouted("routing key too long", message_type, sid)
            return attrs.evolve(routed, seq=seq)
        trade_id = (
            body.get("trade_id") if message_type == "trade" and isinstance(body, dict) else None
        )
        return Routed(
            RouteKind.DATA,
            self._prefix + type_token + "." + self._token(key),
            message_type=message_type,
            sid=sid,
            seq=seq,
            key=key,
            trade_id=trade_id if isinstance(trade_id, str) else None,
        )
