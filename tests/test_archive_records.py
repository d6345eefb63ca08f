"""An archived payload comes back byte for byte: what replay republishes and what the
`raw` table holds is what the venue sent, whatever its shape."""

from __future__ import annotations

import json

import pytest

from ssmd.archive.records import Record
from ssmd.archiver.lines import format_line

SHAPES = [
    b'{"type": "trade", "msg": {"price": 0.10, "size": 1.50}}',
    b'{"_id": 7, "price": 0.10, "nested": {"_x": [1, 2.0]}}',  # own `_` keys: under _raw
    b'[{"asset_id": "123", "price": "0.10"}, {"price": 0.10, "size": 2.50} ]',  # Polymarket
    b"  [1, 2.000]  ",
    b'"0.10"',  # a JSON string whose text is JSON
    b"12.50",
    b"pong",  # not JSON
    b"\xff\xfe not utf-8",
    b"{}",
]


@pytest.mark.parametrize("backfilled", [False, True])
@pytest.mark.parametrize("payload", SHAPES)
def test_payload_bytes_are_the_archived_payload_exactly(payload: bytes, backfilled: bool) -> None:
    line = format_line(
        42, "prod.polymarket.json.book.0xabc", payload, 1_700_000_000, backfilled=backfilled
    )
    record = Record.from_line(line)
    assert record.backfilled is backfilled
    assert record.payload_bytes() == payload.strip()
    text = record.payload_json()
    try:
        expected = json.loads(payload)
    except ValueError:
        expected = None
    if expected is not None:
        assert text.encode() == payload.strip()
    elif payload.startswith(b"\xff"):
        assert json.loads(text) == "//4gbm90IHV0Zi04"
    else:
        assert json.loads(text) == payload.decode()
