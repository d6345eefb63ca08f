"""Discontinuity records: ssmd's own small JSON messages, published in the stream.

Each goes to `{env}.{feed}.json.ssmd.{kind}` as one JSON object whose `type` is
`ssmd_{kind}`, so the archive shows every discontinuity in place, between the data
before and after it.
"""

from __future__ import annotations

import json
from typing import ClassVar

import attrs


@attrs.frozen
class ConnectRecord:
    """A WebSocket connection was established; its data follows.

    `read_interval_ms` is the connection's `connector.read_interval`: while frames keep
    arriving, each may wait in the socket up to that long before it is read and its
    `_recv_ns` stamped (0: read at every arrival). Absent in archives written before it
    existed, where it was 0."""

    kind: ClassVar[str] = "connect"
    conn: int
    url: str
    ts_ns: int
    read_interval_ms: float = 0.0


@attrs.frozen
class DisconnectRecord:
    """A WebSocket connection ended; nothing from it follows."""

    kind: ClassVar[str] = "disconnect"
    conn: int
    reason: str
    ts_ns: int


@attrs.frozen
class GapRecord:
    """Messages were lost upstream, as the venue's continuity check shows.

    `reason` says which check: `seq` (Kalshi: `seq` jumped within subscription `sid`;
    `expected` and `got` are seq numbers), `checksum` (Kraken: the kept book's CRC32
    `expected` differs from the `got` in the message; a resubscribe follows), `trade_id`
    (Kraken: a symbol's trade id jumped). `sid` is None for venues without one.
    """

    kind: ClassVar[str] = "gap"
    conn: int
    sid: int | None
    channel: str | None
    expected: int
    got: int
    markets: list[str]
    ts_ns: int
    reason: str = "seq"


@attrs.frozen
class ResubscribeRecord:
    """A subscription was replaced (after a gap), so fresh snapshots follow."""

    kind: ClassVar[str] = "resubscribe"
    conn: int
    reason: str
    channel: str
    old_sid: int | None
    new_sid: int | None
    markets: list[str]
    ts_ns: int


@attrs.frozen
class OverflowRecord:
    """The publish buffer was full (NATS unreachable): these messages were dropped."""

    kind: ClassVar[str] = "overflow"
    dropped: int
    dropped_bytes: int
    first_recv_ns: int
    last_recv_ns: int
    ts_ns: int


@attrs.frozen
class RejectedRecord:
    """JetStream refused a message for good (e.g. larger than the stream allows)."""

    kind: ClassVar[str] = "rejected"
    subject: str
    bytes: int
    error: str
    recv_ns: int
    ts_ns: int


@attrs.frozen
class SubscribeErrorRecord:
    """The exchange refused a subscription: these markets are not being recorded until
    a retry succeeds (its `subscribed` reply shows when)."""

    kind: ClassVar[str] = "subscribe_error"
    conn: int
    channel: str
    markets: list[str]
    error: str
    ts_ns: int


@attrs.frozen
class SubscriptionRecord:
    """What a live connection records changed: `added` markets are recorded from here on,
    `removed` ones no more. `reason`: `discovery` (found by the REST walk at start),
    `lifecycle:<event_type>` (a `market_lifecycle_v2` event), `reconcile` (a periodic
    REST walk disagreed), `error:<code>` (the exchange refused or dropped a subscription,
    or does not know a market: 16), `retry` (a refused subscribe or change went through
    on a later try), `reconnect` (what a reconnect's subscribe adds or drops against the
    slot's last confirmed state), `omitted` (an `ok` left the market out three times)."""

    kind: ClassVar[str] = "subscription"
    conn: int
    sid: int | None
    channel: str
    added: list[str]
    removed: list[str]
    reason: str
    ts_ns: int


@attrs.frozen
class BackfillRecord:
    """Trades lost on `trade` (`cause`: `disconnect`, `gap`, `error:25`) were fetched from
    the venue's REST API for the window `[min_ts, max_ts]` (Unix seconds; `markets` empty:
    all markets): `fetched` trades in the window, of which `published` had not been
    received and were published before this record, each marked backfilled (`_backfilled`
    in the archive), and `skipped` had no `trade_id`. `outcome`: `repaired`; `partial` (the loss began at
    `requested_min_ts`, but trades before `min_ts` could no longer be deduplicated: that
    part is not repaired); `unrepaired` or `dropped` (`error` says why: the trades of
    `[requested_min_ts, max_ts]` may be missing, whatever was published)."""

    kind: ClassVar[str] = "backfill"
    conn: int
    channel: str
    min_ts: int
    max_ts: int
    markets: list[str]
    fetched: int
    published: int
    ts_ns: int
    outcome: str = "repaired"
    requested_min_ts: int | None = None
    cause: str = ""
    error: str | None = None
    skipped: int = 0  # trades REST gave without a `trade_id`: not published


DiscontinuityRecord = (
    ConnectRecord
    | DisconnectRecord
    | GapRecord
    | ResubscribeRecord
    | OverflowRecord
    | RejectedRecord
    | SubscribeErrorRecord
    | SubscriptionRecord
    | BackfillRecord
)


def record_json(record: DiscontinuityRecord) -> bytes:
    body = {"type": f"ssmd_{record.kind}", **attrs.asdict(record)}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
