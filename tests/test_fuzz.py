"""Fuzzing with hypothesis: the config loader over arbitrary TOML, and the archive
reader over truncated and corrupted gzip. No input may crash them; every rejection is a
clear error, and nothing readable is silently lost."""

from __future__ import annotations

import gzip
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import tomli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssmd.archiver.files import GzipLines
from ssmd.config import ConfigError, load_config
from tests.configs import toml_key, toml_value, write_config

keys = st.sampled_from(
    [
        "env",
        "nats",
        "url",
        "stream",
        "archiver",
        "consumer",
        "filter",
        "storage",
        "path",
        "rotation",
        "interval",
        "connector",
        "channels",
        "markets",
        "service",
        "batch_size",
        "x",
    ]
)
toml_values = st.recursive(
    st.none().map(lambda _: "")
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=4),
    max_leaves=15,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=st.dictionaries(keys, toml_values, max_size=6) | st.text(max_size=200))
def test_any_toml_gives_a_config_or_one_clear_error(
    tmp_path: Path, document: dict[str, object] | str
) -> None:
    path = tmp_path / "fuzz.toml"
    text = (
        document
        if isinstance(document, str)
        else "\n".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in document.items())
    )
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(str(path)), message
        assert "\n" not in message.strip() or "invalid TOML" in message
        assert "Traceback" not in message


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "production.toml"


def key_paths(table: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key of a TOML document, nested tables' keys included (not the tables)."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from key_paths(value, (*prefix, key))
        else:
            yield (*prefix, key)


def without(table: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    head, *rest = path
    if not rest:
        return {k: v for k, v in table.items() if k != head}
    return {**table, head: without(table[head], tuple(rest))}


def lookup(value: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        value = getattr(value, part)
    return value


def test_deleting_a_key_of_the_example_errors_exactly_when_it_has_no_default(
    tmp_path: Path,
) -> None:
    """Every key of the documented example, deleted alone: a key without a default gives
    one error naming it; any other loads, with its documented default."""
    document = tomli.loads(EXAMPLE.read_text())
    example = load_config(EXAMPLE)
    outcomes: Counter[str] = Counter()
    for number, path in enumerate(key_paths(document)):
        dotted = ".".join(path)
        # Not named after the key: the error must name it, not the file's name.
        config = write_config(tmp_path / f"deleted-{number}.toml", without(document, path))
        field = attrs.fields_dict(type(lookup(example, path[:-1])))[path[-1]]
        if field.default is attrs.NOTHING:
            with pytest.raises(ConfigError) as error:
                load_config(config)
            message = str(error.value)
            assert message.startswith(f"{config}: ") and dotted in message.split(": ", 1)[1], (
                message
            )
            outcomes["required"] += 1
        else:
            loaded = load_config(config)
            factory = getattr(field.default, "factory", None)  # an attrs.Factory
            if not callable(factory):
                default = field.default
            elif getattr(field.default, "takes_self", False):  # e.g. channels: the venue's defaults
                default = factory(lookup(loaded, path[:-1]))
            else:
                default = factory()
            assert lookup(loaded, path) == default, dotted
            outcomes["defaulted"] += 1
    # env, archiver.consumer, archiver.filter, storage.path; the rest have defaults.
    assert outcomes == {"required": 4, "defaulted": len(list(key_paths(document))) - 4}


def archive_bytes(lines: int) -> bytes:
    body = b"".join(
        b'{"_seq":%d,"_subject":"prod.kalshi.json.trade.A","x":%d}\n' % (i, i)
        for i in range(1, lines + 1)
    )
    return gzip.compress(body)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cut=st.integers(min_value=0, max_value=4000),
    flips=st.lists(
        st.tuples(st.integers(min_value=0, max_value=4000), st.integers(1, 255)), max_size=3
    ),
)
def test_the_reader_never_crashes_on_damaged_files(
    tmp_path: Path, cut: int, flips: list[tuple[int, int]]
) -> None:
    original = archive_bytes(300)
    data = bytearray(original[: cut % (len(original) + 1)])
    for position, mask in flips:
        if data:
            data[position % len(data)] ^= mask
    path = tmp_path / "fuzz.jsonl.gz"
    path.write_bytes(bytes(data))
    reader = GzipLines(path)
    got = list(reader)
    expected = zlib.decompressobj(31).decompress(original).splitlines(keepends=True)
    if reader.complete:
        assert got == expected
    else:
        assert reader.error
        # Whatever it returns is complete lines; without corruption, a prefix of the data.
        assert all(line.endswith(b"\n") for line in got)
        if not flips:
            assert got == expected[: len(got)]


@pytest.mark.parametrize(
    "garbage", [b"", b"\x1f\x8b", b"not gzip at all", b"\x1f\x8b\x08\x00" + b"\x00" * 20]
)
def test_garbage_files_read_as_incomplete_not_as_errors(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "g.jsonl.gz"
    path.write_bytes(garbage)
    reader = GzipLines(path)
    assert list(reader) == [] and not reader.complete and reader.error
