"""Coverage: which hours (and markets) of a day the archive holds completely.

An hour is `degraded` when an interruption touches it: an exchange gap, a disconnect
(for as long as it lasted, until that connection's next `connect`), a resubscribe, an
overflow, a rejected message, a subscribe error, a stream gap from the manifest, the
start of recording (a first `connect`) or its end (a `shutdown` disconnect), a trade
backfill window left unrepaired (its trades may be missing; for the hours of the window).
With markets, only the interruptions that name a market (or name none: all) touch it.
Trade windows a backfill repaired are listed under `repaired`, without degrading.
A backfill record is written when its window is done, which may be after midnight: the
first LATE_BACKFILL_FILES of the next day (ssmd.archive.late) are read for those whose
window touches the day.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs

from ssmd.archive.integrity import (
    STREAM_GAP,
    ConnectionTracker,
    Interruption,
    backfill_span,
    interruption,
    overflow_span,
    repaired_trades,
    stream_gaps,
    unrepaired_trades,
)
from ssmd.archive.late import day_bounds, late_backfills
from ssmd.archive.records import Record
from ssmd.archive.store import file_lines, read_manifest
from ssmd.archive.times import iso_ms, utc_text
from ssmd.archiver.lines import read_prefix
from ssmd.subjects import DISCONTINUITY_TYPE, split_subject

NS = 1_000_000_000
HOUR = 3600 * NS


@attrs.define
class Reason:
    kind: str
    at_ns: int | None
    detail: str
    duration_ns: int | None = None
    markets: frozenset[str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "at": iso_ms(self.at_ns) if self.at_ns is not None else None,
            "detail": self.detail,
        }
        if self.duration_ns is not None:
            out["duration_s"] = round(self.duration_ns / NS, 3)
        if self.markets is not None:
            out["markets"] = sorted(self.markets)
        return out

    def hours(self) -> range:
        if self.at_ns is None:
            return range(0)
        first = self.at_ns // HOUR
        last = (self.at_ns + (self.duration_ns or 0)) // HOUR
        return range(first, last + 1)


def _reasons(interruptions: list[tuple[Interruption, bool]], day_end: int) -> list[Reason]:
    """Turn interruptions into reasons; disconnects last until the conn's next connect."""
    out: list[Reason] = []
    open_disconnects: dict[object, Reason] = {}
    for item, plain_connect in interruptions:
        if plain_connect:  # closes that connection's disconnect, or recording starts
            connect_conn = item.detail.get("conn")
            reason = open_disconnects.pop(connect_conn, None)
            if reason is not None and reason.at_ns is not None and item.at_ns is not None:
                reason.duration_ns = item.at_ns - reason.at_ns
            elif reason is None:
                out.append(
                    Reason("start", item.at_ns, f"recording starts (conn {connect_conn} connects)")
                )
            continue
        if item.kind == "disconnect":
            detail = str(item.detail.get("reason", ""))
            kind = "end" if detail.startswith("shutdown") else "disconnect"
            reason = Reason(kind, item.at_ns, item.reason)
            if kind == "disconnect":
                open_disconnects[item.detail.get("conn")] = reason
            out.append(reason)
            continue
        span = overflow_span(item) or stream_gap_span(item) or backfill_span(item)
        if span is not None:
            out.append(Reason(item.kind, span[0], item.reason, span[1] - span[0], item.markets))
            continue
        out.append(Reason(item.kind, item.at_ns, item.reason, markets=item.markets))
    for reason in open_disconnects.values():
        if reason.at_ns is not None:
            reason.duration_ns = max(0, day_end - reason.at_ns)
            reason.detail += " (not reconnected this day)"
    return out


def stream_gap_span(item: Interruption) -> tuple[int, int] | None:
    """A stream gap's span: from the receive time of the record before it to that of
    the record after it (set by `coverage`)."""
    start, end = item.detail.get("start_ns"), item.detail.get("end_ns")
    if item.kind != STREAM_GAP or not isinstance(start, int) or not isinstance(end, int):
        return None
    return start, max(start, end)


def coverage(root: Path, feed: str, day: str, by_market: bool = False) -> dict[str, Any]:
    manifest = read_manifest(root, feed, day)
    per_hour: Counter[int] = Counter()
    per_market: Counter[tuple[int, str]] = Counter()
    tracker = ConnectionTracker()
    found: list[tuple[Interruption, bool]] = []
    repairs: list[Reason] = []
    last_recv: int | None = None
    gaps = sorted(stream_gaps(manifest.gaps), key=lambda g: g.seq)
    open_gaps = list(gaps)
    for entry in manifest.files:
        for line in file_lines(root / feed / day / entry.name, validate=True):
            prefix = read_prefix(line)
            if prefix is None:
                continue
            seq, subject, recv = prefix
            while open_gaps and open_gaps[0].seq < seq:
                gap = open_gaps.pop(0)
                gap.detail.update(start_ns=last_recv, end_ns=recv)
            last_recv = recv if recv is not None else last_recv
            if last_recv is None:
                continue
            hour = last_recv // HOUR
            per_hour[hour] += 1
            type_token, market = split_subject(subject)
            if market is not None:
                per_market[(hour, market)] += 1
            if type_token == DISCONTINUITY_TYPE:
                record = Record(seq, subject, recv, line, str(root / feed / day / entry.name))
                conn = record.payload().get("conn") if isinstance(record.payload(), dict) else None
                was_up = conn in tracker.up
                item = interruption(record, tracker)
                if subject.endswith(".connect") and not was_up and item is None:
                    at = (
                        record.payload().get("ts_ns", recv)
                        if isinstance(record.payload(), dict)
                        else recv
                    )
                    found.append(
                        (
                            Interruption("connect", at, "connect", None, seq, {"conn": conn}),
                            True,  # a plain connect
                        )
                    )
                elif item is not None:
                    found.append((item, False))
                if subject.endswith(".backfill") and isinstance(record.payload(), dict):
                    repair = repaired_trades(record.payload())
                    span = backfill_span(repair) if repair is not None else None
                    if repair is not None and span is not None:
                        duration = span[1] - span[0]
                        repairs.append(
                            Reason("backfill", span[0], repair.reason, duration, repair.markets)
                        )
    found += [(gap, False) for gap in gaps]
    day_start, day_end = day_bounds(day)
    for late, late_repair in _late_backfills(root, feed, day, day_end):
        if late is not None:
            found.append((late, False))
        if late_repair is not None:
            repairs.append(late_repair)
    found.sort(key=lambda pair: pair[0].seq)
    reasons = _reasons(found, day_end)
    # Every hour of the day (up to now, for today): an hour without a record is not
    # complete, it is missing.
    last_hour = min(day_end, time.time_ns() // HOUR * HOUR + HOUR) // HOUR
    hours = list(range(day_start // HOUR, max(last_hour, day_start // HOUR + 1)))
    result: dict[str, Any] = {"feed": feed, "date": day, "hours": []}
    for hour in hours:
        touching = [r for r in reasons if hour in r.hours()]
        if not per_hour[hour]:
            touching.insert(0, Reason("no_data", hour * HOUR, "no records in this hour"))
        repaired = [r for r in repairs if hour in r.hours()]
        result["hours"].append(
            _row(
                {"hour": utc_text(hour * HOUR, 0, "%Y-%m-%dT%H:00"), "records": per_hour[hour]},
                touching,
                repaired,
            )
        )
    if by_market:
        markets = sorted({m for (_h, m) in per_market})
        rows = []
        for hour in hours:
            for market in markets:
                touching = [
                    r
                    for r in reasons
                    if hour in r.hours() and (r.markets is None or market in r.markets)
                ]
                repaired = [
                    r
                    for r in repairs
                    if hour in r.hours() and (r.markets is None or market in r.markets)
                ]
                n = per_market[(hour, market)]
                if n or touching:
                    rows.append(
                        _row(
                            {
                                "hour": utc_text(hour * HOUR, 0, "%Y-%m-%dT%H:00"),
                                "market": market,
                                "records": n,
                            },
                            touching,
                            repaired,
                        )
                    )
        result["markets"] = rows
    return result


def _late_backfills(
    root: Path, feed: str, day: str, day_end: int
) -> list[tuple[Interruption | None, Reason | None]]:
    """Backfill records written early the next day whose window began before `day_end`:
    what each left unrepaired, and what it repaired."""
    out: list[tuple[Interruption | None, Reason | None]] = []
    for record in late_backfills(root, feed, day):
        body = record.payload()
        if not isinstance(body, dict):
            continue
        lost = unrepaired_trades(body, record.seq)
        span = backfill_span(lost) if lost is not None else None
        late = lost if span is not None and span[0] < day_end else None
        fixed = repaired_trades(body)
        fixed_span = backfill_span(fixed) if fixed is not None else None
        repair = None
        if fixed is not None and fixed_span is not None and fixed_span[0] < day_end:
            duration = fixed_span[1] - fixed_span[0]
            repair = Reason("backfill", fixed_span[0], fixed.reason, duration, fixed.markets)
        if late is not None or repair is not None:
            out.append((late, repair))
    return out


def _row(base: dict[str, Any], touching: list[Reason], repaired: list[Reason]) -> dict[str, Any]:
    base["status"] = "degraded" if touching else "complete"
    base["reasons"] = [r.to_json() for r in touching]
    if repaired:
        # Trades lost in these spans were fetched again (backfilled): shown, not degrading.
        base["repaired"] = [r.to_json() for r in repaired]
    return base
