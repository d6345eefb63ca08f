"""One archive line per stream message.

A line is the published payload with ssmd's metadata spliced in as leading keys that
start with `_`: `_seq` (stream sequence), `_subject`, and `_recv_ns` (the connector's
receive time) when the message carries it, then `_backfilled: true` on a message fetched
from the venue's REST API after a loss rather than received live. The payload's bytes
are kept as they are, so
`json.loads(line)` minus the `_` keys equals `json.loads(payload)`.

A single-line object payload is checked by msgspec, reading only its top-level keys;
everything else (and whatever msgspec refuses) is read by `json.loads`, as before.

A payload that is not a JSON object, or an object with its own top-level `_` keys, is
kept whole under `_raw` (the JSON value), or as a string under `_raw` when it is not
JSON, or base64 under `_raw_b64` when it is not even UTF-8. Nothing is dropped.
"""

from __future__ import annotations

import base64
import json
import re

import msgspec

from ssmd.text import is_utf8

_loads = json.loads
# The top level of an object payload: its keys, and its values left as raw JSON (checked,
# never built). Anything this refuses takes the `json.loads` path.
_decode_top = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
# The fixed prefix ssmd writes: `_seq`, `_subject`, `_recv_ns` when known, `_backfilled`.
PREFIX = re.compile(
    rb'^\{"_seq":(\d+),"_subject":"((?:[^"\\]|\\.)*)"(?:,"_recv_ns":(\d+))?(,"_backfilled":true)?'
)


def _subject_json(subject: str) -> bytes:
    if subject.isascii() and '"' not in subject and "\\" not in subject and subject.isprintable():
        return b'"' + subject.encode() + b'"'
    return json.dumps(subject).encode()


def format_line(
    seq: int, subject: str, payload: bytes, recv_ns: int | None, *, backfilled: bool = False
) -> bytes:
    head = b'{"_seq":%d,"_subject":%s' % (seq, _subject_json(subject))
    if recv_ns is not None:
        head += b',"_recv_ns":%d' % recv_ns
    if backfilled:
        head += b',"_backfilled":true'
    if b"\n" not in payload and b"\r" not in payload and is_utf8(payload):
        try:
            top = _decode_top(payload)
        except (msgspec.MsgspecError, RecursionError):
            pass  # not an object, or JSON msgspec reads differently: see below
        else:
            if not any(key.startswith("_") for key in top):
                inner = payload.strip()[1:].lstrip()
                if inner.startswith(b"}"):
                    return head + b"}\n"
                return head + b"," + inner + b"\n"
    try:
        value = _loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return head + _wrap_invalid(payload) + b"}\n"
    multiline = b"\n" in payload or b"\r" in payload
    if isinstance(value, dict) and not any(key.startswith("_") for key in value):
        if multiline:
            body = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        else:
            body = payload.strip()
        inner = body[1:].lstrip()
        if inner.startswith(b"}"):
            return head + b"}\n"
        return head + b"," + inner + b"\n"
    if multiline:
        raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    else:
        raw = payload.strip()
    return head + b',"_raw":' + raw + b"}\n"


def _wrap_invalid(payload: bytes) -> bytes:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return b',"_raw_b64":"' + base64.b64encode(payload) + b'"'
    return b',"_raw":' + json.dumps(text, ensure_ascii=False).encode()


def strip_meta(record: dict[str, object]) -> object:
    """The original payload's value from a parsed archive line."""
    if "_raw" in record:
        return record["_raw"]
    if "_raw_b64" in record:
        return base64.b64decode(str(record["_raw_b64"]))
    return {k: v for k, v in record.items() if not k.startswith("_")}


def read_prefix(line: bytes) -> tuple[int, str, int | None] | None:
    """(`_seq`, `_subject`, `_recv_ns`) from an archive line's fixed prefix, without
    parsing the payload; None for a line ssmd did not write."""
    match = PREFIX.match(line)
    if match is None:
        return None
    raw_subject = match.group(2)
    subject = (
        json.loads(b'"' + raw_subject + b'"') if b"\\" in raw_subject else raw_subject.decode()
    )
    recv = match.group(3)
    return int(match.group(1)), subject, int(recv) if recv else None
