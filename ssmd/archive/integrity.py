"""Which markets a discontinuity touches, and why: the one rule books and coverage share.

ssmd's records (`{env}.{feed}.json.ssmd.{kind}`) and the manifest's stream gaps each
become an `Interruption`. `markets` is None when every market of the feed is touched
(a disconnect, an overflow, a stream gap: nothing says which markets lost messages).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from ssmd.archive.records import Record, iso_ns
from ssmd.archive.times import iso_ms
from ssmd.archiver.manifest import Gap
from ssmd.subjects import DISCONTINUITY_TYPE, split_subject

STREAM_GAP = "stream_gap"


@attrs.frozen
class Interruption:
    kind: str
    at_ns: int | None
    reason: str
    markets: frozenset[str] | None
    seq: float
    detail: dict[str, Any] = attrs.field(factory=dict, eq=False)

    def touches(self, market: str) -> bool:
        return self.markets is None or market in self.markets

    def describe(self) -> str:
        when = f" at {iso_ms(self.at_ns)}" if self.at_ns is not None else ""
        return f"{self.reason}{when}"


def _markets(value: object) -> frozenset[str] | None:
    if isinstance(value, list) and value:
        return frozenset(str(m) for m in value)
    return None


class ConnectionTracker:
    """A `connect` for a connection already up means its predecessor died unrecorded
    (kill -9): everything is touched. A first connect touches nothing."""

    def __init__(self) -> None:
        self.up: set[object] = set()

    def connect(self, conn: object) -> bool:
        seen = conn in self.up
        self.up.add(conn)
        return seen

    def disconnect(self, conn: object) -> None:
        self.up.discard(conn)


def interruption(record: Record, tracker: ConnectionTracker) -> Interruption | None:
    """The interruption a record stands for, or None (data, or a harmless connect)."""
    if record.type_token != DISCONTINUITY_TYPE:
        return None
    kind = record.subject.rsplit(".", 1)[-1]
    body = record.payload()
    if not isinstance(body, dict):
        body = {}
    at = body.get("ts_ns") if isinstance(body.get("ts_ns"), int) else record.recv_ns
    seq = float(record.seq)
    conn = body.get("conn")
    if kind == "connect":
        if not tracker.connect(conn):
            return None
        return Interruption(
            kind, at, f"conn {conn} reconnected with no disconnect record", None, seq, body
        )
    if kind == "disconnect":
        tracker.disconnect(conn)
        return Interruption(
            kind, at, f"disconnect (conn {conn}: {body.get('reason', '?')})", None, seq, body
        )
    if kind == "gap":
        reason = (
            f"exchange gap on sid {body.get('sid')} ({body.get('channel')}): "
            f"seq {body.get('expected')} expected, {body.get('got')} received"
        )
        return Interruption(kind, at, reason, _markets(body.get("markets")), seq, body)
    if kind == "resubscribe":
        reason = f"resubscribe of {body.get('channel')} ({body.get('reason', '?')})"
        return Interruption(kind, at, reason, _markets(body.get("markets")), seq, body)
    if kind == "overflow":
        # Written once the buffer drains: the drops happened from first_recv_ns on.
        first = body.get("first_recv_ns")
        reason = f"overflow: {body.get('dropped', '?')} message(s) dropped"
        return Interruption(kind, first if isinstance(first, int) else at, reason, None, seq, body)
    if kind == "rejected":
        _type, market = split_subject(str(body.get("subject", "")))
        markets = frozenset([market]) if market else None
        reason = f"rejected by JetStream: {body.get('error', '?')}"
        return Interruption(kind, at, reason, markets, seq, body)
    if kind == "subscribe_error":
        reason = f"subscribe error on {body.get('channel')}: {body.get('error', '?')}"
        return Interruption(kind, at, reason, _markets(body.get("markets")), seq, body)
    if kind == "subscription":
        # Market discovery began or ended these markets' capture: only they are touched.
        added_value, removed_value = body.get("added"), body.get("removed")
        added = added_value if isinstance(added_value, list) else []
        removed = removed_value if isinstance(removed_value, list) else []
        reason = (
            f"subscription change on {body.get('channel')} ({body.get('reason', '?')}): "
            f"{len(added)} added, {len(removed)} removed"
        )
        return Interruption(kind, at, reason, _markets([*added, *removed]), seq, body)
    if kind == "backfill":
        # Late trades for a loss the disconnect or gap record already marks: none missing.
        return None
    return Interruption(kind, at, f"ssmd {kind}", None, seq, body)


def overflow_span(item: Interruption) -> tuple[int, int] | None:
    """An overflow's (first_recv_ns, last_recv_ns): when messages were being dropped."""
    first, last = item.detail.get("first_recv_ns"), item.detail.get("last_recv_ns")
    if item.kind != "overflow" or not isinstance(first, int) or not isinstance(last, int):
        return None
    return first, max(first, last)


def stream_gaps(gaps: Iterable[Gap]) -> list[Interruption]:
    """The manifest's stream gaps, each placed right after its `after_seq`."""
    out = []
    for gap in gaps:
        bound = "" if gap.exact else " at most"
        out.append(
            Interruption(
                STREAM_GAP,
                iso_ns(gap.detected_at),
                f"stream gap:{bound} {gap.missing_count} message(s) after seq {gap.after_seq}",
                None,
                gap.after_seq + 0.5,
                {"after_seq": gap.after_seq, "missing_count": gap.missing_count},
            )
        )
    return out
