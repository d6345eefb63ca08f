"""Kraken v2 frames as the simulator writes them: compact JSON with prices and quantities
as numbers in their exact digits, RFC 3339 times, and the levels a depth sees."""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import msgspec

_ENCODER = msgspec.json.Encoder(decimal_format="number")
Side = dict[Decimal, Decimal]


def rfc3339(now: float | None = None) -> str:
    now = time.time() if now is None else now
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def encode(message: dict[str, Any]) -> bytes:
    """Compact JSON with Decimals as numbers in their exact digits, as Kraken writes them."""
    return _ENCODER.encode(message)


def top(side: Side, depth: int, best_is_highest: bool) -> list[tuple[Decimal, Decimal]]:
    prices = sorted(side, reverse=best_is_highest)[:depth]
    return [(p, side[p]) for p in prices]


def levels_json(levels: Sequence[tuple[Decimal, Decimal]]) -> list[dict[str, Decimal]]:
    return [{"price": p, "qty": q} for p, q in levels]


def changed_levels(
    before: list[tuple[Decimal, Decimal]],
    after: list[tuple[Decimal, Decimal]],
    side: Side,
) -> list[tuple[Decimal, Decimal]]:
    """What Kraken sends for one side of one depth: new or changed levels, and a qty 0
    for levels that left the book; nothing for levels only pushed out of range."""
    old = dict(before)
    new = dict(after)
    changes = [(p, q) for p, q in after if old.get(p) != q]
    changes += [(p, Decimal("0.00000000")) for p in old if p not in new and p not in side]
    return changes
