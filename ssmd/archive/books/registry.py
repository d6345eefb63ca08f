"""Which venue's book rules a feed follows: by the feed name's prefix (`kalshi`,
`kalshi-a`, `polymarket`, `kraken`)."""

from __future__ import annotations

from ssmd.archive.books.base import Venue
from ssmd.archive.books.kalshi import KalshiVenue
from ssmd.archive.books.kraken import KrakenVenue
from ssmd.archive.books.polymarket import PolymarketVenue
from ssmd.archive.errors import ArchiveError

VENUES: dict[str, Venue] = {v.name: v for v in (KalshiVenue(), PolymarketVenue(), KrakenVenue())}


def venue_for(feed: str) -> Venue:
    for name, venue in VENUES.items():
        if feed == name or feed.startswith(name + "-") or feed.startswith(name + "_"):
            return venue
    raise ArchiveError(
        f"no book rules for feed {feed!r}: known venues are {', '.join(sorted(VENUES))} "
        "(a feed named like kalshi-a follows kalshi)"
    )
