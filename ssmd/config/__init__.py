"""The TOML configuration: frozen attrs classes, structured with cattrs.

The keys documented in the README are a public contract. Unknown keys are errors, so
a typo never silently falls back to a default.

`units` (durations, sizes, field checks), `connector` (the venues and `[connector]`),
`archive` (`[archiver]`, `[storage]`, `[rotation]`, `[sync]`), `model` (`[nats]`,
`[service]` and the whole `Config`), `loading` (TOML, cattrs, one-line errors).
"""

from ssmd.config.archive import (
    SYNC_SCHEMES,
    ArchiverConfig,
    RotationConfig,
    StorageConfig,
    SyncConfig,
)
from ssmd.config.connector import (
    DEFAULT_CHANNELS,
    DISCOVERY_KINDS,
    KALSHI_DEMO_URL,
    KALSHI_PROD_URL,
    MARKETS_REQUIRED,
    VENUE_CHANNELS,
    VENUE_KINDS,
    ConnectorConfig,
    DiscoveryConfig,
)
from ssmd.config.loading import ConfigError, load_config, parse_config
from ssmd.config.model import Config, NatsConfig, ServiceConfig, StreamLimits
from ssmd.config.units import ByteSize, Duration, FieldError
from ssmd.feeds.kraken_book import DEPTHS as KRAKEN_BOOK_DEPTHS

__all__ = [
    "DEFAULT_CHANNELS",
    "DISCOVERY_KINDS",
    "KALSHI_DEMO_URL",
    "KALSHI_PROD_URL",
    "KRAKEN_BOOK_DEPTHS",
    "MARKETS_REQUIRED",
    "SYNC_SCHEMES",
    "VENUE_CHANNELS",
    "VENUE_KINDS",
    "ArchiverConfig",
    "ByteSize",
    "Config",
    "ConfigError",
    "ConnectorConfig",
    "DiscoveryConfig",
    "Duration",
    "FieldError",
    "NatsConfig",
    "RotationConfig",
    "ServiceConfig",
    "StorageConfig",
    "StreamLimits",
    "SyncConfig",
    "load_config",
    "parse_config",
]
