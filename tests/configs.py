"""The one way tests write an ssmd config: a dict of keys and tables, as TOML."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool | int | str):
        return json.dumps(value)  # TOML's booleans, integers and basic strings read alike
    if isinstance(value, float):
        assert math.isfinite(value), value
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def toml_text(config: Mapping[str, Any], table: str = "") -> str:
    """`config` as TOML: its plain keys first, then each nested table as `[a.b]`."""
    lines = [f"[{table}]"] if table else []
    lines += [
        f"{toml_key(key)} = {toml_value(value)}"
        for key, value in config.items()
        if value is not None and not isinstance(value, Mapping)
    ]
    for key, value in config.items():
        if isinstance(value, Mapping):
            lines.append(toml_text(value, f"{table}.{toml_key(key)}" if table else toml_key(key)))
    return "\n".join(lines)


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    """Write `config` (keys whose value is None are left out, so a default applies)."""
    path.write_text(toml_text(config) + "\n")
    return path
