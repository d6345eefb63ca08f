"""Aligned wall-clock slots: `1200.jsonl.gz` holds 12:00:00 up to 12:15:00 UTC (15m)."""

from __future__ import annotations

import time

NS = 1_000_000_000
DAY_S = 86_400


def slot_start(wall_ns: int, interval_s: int) -> int:
    step = interval_s * NS
    return wall_ns - wall_ns % step


def slot_label(start_ns: int, interval_s: int) -> str:
    """`HHMM`, or `HHMMSS` for intervals that are not whole minutes."""
    t = time.gmtime(start_ns // NS)
    if interval_s % 60 == 0:
        return f"{t.tm_hour:02d}{t.tm_min:02d}"
    return f"{t.tm_hour:02d}{t.tm_min:02d}{t.tm_sec:02d}"


def day_of(wall_ns: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(wall_ns // NS))


def iso(wall_ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall_ns // NS))


def label_to_start(day: str, label: str) -> int:
    """Inverse of `slot_label` within `day` (YYYY-MM-DD)."""
    t = time.strptime(day, "%Y-%m-%d")
    base = _utc_midnight(t)
    hours, minutes = int(label[0:2]), int(label[2:4])
    seconds = int(label[4:6]) if len(label) == 6 else 0
    return (base + hours * 3600 + minutes * 60 + seconds) * NS


def _utc_midnight(t: time.struct_time) -> int:
    import calendar

    return calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
