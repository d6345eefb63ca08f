"""Splitting JSON-array frames: exact element bytes, in order, and nothing ever lost."""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ssmd.feeds.jsonframes import element_offsets, is_array_frame, split_array

WHITESPACE = st.text(alphabet=" \t\r\n", max_size=3)
# Strings full of what a naive scanner trips on: brackets, braces, commas, quotes,
# backslashes, control characters and non-ASCII text.
TRICKY_TEXT = st.text(
    alphabet=st.one_of(st.sampled_from('[]{},:"\\/\n\t\x00\x1f'), st.characters(codec="utf-8")),
    max_size=12,
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    TRICKY_TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(TRICKY_TEXT, children, max_size=4),
    ),
    max_leaves=20,
)
OPEN, COMMA, CLOSE = (
    re.compile(rb"[ \t\r\n]*" + p + rb"[ \t\r\n]*") for p in (rb"\[", b",", rb"\]")
)


def render(value: Any, data: st.DataObject) -> str:
    """JSON text for `value`, with random whitespace between tokens and random escaping."""

    def ws() -> str:
        return data.draw(WHITESPACE)

    if isinstance(value, list):
        inner = ",".join(ws() + render(v, data) + ws() for v in value)
        return "[" + (inner or ws()) + "]"
    if isinstance(value, dict):
        items = [
            ws() + render(k, data) + ws() + ":" + ws() + render(v, data) + ws()
            for k, v in value.items()
        ]
        return "{" + (",".join(items) or ws()) + "}"
    return json.dumps(value, ensure_ascii=data.draw(st.booleans()))


def assert_nothing_lost(frame: bytes, parts: list[bytes]) -> None:
    """Either the whole frame, or spans that are the frame minus only JSON punctuation."""
    assert parts, "a frame always yields at least one message"
    if parts == [frame]:
        return
    offsets = element_offsets(frame, parts)
    gaps = []
    position = 0
    for start, part in zip(offsets, parts, strict=True):
        gaps.append(frame[position:start])
        position = start + len(part)
    gaps.append(frame[position:])
    # Before the first element: `[`; between elements: `,`; after the last: `]`.
    expected = [OPEN] + [COMMA] * (len(parts) - 1) + [CLOSE]
    for gap, pattern in zip(gaps, expected, strict=True):
        assert pattern.fullmatch(gap), (gap, pattern.pattern)


@settings(max_examples=300)
@given(st.lists(VALUES, min_size=1, max_size=6), st.data())
def test_array_elements_are_their_exact_spans(elements: list[Any], data: st.DataObject) -> None:
    text = data.draw(WHITESPACE) + render(elements, data) + data.draw(WHITESPACE)
    frame = text.encode()
    parts = split_array(frame)
    assert len(parts) == len(elements)
    for part, element in zip(parts, elements, strict=True):
        assert json.loads(part) == element
        assert part == part.strip(b" \t\r\n"), "spans carry no surrounding whitespace"
    assert_nothing_lost(frame, parts)


@given(VALUES, st.data())
def test_a_frame_that_is_not_an_array_is_one_message(value: Any, data: st.DataObject) -> None:
    frame = render(value, data).encode()
    if isinstance(value, list) and value:
        return
    assert split_array(frame) == [frame]


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_and_never_drop(frame: bytes) -> None:
    assert_nothing_lost(frame, split_array(frame))


@settings(max_examples=300)
@given(st.lists(VALUES, min_size=1, max_size=4), st.data())
def test_damaged_arrays_never_raise_and_never_drop(
    elements: list[Any], data: st.DataObject
) -> None:
    frame = bytearray(render(elements, data).encode())
    position = data.draw(st.integers(0, len(frame)))
    match data.draw(st.sampled_from(("truncate", "insert", "delete"))):
        case "truncate":
            del frame[position:]
        case "insert":
            frame[position:position] = data.draw(st.binary(min_size=1, max_size=3))
        case "delete":
            del frame[position : position + 1]
    assert_nothing_lost(bytes(frame), split_array(bytes(frame)))


def test_polymarket_burst_keeps_each_events_bytes() -> None:
    book = b'{"event_type":"book","market":"0x5f","asset_id":"713","bids":[{"price":".48","size":"30"}],"asks":[]}'
    change = b'{"event_type":"price_change","market":"0x5f","price_changes":[{"asset_id":"713","price":"0.5","size":"200","side":"BUY"}],"timestamp":"1757908892351"}'
    frame = b"[" + book + b", " + change + b"]"
    assert split_array(frame) == [book, change]


def test_brackets_quotes_and_escapes_inside_strings_do_not_split() -> None:
    first = rb'{"q":"] , [ \" \\ }{","\u00e9":"\u2603 snow"}'
    second = '{"text":"caf\u00e9 ],["}'.encode()
    frame = b" \n[ " + first + b"\t,\r\n" + second + b" ]\n"
    assert split_array(frame) == [first, second]


def test_whole_frame_when_unsplittable() -> None:
    for frame in (
        b"",
        b"PONG",
        b"[]",
        b" [ ] ",
        b"[1,",
        b'[{"a":1},]',
        b'[{"a":1}] trailing',
        b"[" * 5000 + b"]" * 5000,
        b'{"event_type":"book"}',
    ):
        assert split_array(frame) == [frame], frame[:40]


def test_nested_arrays_split_only_at_the_top_level() -> None:
    assert split_array(b"[[1,[2]],[],{}]") == [b"[1,[2]]", b"[]", b"{}"]


def test_is_array_frame() -> None:
    assert is_array_frame(b" \r\n\t[1]")
    assert not is_array_frame(b'{"a":[1]}')
    assert not is_array_frame(b"")
