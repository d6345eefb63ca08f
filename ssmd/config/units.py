"""Config values and field checks: durations, byte sizes, and the validators that name
the offending key (`FieldError`)."""

from __future__ import annotations

import re
from typing import Any

import attrs

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


def positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise FieldError(attribute, f"expected a positive value, got {value!r}")


def positive_duration(_inst: object, attribute: attrs.Attribute[Any], value: Duration) -> None:
    if value.seconds <= 0:
        raise FieldError(attribute, f"expected a positive duration, got {value.text!r}")


def subject_token(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value or any(c in value for c in ".*> \t\r\n"):
        raise FieldError(
            attribute,
            f"expected one NATS subject token (no '.', '*', '>' or spaces), got {value!r}",
        )


def positive_or_unset(_inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value <= 0:
        raise FieldError(attribute, f"expected a positive value, got {value!r}")
