"""The message types each venue is known to send: the bound on `type` metric labels.

`ssmd_received_messages{type}`, `ssmd_published_messages{type}` and
`ssmd_archived_messages{type}` are labelled with the venue's own type strings (or the
subject type token made from them). A message of a type nobody knows still goes on its
own subject, so the archive keeps it apart; only its label folds into `other`, so
whatever a venue (or garbage) sends, each of those label sets stays bounded.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping

from ssmd.config.connector import VENUE_CHANNELS
from ssmd.subjects import INVALID_TYPE_TOKEN, RESERVED_TYPES

OTHER = "other"

# Received `type`s and the subject type tokens made from them (`ssmd.feeds.kalshi.routing`
# TYPE_TOKENS), the catalogue's `market`/`event`, and the documented `event_fee_update`.
KALSHI = frozenset(
    {
        "ticker",
        "ticker_v2",
        "trade",
        "orderbook_snapshot",
        "orderbook_delta",
        "orderbook",
        "market_lifecycle_v2",
        "lifecycle",
        "event_lifecycle",
        "event_fee_update",
        "market",
        "event",
    }
)
# The market channel's `event_type`s, custom features included.
POLYMARKET = frozenset(
    {
        "book",
        "price_change",
        "last_trade_price",
        "tick_size_change",
        "best_bid_ask",
        "new_market",
        "market_resolved",
    }
)
# Kraken's data channels, and the channels it may send that ssmd does not subscribe.
KRAKEN = (VENUE_CHANNELS["kraken"] or frozenset()) | {"status", "instrument", "level3"}
# ssmd's own type tokens: records, unrouted messages, frames with no type.
SSMD = RESERVED_TYPES | {INVALID_TYPE_TOKEN}

KNOWN_TYPES = KALSHI | POLYMARKET | KRAKEN | SSMD


def type_labels(counts: Mapping[str, int]) -> dict[str, int]:
    """`counts` with every type no venue is known to send summed under `other`."""
    out: collections.Counter[str] = collections.Counter()
    for message_type, n in counts.items():
        out[message_type if message_type in KNOWN_TYPES else OTHER] += n
    return dict(out)
