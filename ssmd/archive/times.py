"""Times as the reading commands take them: ISO 8601 UTC, integer nanoseconds, epoch
seconds, or `HH:MM[:SS]` on a given day; and intervals like `500ms`, `1s`, `5m`, `1h`."""

from __future__ import annotations

import re

from ssmd.archive.errors import ArchiveError
from ssmd.archive.records import iso_ns

NS = 1_000_000_000
_NS_DIGITS = 15  # an integer this long is nanoseconds, not seconds
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d)\s*$")
_UNITS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": NS,
    "m": 60 * NS,
    "h": 3600 * NS,
    "d": 86400 * NS,
}


def parse_time(value: str, day: str | None = None) -> int:
    """Nanoseconds since the epoch; ArchiveError naming the accepted forms otherwise."""
    text = value.strip()
    if text.isdigit() and len(text) >= _NS_DIGITS:
        return int(text)
    try:
        return int(float(text) * NS)
    except (ValueError, OverflowError):  # not a number; inf
        pass
    if "T" not in text and " " not in text and ":" in text and day is not None:
        text = f"{day}T{text}"
    if len(text) == 10 and text[4] == "-":
        text += "T00:00:00"
    elif re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(Z)?", text):
        text = text.rstrip("Z") + ":00Z"
    ns = iso_ns(text)
    if ns is None:
        raise ArchiveError(
            f"cannot read time {value!r}: use ISO 8601 UTC (2026-01-05T12:00:00.5Z), "
            "integer nanoseconds, epoch seconds" + (" or HH:MM[:SS]" if day is not None else "")
        )
    return ns


def parse_interval(value: str) -> int:
    match = _INTERVAL.match(value)
    if match is None or float(match.group(1)) <= 0:
        raise ArchiveError(f"cannot read interval {value!r}: use e.g. 500ms, 1s, 5m, 1h")
    return int(float(match.group(1)) * _UNITS[match.group(2)])
