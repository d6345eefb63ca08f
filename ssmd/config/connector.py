"""`[connector]` / `[[connector]]`: the venues a connector speaks and one connector's keys."""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs

from ssmd.config.units import (
    ByteSize,
    Duration,
    FieldError,
    positive,
    positive_duration,
    positive_or_unset,
    subject_token,
)
from ssmd.feeds.kraken_book import DEPTHS as KRAKEN_BOOK_DEPTHS

KALSHI_PROD_URL = "wss://external-api-ws.kalshi.com/trade-api/ws/v2"
KALSHI_DEMO_URL = "wss://demo-api.kalshi.co/trade-api/ws/v2"
# The venues a connector can speak; each is the module `ssmd.feeds.{kind}`.
VENUE_KINDS = ("kalshi", "polymarket", "kraken")
# Per venue: the channels a connector subscribes when it lists none, and those it may
# list (None: any, the venue answers for itself).
DEFAULT_CHANNELS: dict[str, tuple[str, ...]] = {
    "kalshi": ("ticker", "trade", "orderbook_delta"),
    "polymarket": ("market",),
    "kraken": ("book", "trade", "ticker"),
}
VENUE_CHANNELS: dict[str, frozenset[str] | None] = {
    "kalshi": None,
    "polymarket": frozenset({"market"}),
    "kraken": frozenset({"book", "trade", "ticker", "ohlc"}),
}
# Venues that can follow the exchange's market set (`[connector.discovery]`).
DISCOVERY_KINDS = ("kalshi", "polymarket")
MAX_READ_INTERVAL_S = 1.0
# Venues whose connector must list its markets when it does not discover them.
MARKETS_REQUIRED = {
    "polymarket": 'condition ids, e.g. ["0x5f65..."]',
    "kraken": 'symbols, e.g. ["BTC/USD", "ETH/USD"]',
}


@attrs.frozen
class DiscoveryConfig:
    """`[connector.discovery]`: present, the connector follows the venue's open markets."""

    # Kalshi series tickers (e.g. ["KXBTCD"]), Polymarket event slugs; empty: everything.
    series: list[str] = attrs.field(factory=list)
    # Full REST reconciliation every `refresh`.
    refresh: Duration = attrs.field(default=Duration.parse("5m"), validator=positive_duration)
    # REST requests per second (Kalshi's basic tier allows 20 reads a second).
    rest_rate: float = attrs.field(default=10.0, validator=positive)
    rest_timeout: Duration = attrs.field(default=Duration.parse("10s"), validator=positive_duration)
    # Live subscription changes sent per second on each connection.
    change_rate: float = attrs.field(default=20.0, validator=positive)
    # Repair the trade tape from REST after a disconnect or a gap.
    backfill_trades: bool = True


@attrs.frozen
class ConnectorConfig:
    """One `[connector]` table, or one element of `[[connector]]`."""

    feed: str = attrs.field(default="kalshi", validator=subject_token)
    # The venue protocol (`ssmd.feeds.{kind}`); unset: the feed name when it names a venue.
    kind: str | None = None
    url: str | None = None
    # Unset: the venue's DEFAULT_CHANNELS (an unknown kind is refused after).
    channels: list[str] = attrs.field(
        default=attrs.Factory(
            lambda self: list(DEFAULT_CHANNELS.get(self.venue, DEFAULT_CHANNELS["kalshi"])),
            takes_self=True,
        )
    )
    markets: list[str] = attrs.field(factory=list)
    # Unset: the venue's default (Kalshi 200 and 2000; Polymarket 200 assets a connection).
    markets_per_subscription: int | None = attrs.field(default=None, validator=positive_or_unset)
    markets_per_connection: int | None = attrs.field(default=None, validator=positive_or_unset)
    # The venue's REST base (Polymarket: the Gamma API that resolves condition ids).
    rest_url: str | None = None
    # Kraken only: book depth subscribed and kept (10, 25, 100, 500 or 1000; unset: 10).
    depth: int | None = attrs.field(default=None)
    liveness_timeout: Duration = attrs.field(
        default=Duration.parse("30s"), validator=positive_duration
    )
    ping_interval: Duration = attrs.field(
        default=Duration.parse("10s"), validator=positive_duration
    )
    command_timeout: Duration = attrs.field(
        default=Duration.parse("30s"), validator=positive_duration
    )
    backoff_initial: Duration = attrs.field(
        default=Duration.parse("500ms"), validator=positive_duration
    )
    backoff_max: Duration = attrs.field(default=Duration.parse("30s"), validator=positive_duration)
    buffer_messages: int = attrs.field(default=100_000, validator=positive)
    buffer_bytes: ByteSize = ByteSize.parse("256MiB")
    publish_window: int = attrs.field(default=4000, validator=positive)
    # Short enough that a shutdown drain (service.shutdown_timeout) can retry once.
    publish_timeout: Duration = attrs.field(
        default=Duration.parse("2s"), validator=positive_duration
    )
    # A busy socket is read at most this often (0ms: at every arrival). A frame is
    # stamped when read, so it may wait in the socket up to this long first.
    read_interval: Duration = attrs.field(default=Duration.parse("100ms"))
    # As archiver.linger, for publishing. The read_interval already gathers each read
    # into one batch, and every connection reads on the same grid, so by default a
    # batch is published at once; with read_interval = "0ms", "10ms" saves crossings.
    publish_linger: Duration = Duration.parse("0ms")
    # "ssmd": the built-in client (fast receive path); "trio-websocket": the library's.
    websocket_client: str = attrs.field(default="ssmd")
    # `[connector.discovery]`: Kalshi or Polymarket market discovery (None: the static
    # `markets` only).
    discovery: DiscoveryConfig | None = None

    @websocket_client.validator
    def _check_client(self, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in ("ssmd", "trio-websocket"):
            raise FieldError(attribute, f"expected 'ssmd' or 'trio-websocket', got {value!r}")

    @read_interval.validator
    def _check_read_interval(self, attribute: attrs.Attribute[Duration], value: Duration) -> None:
        # Pings and close frames are answered as they are read: a long interval would
        # answer the venue's pings late and could make a live connection look dead.
        if value.seconds > MAX_READ_INTERVAL_S:
            raise FieldError(
                attribute, f"expected at most 1s (0ms reads every arrival), got {value.text!r}"
            )
        if 2 * value.seconds > self.liveness_timeout.seconds:
            raise FieldError(
                attribute,
                f"expected at most half of liveness_timeout ({self.liveness_timeout.text}), "
                f"got {value.text!r}",
            )

    @depth.validator
    def _check_depth(self, attribute: attrs.Attribute[int | None], value: int | None) -> None:
        if value is not None and value not in KRAKEN_BOOK_DEPTHS:
            depths = ", ".join(map(str, KRAKEN_BOOK_DEPTHS))
            raise FieldError(attribute, f"expected a Kraken book depth ({depths}), got {value!r}")

    @channels.validator
    def _check_channels(self, attribute: attrs.Attribute[list[str]], value: list[str]) -> None:
        if not value:
            raise FieldError(attribute, 'expected at least one channel, e.g. ["ticker", "trade"]')

    @property
    def venue(self) -> str:
        """The resolved `kind` (set by `parse_config`; `kalshi` for a bare object)."""
        return self.kind or (self.feed if self.feed in VENUE_KINDS else "kalshi")

    def resolved_url(self, environ: Mapping[str, str] | None = None) -> str:
        """The WebSocket URL: `url` if set, else the venue's default (for Kalshi, demo or
        production by KALSHI_USE_DEMO)."""
        if self.url:
            return self.url
        env = os.environ if environ is None else environ
        from ssmd.feeds import load_venue

        return load_venue(self.venue).default_url(env)
