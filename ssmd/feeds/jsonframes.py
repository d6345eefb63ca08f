"""Split a frame that is a JSON array into its elements' exact bytes, in order.

Polymarket sends one JSON object per frame, or a JSON array of them. ssmd publishes each
element by itself, as the very bytes it had in the frame (its span, never re-serialised),
so the archive holds what the exchange sent. msgspec parses the array in C and hands back
each element as a `msgspec.Raw`, a slice of the input: the whole frame is validated and
split in one pass.

Nothing is lost: a frame that is not an array, an empty array and anything malformed come
back whole, as one message (the caller then routes it as unrouted). The only bytes of an
array frame that are not in some element are its brackets, commas and JSON whitespace.
"""

from __future__ import annotations

import msgspec

_ARRAY_OF_RAW = msgspec.json.Decoder(list[msgspec.Raw])
_JSON_WHITESPACE = b" \t\r\n"


def is_array_frame(frame: bytes) -> bool:
    """Whether the frame's first non-whitespace byte opens a JSON array."""
    return frame.lstrip(_JSON_WHITESPACE)[:1] == b"["


def split_array(frame: bytes) -> list[bytes]:
    """The elements of a JSON-array frame as their exact byte spans; `[frame]` otherwise.

    Never raises. A frame comes back whole when it is not an array, when the array is
    empty (no element would carry its bytes) and when it is not valid JSON.
    """
    if not is_array_frame(frame):
        return [frame]
    try:
        elements = _ARRAY_OF_RAW.decode(frame)
    except (msgspec.MsgspecError, RecursionError, ValueError):
        return [frame]
    if not elements:
        return [frame]
    return [bytes(element) for element in elements]


def element_offsets(frame: bytes, elements: list[bytes]) -> list[int]:
    """Where each element starts in `frame` (for checking a split, not on the hot path).

    Elements are consecutive and separated only by whitespace and commas, and none starts
    with either, so the first occurrence after the previous element is the element.
    """
    offsets = []
    position = 0
    for element in elements:
        start = frame.find(element, position)
        if start < 0:
            raise ValueError(f"element not found in frame after byte {position}")
        offsets.append(start)
        position = start + len(element)
    return offsets
