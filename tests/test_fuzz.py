"""Fuzzing with hypothesis: the config loader over arbitrary TOML, and the archive
reader over truncated and corrupted gzip. No input may crash them; every rejection is a
clear error, and nothing readable is silently lost."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import pytest
import tomli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssmd.archiver.files import GzipLines
from ssmd.config import ConfigError, load_config

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


def to_toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(to_toml(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{k} = {to_toml(v)}" for k, v in value.items()) + "}"


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
        else "\n".join(f"{k} = {to_toml(v)}" for k, v in document.items())
    )
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(str(path)), message
        assert "\n" not in message.strip() or "invalid TOML" in message
        assert "Traceback" not in message


def test_the_documented_example_survives_every_single_key_deletion(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "production.toml"
    data = tomli.loads(example.read_text())
    for section, body in data.items():
        if not isinstance(body, dict):
            continue
        for key in body:
            trimmed = {
                s: ({k: v for k, v in b.items() if k != key} if s == section else b)
                for s, b in data.items()
                if isinstance(b, dict)
            }
            trimmed["env"] = data["env"]
            path = tmp_path / f"{section}-{key}.toml"
            path.write_text(
                "\n".join(
                    [f"env = {json.dumps(data['env'])}"]
                    + [
                        f"[{s}]\n" + "\n".join(f"{k} = {to_toml(v)}" for k, v in b.items())
                        for s, b in trimmed.items()
                        if isinstance(b, dict)
                    ]
                )
            )
            try:
                load_config(path)
            except ConfigError as exc:
                assert f"{section}.{key}" in str(exc), str(exc)


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
