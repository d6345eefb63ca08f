"""Reading a config: TOML to the attrs classes with cattrs, and every problem reported as
one `ConfigError` line naming the file, the key and what was expected."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
import cattrs
import tomli
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from ssmd.config.archive import ArchiverConfig
from ssmd.config.connector import (
    DISCOVERY_KINDS,
    MARKETS_REQUIRED,
    VENUE_CHANNELS,
    VENUE_KINDS,
    ConnectorConfig,
)
from ssmd.config.model import Config
from ssmd.config.units import ByteSize, Duration, FieldError


class ConfigError(Exception):
    """A configuration problem, reported as one line: file, key path, what was expected."""

    def __init__(self, file: str, key: str, message: str) -> None:
        self.file = file
        self.key = key
        self.message = message
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {message}")


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
