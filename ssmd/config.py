"""The TOML configuration: frozen attrs classes, structured with cattrs.

The keys documented in the README are a public contract. Unknown keys are errors, so
a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs
import tomli
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

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
# Venues whose connector must list its markets when it does not discover them.
MARKETS_REQUIRED = {
    "polymarket": 'condition ids, e.g. ["0x5f65..."]',
    "kraken": 'symbols, e.g. ["BTC/USD", "ETH/USD"]',
}

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}


class FieldError(ValueError):
    """A validator's complaint about one field, so the error can name the key."""

    def __init__(self, attribute: attrs.Attribute[Any], message: str) -> None:
        self.field = attribute.name
        super().__init__(message)


class ConfigError(Exception):
    """A configuration problem, reported as one line: file, key path, what was expected."""

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file = file
        self.key = key
        self.message = message
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {message}")


@attrs.frozen(order=True)
class Duration:
    """A span of time written as `500ms`, `30s`, `15m`, `1h` or `1d` in the config."""

    seconds: float
    text: str = attrs.field(eq=False, order=False)

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError("expected a duration such as '30s', '15m' or '1h'")
        if isinstance(value, int | float):
            if value < 0:
                raise ValueError("expected a non-negative duration")
            return cls(float(value), f"{value}s")
        match = _DURATION_RE.match(value)
        if match is None:
            raise ValueError(f"expected a duration such as '30s', '15m' or '1h', got {value!r}")
        return cls(float(match.group(1)) * _UNIT_SECONDS[match.group(2)], value.strip())

    def __str__(self) -> str:
        return self.text


@attrs.frozen
class ByteSize:
    """A size written as an integer number of bytes or `64MiB`, `10GiB` in the config."""

    value: int

    @classmethod
    def parse(cls, value: object) -> ByteSize:
        if isinstance(value, bool):
            raise ValueError("expected a size such as 1048576 or '64MiB'")
        if isinstance(value, int):
            if value < 0:
                raise ValueError("expected a non-negative size")
            return cls(value)
        if isinstance(value, str):
            match = _SIZE_RE.match(value)
            if match:
                return cls(int(match.group(1)) * _SIZE_UNITS[match.group(2)])
        raise ValueError(f"expected a size such as 1048576 or '64MiB', got {value!r}")


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise FieldError(attribute, f"expected a positive value, got {value!r}")


def _positive_duration(_inst: object, attribute: attrs.Attribute[Any], value: Duration) -> None:
    if value.seconds <= 0:
        raise FieldError(attribute, f"expected a positive duration, got {value.text!r}")


def _subject_token(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value or any(c in value for c in ".*> \t\r\n"):
        raise FieldError(
            attribute,
            f"expected one NATS subject token (no '.', '*', '>' or spaces), got {value!r}",
        )


@attrs.frozen
class StreamLimits:
    """Limits for a stream that the connector creates; an existing stream is left as it is."""

    max_age: Duration = Duration.parse("7d")
    max_bytes: ByteSize = ByteSize.parse("10GiB")
    max_msgs: int = -1
    duplicate_window: Duration = attrs.field(
        default=Duration.parse("2m"), validator=_positive_duration
    )
    replicas: int = attrs.field(default=1)

    @replicas.validator
    def _check_replicas(self, attribute: attrs.Attribute[int], value: int) -> None:
        # JetStream replicates a stream to at most 5 servers.
        if not 1 <= value <= 5:
            raise FieldError(attribute, f"expected a replica count from 1 to 5, got {value!r}")


@attrs.frozen
class NatsConfig:
    url: str | list[str] = "nats://127.0.0.1:4222"
    stream: str = attrs.field(default="MARKETDATA", validator=_subject_token)
    connect_timeout: Duration = attrs.field(
        default=Duration.parse("5s"), validator=_positive_duration
    )
    request_timeout: Duration = attrs.field(
        default=Duration.parse("5s"), validator=_positive_duration
    )
    stream_limits: StreamLimits = StreamLimits()

    @property
    def servers(self) -> list[str]:
        return [self.url] if isinstance(self.url, str) else list(self.url)


@attrs.frozen
class ArchiverConfig:
    consumer: str = attrs.field(validator=_subject_token)
    filter: str = attrs.field()
    batch_size: int = attrs.field(default=1000, validator=_positive)
    fetch_timeout: Duration = attrs.field(
        default=Duration.parse("1s"), validator=_positive_duration
    )
    ack_wait: Duration = attrs.field(default=Duration.parse("60s"), validator=_positive_duration)
    queue_batches: int = attrs.field(default=4, validator=_positive)
    compression_level: int = attrs.field(default=6)
    # Wait this long for a batch to fill at low rates: fewer fsyncs and wakeups per
    # message for a little latency. 0 hands over whatever has arrived at once.
    linger: Duration = Duration.parse("20ms")

    @filter.validator
    def _check_filter(self, attribute: attrs.Attribute[str], value: str) -> None:
        tokens = value.split(".")
        if len(tokens) < 2 or any(not t for t in tokens):
            raise FieldError(
                attribute, f"expected a subject filter like 'prod.kalshi.json.>', got {value!r}"
            )
        if tokens[1] in ("*", ">"):
            raise FieldError(
                attribute, f"the second token names the feed and cannot be a wildcard: {value!r}"
            )

    @compression_level.validator
    def _check_level(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not 1 <= value <= 9:
            raise FieldError(attribute, f"expected a gzip level from 1 to 9, got {value!r}")

    @property
    def feed(self) -> str:
        return self.filter.split(".")[1]


@attrs.frozen
class StorageConfig:
    path: str = attrs.field()

    @path.validator
    def _check_path(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not value.strip():
            raise FieldError(attribute, "expected a directory path")


@attrs.frozen
class RotationConfig:
    interval: Duration = attrs.field(default=Duration.parse("15m"))

    @interval.validator
    def _check_interval(self, attribute: attrs.Attribute[Duration], value: Duration) -> None:
        seconds = value.seconds
        if seconds < 1 or seconds != int(seconds) or 86400 % int(seconds) != 0:
            raise FieldError(
                attribute,
                f"expected a whole number of seconds that divides 24h (e.g. '15m', '1h'), got {value.text!r}",
            )


def _positive_or_unset(_inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value <= 0:
        raise FieldError(attribute, f"expected a positive value, got {value!r}")


@attrs.frozen
class DiscoveryConfig:
    """`[connector.discovery]`: present, the connector follows the venue's open markets."""

    # Kalshi series tickers (e.g. ["KXBTCD"]), Polymarket event slugs; empty: everything.
    series: list[str] = attrs.field(factory=list)
    # Full REST reconciliation every `refresh`.
    refresh: Duration = attrs.field(default=Duration.parse("5m"), validator=_positive_duration)
    # REST requests per second (Kalshi's basic tier allows 20 reads a second).
    rest_rate: float = attrs.field(default=10.0, validator=_positive)
    rest_timeout: Duration = attrs.field(
        default=Duration.parse("10s"), validator=_positive_duration
    )
    # Live subscription changes sent per second on each connection.
    change_rate: float = attrs.field(default=20.0, validator=_positive)
    # Repair the trade tape from REST after a disconnect or a gap.
    backfill_trades: bool = True


@attrs.frozen
class ConnectorConfig:
    """One `[connector]` table, or one element of `[[connector]]`."""

    feed: str = attrs.field(default="kalshi", validator=_subject_token)
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
    markets_per_subscription: int | None = attrs.field(default=None, validator=_positive_or_unset)
    markets_per_connection: int | None = attrs.field(default=None, validator=_positive_or_unset)
    # The venue's REST base (Polymarket: the Gamma API that resolves condition ids).
    rest_url: str | None = None
    # Kraken only: book depth subscribed and kept (10, 25, 100, 500 or 1000; unset: 10).
    depth: int | None = attrs.field(default=None)
    liveness_timeout: Duration = attrs.field(
        default=Duration.parse("30s"), validator=_positive_duration
    )
    ping_interval: Duration = attrs.field(
        default=Duration.parse("10s"), validator=_positive_duration
    )
    command_timeout: Duration = attrs.field(
        default=Duration.parse("30s"), validator=_positive_duration
    )
    backoff_initial: Duration = attrs.field(
        default=Duration.parse("500ms"), validator=_positive_duration
    )
    backoff_max: Duration = attrs.field(default=Duration.parse("30s"), validator=_positive_duration)
    buffer_messages: int = attrs.field(default=100_000, validator=_positive)
    buffer_bytes: ByteSize = ByteSize.parse("256MiB")
    publish_window: int = attrs.field(default=4000, validator=_positive)
    # Short enough that a shutdown drain (service.shutdown_timeout) can retry once.
    publish_timeout: Duration = attrs.field(
        default=Duration.parse("2s"), validator=_positive_duration
    )
    # As archiver.linger, for publishing: fewer bridge crossings at low rates.
    publish_linger: Duration = Duration.parse("10ms")
    # "ssmd": the built-in client (fast receive path); "trio-websocket": the library's.
    websocket_client: str = attrs.field(default="ssmd")
    # `[connector.discovery]`: Kalshi or Polymarket market discovery (None: the static
    # `markets` only).
    discovery: DiscoveryConfig | None = None

    @websocket_client.validator
    def _check_client(self, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in ("ssmd", "trio-websocket"):
            raise FieldError(attribute, f"expected 'ssmd' or 'trio-websocket', got {value!r}")

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


@attrs.frozen
class ServiceConfig:
    shutdown_timeout: Duration = attrs.field(
        default=Duration.parse("5s"), validator=_positive_duration
    )
    log_level: str = attrs.field(default="info")
    # /health, /ready and /metrics; port 0 turns the endpoint off.
    health_host: str = "127.0.0.1"
    health_port: int = attrs.field(default=9108)

    @health_port.validator
    def _check_port(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not 0 <= value <= 65535:
            raise FieldError(attribute, f"expected a TCP port from 0 (off) to 65535, got {value!r}")

    @log_level.validator
    def _check_level(self, attribute: attrs.Attribute[str], value: str) -> None:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise FieldError(
                attribute, f"expected one of debug, info, warning, error; got {value!r}"
            )


SYNC_SCHEMES = ("gs", "s3", "file")


@attrs.frozen
class SyncConfig:
    """Uploads of the finished archive to `gs://bucket/prefix`, `s3://...` or `file:///path`."""

    destination: str = attrs.field()
    interval: Duration = attrs.field(default=Duration.parse("5m"), validator=_positive_duration)
    # Feed directories to upload; empty means every feed under storage.path.
    feeds: list[str] = attrs.field(factory=list)

    @destination.validator
    def _check_destination(self, attribute: attrs.Attribute[str], value: str) -> None:
        scheme, separator, rest = value.partition("://")
        if scheme == "file":
            valid = rest.startswith("/") and rest.strip("/") != ""
        else:
            valid = scheme in SYNC_SCHEMES and rest.split("/")[0] != ""
        if not separator or not valid:
            raise FieldError(
                attribute,
                "expected a URL such as 'gs://bucket/prefix', 's3://bucket/prefix' or "
                f"'file:///absolute/path' (schemes: {', '.join(SYNC_SCHEMES)}), got {value!r}",
            )

    @feeds.validator
    def _check_feeds(self, attribute: attrs.Attribute[list[str]], value: list[str]) -> None:
        for feed in value:
            _subject_token(self, attribute, feed)


@attrs.frozen
class Config:
    env: str = attrs.field(validator=_subject_token)
    nats: NatsConfig = NatsConfig()
    archiver: ArchiverConfig | None = None
    storage: StorageConfig | None = None
    rotation: RotationConfig = RotationConfig()
    # The only `[connector]`, or the first of `[[connector]]`; `connectors` has them all.
    connector: ConnectorConfig | None = None
    service: ServiceConfig = ServiceConfig()
    sync: SyncConfig | None = None
    connectors: tuple[ConnectorConfig, ...] = ()
    # The only `[archiver]`, or every `[[archiver]]` (`archiver` is then the first).
    archivers: tuple[ArchiverConfig, ...] = ()

    def __attrs_post_init__(self) -> None:
        if not self.connectors and self.connector is not None:
            object.__setattr__(self, "connectors", (self.connector,))
        if not self.archivers and self.archiver is not None:
            object.__setattr__(self, "archivers", (self.archiver,))

    @property
    def sections(self) -> set[str]:
        return {
            name for name in ("archiver", "connector", "sync") if getattr(self, name) is not None
        }


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(Duration, lambda value, _: Duration.parse(value))
    converter.register_structure_hook(ByteSize, lambda value, _: ByteSize.parse(value))

    def structure_url(value: object, _: object) -> str | list[str]:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return list(value)
        raise ValueError("expected a URL string or a non-empty list of URL strings")

    def structure_optional_str(value: object, _: object) -> str | None:
        if value is None or isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {value!r}")

    def structure_str(value: object, _: object) -> str:
        if isinstance(value, str):
            return value
        raise ValueError(f"expected a string, got {value!r}")

    def structure_int(value: object, _: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"expected an integer, got {value!r}")

    def structure_str_list(value: object, _: object) -> list[str]:
        # A bare string would otherwise become a list of its characters.
        if not isinstance(value, list):
            raise ValueError(f'expected a list of strings such as ["a", "b"], got {value!r}')
        return [structure_str(item, None) for item in value]

    converter.register_structure_hook(str | list[str], structure_url)
    converter.register_structure_hook_func(lambda t: t == list[str], structure_str_list)
    converter.register_structure_hook(str | None, structure_optional_str)
    converter.register_structure_hook(str, structure_str)
    converter.register_structure_hook(int, structure_int)
    return converter


_converter = _make_converter()


def _describe(exc: BaseException, path: str) -> tuple[str, str]:
    """Walk a cattrs error tree to its first leaf: (dotted key path, message)."""
    if isinstance(exc, ForbiddenExtraKeysError):
        keys = ", ".join(sorted(exc.extra_fields))
        key = f"{path}.{sorted(exc.extra_fields)[0]}" if path else sorted(exc.extra_fields)[0]
        return key, f"unknown key ({keys}); check the spelling against the README"
    if isinstance(exc, ClassValidationError | IterableValidationError):
        for sub in exc.exceptions:
            notes = getattr(sub, "__notes__", [])
            name: str | int = ""
            for note in notes:
                for attr in ("name", "index"):
                    found = getattr(note, attr, None)
                    if found is not None and found != "":
                        name = found
                        break
                if name != "":
                    break
            if isinstance(name, int):
                sub_path = f"{path}[{name}]"
            else:
                sub_path = f"{path}.{name}" if path and name else (name or path)
            return _describe(sub, sub_path)
        return path, str(exc)
    if isinstance(exc, FieldError):
        return (f"{path}.{exc.field}" if path else exc.field), str(exc)
    if isinstance(exc, KeyError):
        return path, "required key is missing"
    message = str(exc)
    return path, message or type(exc).__name__


def _structure(data: object, cls: type[Any], file: str, path: str) -> Any:
    try:
        return _converter.structure(data, cls)
    except (ClassValidationError, ForbiddenExtraKeysError) as exc:
        key, message = _describe(exc, path)
        raise ConfigError(file, key, message) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(file, path, str(exc)) from None


def _resolve_kind(cc: ConnectorConfig, key: str, file: str, single: bool) -> ConnectorConfig:
    """Fill in `kind`: as given, else the feed name when it names a venue. A single
    `[connector]` with another feed name speaks Kalshi, as it always has."""
    expected = f"expected one of {', '.join(VENUE_KINDS)}"
    if cc.kind is not None:
        if cc.kind not in VENUE_KINDS:
            raise ConfigError(file, f"{key}.kind", f"unknown venue {cc.kind!r}; {expected}")
        kind = cc.kind
    elif cc.feed in VENUE_KINDS:
        kind = cc.feed
    elif single:
        kind = "kalshi"
    else:
        raise ConfigError(
            file, f"{key}.kind", f"feed {cc.feed!r} names no venue, so kind is required; {expected}"
        )
    if cc.discovery is not None and kind not in DISCOVERY_KINDS:
        raise ConfigError(
            file, f"{key}.discovery", f"applies to kinds kalshi and polymarket, not {kind!r}"
        )
    if cc.depth is not None and kind != "kraken":
        raise ConfigError(file, f"{key}.depth", f"applies to kind 'kraken' only, not {kind!r}")
    allowed = VENUE_CHANNELS[kind]
    unknown = [c for c in cc.channels if allowed is not None and c not in allowed]
    if unknown:
        raise ConfigError(
            file,
            f"{key}.channels",
            f"{', '.join(map(repr, unknown))} not a {kind} channel; "
            f"expected some of {', '.join(sorted(allowed or ()))}",
        )
    if not cc.markets and kind in MARKETS_REQUIRED and cc.discovery is None:
        raise ConfigError(
            file, f"{key}.markets", f"a {kind} connector must list {MARKETS_REQUIRED[kind]}"
        )
    return attrs.evolve(cc, kind=kind)


def _connectors(raw: object, file: str) -> tuple[ConnectorConfig, ...]:
    if isinstance(raw, dict):
        cc = _structure(raw, ConnectorConfig, file, "connector")
        return (_resolve_kind(cc, "connector", file, single=True),)
    if not isinstance(raw, list) or not raw:
        raise ConfigError(
            file, "connector", "expected a [connector] table or one or more [[connector]] tables"
        )
    connectors: list[ConnectorConfig] = []
    feeds: dict[str, int] = {}
    for index, item in enumerate(raw):
        key = f"connector[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(file, key, "expected a table")
        cc = _resolve_kind(_structure(item, ConnectorConfig, file, key), key, file, single=False)
        if cc.feed in feeds:
            raise ConfigError(
                file,
                f"{key}.feed",
                f"feed {cc.feed!r} is already used by connector[{feeds[cc.feed]}]; "
                "expected a distinct feed name per connector",
            )
        feeds[cc.feed] = index
        connectors.append(cc)
    return tuple(connectors)


def _archivers(raw: object, file: str) -> tuple[ArchiverConfig, ...]:
    """`[archiver]`, or `[[archiver]]` tables: one archiver per feed, each with its own
    durable consumer."""
    if isinstance(raw, dict):
        return (_structure(raw, ArchiverConfig, file, "archiver"),)
    if not isinstance(raw, list) or not raw:
        raise ConfigError(
            file, "archiver", "expected an [archiver] table or one or more [[archiver]] tables"
        )
    archivers: list[ArchiverConfig] = []
    feeds: dict[str, int] = {}
    consumers: dict[str, int] = {}
    for index, item in enumerate(raw):
        key = f"archiver[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(file, key, "expected a table")
        ac: ArchiverConfig = _structure(item, ArchiverConfig, file, key)
        if ac.feed in feeds:
            raise ConfigError(
                file,
                f"{key}.filter",
                f"feed {ac.feed!r} (the filter's second token) is already archived by "
                f"archiver[{feeds[ac.feed]}]; expected one archiver per feed (to split a feed "
                "by type, run archivers with their own storage.path)",
            )
        if ac.consumer in consumers:
            raise ConfigError(
                file,
                f"{key}.consumer",
                f"consumer {ac.consumer!r} is already used by archiver[{consumers[ac.consumer]}]; "
                "expected a distinct durable consumer name per archiver",
            )
        feeds[ac.feed] = index
        consumers[ac.consumer] = index
        archivers.append(ac)
    return tuple(archivers)


def parse_config(data: dict[str, Any], file: str = "<config>") -> Config:
    for plural, singular in (("connectors", "connector"), ("archivers", "archiver")):
        if plural in data:
            raise ConfigError(
                file, plural, f"unknown key; several {plural} are [[{singular}]] tables"
            )
    raw_connector = data.get("connector")
    raw_archiver = data.get("archiver")
    rest = {k: v for k, v in data.items() if k not in ("connector", "archiver")}
    config: Config = _structure(rest, Config, file, "")
    if raw_archiver is not None:
        archivers = _archivers(raw_archiver, file)
        config = attrs.evolve(config, archiver=archivers[0], archivers=archivers)
    if raw_connector is not None:
        connectors = _connectors(raw_connector, file)
        config = attrs.evolve(config, connector=connectors[0], connectors=connectors)
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(file, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read: {exc.strerror}") from None
    try:
        data = tomli.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(file, "", "expected UTF-8 text") from None
    except tomli.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"invalid TOML: {exc}") from None
    return parse_config(data, file)
