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
from ssmd.archive.times import iso_ms, utc_text
from ssmd.archiver.manifest import Gap
from ssmd.subjects import DISCONTINUITY_TYPE, split_subject

STREAM_GAP = "stream_gap"
NS = 1_000_000_000


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

    @property
    def trades_only(self) -> bool:
        """Only the trades of its markets may be missing (a trade backfill that did not
        repair its window): an order book is untouched."""
        return self.kind == "backfill"

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
        # Repaired: late trades for a loss the disconnect or gap record already marks,
        # none missing. Not (or partly) repaired: the window's trades may be missing.
        return unrepaired_trades(body, seq)
    return Interruption(kind, at, f"ssmd {kind}", None, seq, body)


def backfill_fields(body: dict[str, Any]) -> tuple[int, int, int] | None:
    """A backfill record's (requested_min_ts, min_ts, max_ts), None if malformed."""
    low, high = body.get("min_ts"), body.get("max_ts")
    if not isinstance(low, int) or not isinstance(high, int):
        return None
    requested = body.get("requested_min_ts")
    return (requested if isinstance(requested, int) else low), low, high


def unrepaired_trades(body: dict[str, Any], seq: float) -> Interruption | None:
    """The span of a trade backfill window left unrepaired: all of it (`unrepaired`,
    `dropped`), the part before the ledger's horizon (`partial`), or None (`repaired`)."""
    outcome = body.get("outcome", "repaired")
    span = backfill_fields(body)
    if outcome == "repaired" or span is None:
        return None
    requested, low, high = span
    end = low if outcome == "partial" else high + 1
    why = body.get("error") or "before the trade ledger's horizon"
    reason = (
        f"trades of {body.get('channel')} {_second_text(requested)}..{_second_text(end)} "
        f"not repaired ({outcome}: {why})"
    )
    detail = {**body, "start_ns": requested * NS, "end_ns": end * NS}
    return Interruption(
        "backfill", requested * NS, reason, _markets(body.get("markets")), seq, detail
    )


def repaired_trades(body: dict[str, Any]) -> Interruption | None:
    """The span a trade backfill repaired (`repaired`, `partial`), for readers that show
    repairs beside the interruptions."""
    span = backfill_fields(body)
    if span is None or body.get("outcome", "repaired") not in ("repaired", "partial"):
        return None
    _, low, high = span
    reason = (
        f"trades of {body.get('channel')} {_second_text(low)}..{_second_text(high + 1)} repaired: "
        f"{body.get('published', '?')} backfilled"
    )
    detail = {**body, "start_ns": low * NS, "end_ns": (high + 1) * NS}
    return Interruption("backfill", low * NS, reason, _markets(body.get("markets")), 0.0, detail)


def backfill_span(item: Interruption) -> tuple[int, int] | None:
    start, end = item.detail.get("start_ns"), item.detail.get("end_ns")
    if item.kind != "backfill" or not isinstance(start, int) or not isinstance(end, int):
        return None
    return start, max(start, end)


def _second_text(seconds: int) -> str:
    return utc_text(seconds * NS, 0)


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
