"""Replay to a real nats-server: the receive time travels in `Ssmd-Recv-Ns` only when
the archived record has one. A record without it (a message published without the
header, archived without `_recv_ns`) is republished without the header, never with a
made-up `0`, which a downstream archiver would store as a receive time in 1970. A
backfilled record (a trade fetched from REST after a loss) keeps `Ssmd-Backfilled`, so a
consumer being backtested tells it from a live one as it would live."""

from __future__ import annotations

import trio

from ssmd.archive.records import Record
from ssmd.archive.replay import nats_sink, replay
from ssmd.archiver.lines import format_line
from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from tests.backtest_stream import make_stream, read_back

RECV_NS = 1_767_614_400_123_456_789


def test_a_record_without_a_receive_time_is_republished_without_the_header(
    nats_server: NatsServer,
) -> None:
    lines = [
        format_line(1, "test.kalshi.json.trade.A", b'{"a":1}', RECV_NS),
        format_line(2, "test.kalshi.json.trade.B", b'{"b":2}', None),
        format_line(3, "test.kalshi.json.trade.A", b'{"a":3}', RECV_NS + 1),
        format_line(4, "test.kalshi.json.trade.A", b'{"a":4}', RECV_NS + 2, backfilled=True),
    ]
    records = [Record.from_line(line) for line in lines]
    assert [r.recv_ns for r in records] == [RECV_NS, None, RECV_NS + 1, RECV_NS + 2]
    assert [r.backfilled for r in records] == [False, False, False, True]

    async def republish() -> int:
        async with open_bridge([nats_server.url], request_timeout=5.0) as bridge:
            return await replay(records, nats_sink(bridge, "bt"), speed=None)

    make_stream(nats_server.url)
    assert trio.run(republish) == 4
    assert read_back(nats_server.url, 4) == [
        ("bt.test.kalshi.json.trade.A", b'{"a":1}', {"Ssmd-Recv-Ns": str(RECV_NS)}),
        ("bt.test.kalshi.json.trade.B", b'{"b":2}', None),
        ("bt.test.kalshi.json.trade.A", b'{"a":3}', {"Ssmd-Recv-Ns": str(RECV_NS + 1)}),
        (
            "bt.test.kalshi.json.trade.A",
            b'{"a":4}',
            {"Ssmd-Recv-Ns": str(RECV_NS + 2), "Ssmd-Backfilled": "1"},
        ),
    ]
