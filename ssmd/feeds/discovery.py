"""Market discovery as a venue supplies it: the venue-neutral interface that the generic
discovery task (`ssmd.connector.discovery.Discovery`) drives.

A venue that can follow the exchange's live market set has a module
`ssmd.feeds.{kind}_source` with `discovery_source(config) -> DiscoverySource`. The source
is logic without I/O:

- which REST walks list the open markets (`market_walks`), which only feed the catalogue
  (`catalogue_walks`, e.g. Kalshi's events), and which resolve the configured static
  markets (`static_walks`; none when a static market needs no REST to be subscribed);
- which page objects are markets, a market's key (what the planner places and the
  records name: a Kalshi ticker, a Polymarket condition id) and its subscription units
  (what goes into a subscribe command: the ticker itself, a market's token ids);
- whether a market is wanted (open and selected);
- which catalogue records a page object gives (type token and key);
- what a live event the sessions hand over (`SessionContext.events`) changes.

The same walk, catalogue, reconciliation and planner machinery then serves every venue.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import attrs

from ssmd.connector.shards import SubscriptionPlan

if TYPE_CHECKING:
    from ssmd.config import ConnectorConfig

Paging = Literal["cursor", "next_cursor"]
"""Where a page names the next one: the body's `cursor` (Kalshi) or `next_cursor`
(Gamma's keyset pages); either is passed back as the `cursor` parameter."""


@attrs.frozen
class Walk:
    """One paginated REST listing: `GET path?query&limit=...&cursor=...`, the page's
    objects under `items_key`. Each object gives a catalogue record on
    `{env}.{feed}.json.{type_token}.{object[key_field]}`."""

    path: str
    query: Mapping[str, str | int | Sequence[str]]  # a sequence is a repeated parameter
    items_key: str
    limit: int
    type_token: str
    key_field: str
    paging: Paging = "cursor"


@attrs.frozen
class LiveChange:
    """What one live event changes: `market` (its key) is added (with its subscription
    `units` when the event names them) or removed; `reason` goes into the
    `ssmd.subscription` record (`lifecycle:<event_type>`)."""

    market: str
    add: bool
    reason: str
    units: tuple[str, ...] = ()


class DiscoverySource(Protocol):
    """One venue's discovery rules for one configured connector (see the module doc)."""

    volatile_fields: frozenset[str]
    """Catalogue fields that move with trading, left out when deciding a change."""

    backfills_trades: bool
    """Whether `[connector.discovery] backfill_trades` applies (Kalshi's trade REST)."""

    key_is_unit: bool
    """A market's key is what a session subscribes (Kalshi's ticker); else its units
    come from REST or a live event (Polymarket's token ids), and a market whose units
    are not known has none."""

    def rest_url(self, ws_url: str) -> str:
        """The REST base: `connector.rest_url`, else the venue's default."""
        ...

    def channels(self, configured: Sequence[str]) -> tuple[list[str], list[str]]:
        """(channels subscribed once for all markets on connection 0, channels that
        follow the selected markets through the planner)."""
        ...

    def initial_plans(self, whole: Sequence[str]) -> list[SubscriptionPlan]:
        """Connection 0's fixed subscriptions, made before any market is known."""
        ...

    def layout_limits(self, per_subscription: int, per_connection: int) -> tuple[int, int]:
        """The planner's (markets per subscription, markets per connection) from the
        configured (or default) limits, which a venue may count in other units."""
        ...

    def market_walks(self) -> list[Walk]: ...

    def catalogue_walks(self) -> list[Walk]: ...

    def static_walks(self, markets: Sequence[str]) -> list[Walk]:
        """Walks that find the configured static markets' units (none: the key is the
        unit, and static markets are subscribed at once)."""
        ...

    def market_key(self, market: Mapping[str, Any]) -> str | None: ...

    def units(self, market: Mapping[str, Any]) -> tuple[str, ...]:
        """A market object's subscription units (empty: it cannot be subscribed)."""
        ...

    def wants(self, market: Mapping[str, Any]) -> bool:
        """Whether a market object is open, subscribable and selected."""
        ...

    def catalogued(self, market: Mapping[str, Any]) -> bool:
        """Whether a market object seen by a market walk goes into the catalogue."""
        ...

    def live_change(self, event: Mapping[str, Any]) -> LiveChange | None:
        """What a live event (one decoded message from `SessionContext.events`)
        changes in the selected set, if anything. Called once per copy received: the
        same event may come on several connections."""
        ...


@runtime_checkable
class ConfirmsMarkets(Protocol):
    """A source whose REST looks markets up by key (Kalshi: `GET /markets?tickers=`).
    Discovery then confirms the markets a walk missed at once instead of waiting for a
    second walk to miss them too."""

    def confirm_walks(self, markets: Sequence[str]) -> list[Walk]:
        """Walks that list `markets` (batched, whatever their status; unknown ones are
        left out), so that `wants` tells which are still open."""
        ...


def discovery_source(kind: str, config: ConnectorConfig) -> DiscoverySource | None:
    """The discovery source of venue `kind` for `config`, or None when it has none."""
    try:
        module = importlib.import_module(f"ssmd.feeds.{kind}_source")
    except ModuleNotFoundError as exc:
        if exc.name != f"ssmd.feeds.{kind}_source":
            raise
        return None
    source: DiscoverySource = module.discovery_source(config)
    return source
