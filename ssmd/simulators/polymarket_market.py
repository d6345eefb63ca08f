"""A simulated Polymarket market: its ids, tokens and books, and its Gamma listing."""

from __future__ import annotations

import json
from typing import Any

import attrs


@attrs.define
class SimMarket:
    gamma_id: str
    condition_id: str
    question: str
    slug: str
    tokens: tuple[str, str]  # (Yes, No) token ids
    yes_cents: int
    event_slug: str = "sim-event"
    tick_size: str = "0.01"
    active: bool = True
    closed: bool = False
    # Per token: price (cents) -> size, each side.
    books: dict[str, dict[str, dict[int, int]]] = attrs.Factory(dict)
    # Grows with every listing, as Gamma's volume figures move with trading: top level
    # and inside the embedded event alike.
    listed: int = 0

    def gamma(self) -> dict[str, Any]:
        yes = self.yes_cents / 100
        self.listed += 1
        volume = 1000.0 + 17.5 * self.listed
        return {
            "id": self.gamma_id,
            "question": self.question,
            "conditionId": self.condition_id,
            "slug": self.slug,
            "outcomes": json.dumps(["Yes", "No"]),
            "outcomePrices": json.dumps([f"{yes:.2f}", f"{1 - yes:.2f}"]),
            "clobTokenIds": json.dumps(list(self.tokens)),
            "active": self.active,
            "closed": self.closed,
            "enableOrderBook": True,
            "acceptingOrders": self.active and not self.closed,
            "orderPriceMinTickSize": float(self.tick_size),
            "volume": f"{volume:.2f}",
            "volumeNum": volume,
            "updatedAt": f"2026-01-01T00:00:{self.listed % 60:02d}Z",
            "events": [
                {
                    "id": self.event_slug,
                    "slug": self.event_slug,
                    "title": self.question,
                    "volume": volume * 3,
                    "liquidity": 500.0 + self.listed,
                    "openInterest": 40.0 + self.listed,
                    "commentCount": self.listed,
                    "updatedAt": f"2026-01-01T00:00:{self.listed % 60:02d}Z",
                }
            ],
        }


def price_text(cents: int) -> str:
    """Cents as Polymarket writes a price: `0.5`, `0.92`, `1`."""
    return f"{cents / 100:.2f}".rstrip("0").rstrip(".")
