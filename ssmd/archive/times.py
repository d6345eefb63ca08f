"""Times as the reading commands take them: ISO 8601 UTC, an epoch number (seconds,
milliseconds, microseconds or nanoseconds, told apart by its digits), or `HH:MM[:SS]` on
a given day; and intervals like `500ms`, `1s`, `5m`, `1h`."""

from __future__ import annotations

import re
import time
from decimal import Decimal

from ssmd.archive.errors import ArchiveError
from ssmd.archive.records import iso_ns

NS = 1_000_000_000
_EPOCH = re.compile(r"\d+(?:\.\d+)?")
# Digits of an epoch number's whole part -> ns per unit (18 and more: nanoseconds).
_EPOCH_SCALE = {**dict.fromkeys(range(1, 12), NS), 13: 1_000_000, 16: 1_000}
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
    if _EPOCH.fullmatch(text):
        whole = text.split(".")[0]
        scale = _EPOCH_SCALE.get(len(whole), 1 if len(whole) >= 18 else None)
        if scale is None or (scale != NS and "." in text):
            raise ArchiveError(
                f"cannot read time {value!r}: an epoch number is seconds (up to 11 digits, "
                "may have a fraction), milliseconds (13), microseconds (16) or nanoseconds "
                f"(18 or more); {len(whole)} digits is ambiguous"
            )
        return int(Decimal(text) * scale)
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
            "epoch seconds, ms, µs or ns" + (" or HH:MM[:SS]" if day is not None else "")
        )
    return ns


def utc_text(ns: int, digits: int = 9, fmt: str = "%Y-%m-%dT%H:%M:%S") -> str:
    """RFC 3339 UTC text of `ns` with `digits` (0, 3 or 9) of the second's fraction."""
    text = time.strftime(fmt, time.gmtime(ns // NS))
    if digits:
        text += f".{ns % NS:09d}"[: digits + 1]
    return text + "Z"


def iso_ms(ns: int) -> str:
    return utc_text(ns, 3)


def parse_interval(value: str) -> int:
    match = _INTERVAL.match(value)
    if match is None or float(match.group(1)) <= 0:
        raise ArchiveError(f"cannot read interval {value!r}: use e.g. 500ms, 1s, 5m, 1h")
    return int(float(match.group(1)) * _UNITS[match.group(2)])
