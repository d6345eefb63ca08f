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

    def gamma(self) -> dict[str, Any]:
        yes = self.yes_cents / 100
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
            "events": [{"id": self.event_slug, "slug": self.event_slug, "title": self.question}],
        }


def price_text(cents: int) -> str:
    """Cents as Polymarket writes a price: `0.5`, `0.92`, `1`."""
    return f"{cents / 100:.2f}".rstrip("0").rstrip(".")
