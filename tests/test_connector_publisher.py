"""The publisher under a fake clock, with a fake `publish_batch` standing in for NATS."""

from __future__ import annotations

import json
from collections.abc import Sequence

import trio
import trio.testing

from ssmd.clock import WallClock
from ssmd.connector.publisher import Inbound, Publisher
from ssmd.nats.types import NatsUnavailable, OutgoingMessage, PublishOutcome


class FakeStream:
    """Stores published messages, deduplicating by Nats-Msg-Id like JetStream does."""

    def __init__(self) -> None:
        self.stored: list[OutgoingMessage] = []
        self.ids: set[str] = set()
        self.calls: list[list[OutgoingMessage]] = []
        self.up = True
        self.fail_next = 0
        self.hang = False
        self.reject_subjects: set[str] = set()

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], timeout: float
    ) -> list[PublishOutcome]:
        self.calls.append(list(messages))
        await trio.sleep(0.001)
        if self.hang:
            await trio.sleep_forever()
        if not self.up:
            await trio.sleep(timeout)
            return [PublishOutcome(error="timed out waiting for the JetStream ack")] * len(messages)
        if self.fail_next:
            self.fail_next -= 1
            raise NatsUnavailable("connection closed")
        outcomes = []
        for m in messages:
            if m.subject in self.reject_subjects:
                outcomes.append(
                    PublishOutcome(error="MaxPayloadError: nats: maximum payload exceeded")
                )
                continue
            if m.payload.endswith(b"3") and m.msg_id not in self.ids:
                # A lost ack: stored, but the client never hears of it.
                self.ids.add(m.msg_id)
                self.stored.append(m)
                outcomes.append(PublishOutcome(error="timed out waiting for the JetStream ack"))
                continue
            duplicate = m.msg_id in self.ids
            if not duplicate:
                self.ids.add(m.msg_id)
                self.stored.append(m)
            outcomes.append(PublishOutcome(stream_seq=len(self.stored), duplicate=duplicate))
        return outcomes


def make_publisher(stream: FakeStream, **overrides: object) -> Publisher:
    options: dict[str, object] = {
        "env": "test",
        "feed": "kalshi",
        "clock": WallClock(anchor_ns=1_700_000_000 * 10**9),
        "buffer_messages": 1000,
        "buffer_bytes": 10**6,
        "batch_max": 100,
        "timeout": 5.0,
    }
    options.update(overrides)
    return Publisher(stream.publish_batch, **options)  # type: ignore[arg-type]


def inbound(n: int, size: int = 20) -> Inbound:
    return Inbound(f"test.kalshi.json.trade.T{n}", f"{n:0{size}d}".encode(), 1000 + n)


async def test_every_message_stored_once_with_unique_ids(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream = FakeStream()
    publisher = make_publisher(stream)
    send, receive = trio.open_memory_channel[list[Inbound]](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.run, receive)
        async with send:
            for n in range(500):
                await send.send([inbound(n)])
    assert [m.payload for m in stream.stored] != []
    assert sorted(m.payload for m in stream.stored) == [inbound(n).payload for n in range(500)]
    ids = [m.msg_id for m in stream.stored]
    assert len(set(ids)) == 500
    assert all(m.msg_id.startswith(publisher.run_id + "-") for m in stream.stored)
    assert all(len(call) <= 100 for call in stream.calls)
    assert publisher.stats.acked == 500
    assert publisher.stats.duplicates > 0  # the lost acks were retried and deduplicated


async def test_retries_keep_the_same_ids_until_acknowledged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream = FakeStream()
    stream.up = False
    publisher = make_publisher(stream)
    send, receive = trio.open_memory_channel[list[Inbound]](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.run, receive)
        async with send:
            for n in range(50):
                await send.send([inbound(n)])
            await trio.sleep(30)
            first_try, *retries = stream.calls
            stream.up = True
            stream.fail_next = 2
    # After the first failure the oldest message alone probes the stream, under one id.
    assert len(retries) >= 2 and all(call == first_try[:1] for call in retries)
    stored = {m.msg_id: m.payload for m in stream.stored}
    assert all(stored[m.msg_id] == m.payload for m in first_try)
    assert sorted(stored.values()) == [inbound(n).payload for n in range(50)]
    assert len(stream.stored) == 50
    # Backoff between retries: a handful of attempts in 30 s of outage, not thousands.
    assert 3 <= len(stream.calls) < 40


class ElectingStream(FakeStream):
    """No stream leader for the next `refuse` messages, which get no responders; after
    that every message is stored. A batch in flight when the leader is elected has its
    head refused and its tail stored."""

    def __init__(self, refuse: int) -> None:
        super().__init__()
        self.refuse = refuse

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], timeout: float
    ) -> list[PublishOutcome]:
        self.calls.append(list(messages))
        await trio.sleep(0.001)
        outcomes = []
        for m in messages:
            if self.refuse > 0:
                self.refuse -= 1
                outcomes.append(PublishOutcome(error="NoRespondersError: no stream"))
            else:
                self.stored.append(m)
                outcomes.append(PublishOutcome(stream_seq=len(self.stored)))
        return outcomes


async def test_an_outage_of_hours_is_waited_out(autojump_clock: trio.testing.MockClock) -> None:
    stream = FakeStream()
    publisher = make_publisher(stream, timeout=0.001)
    send, receive = trio.open_memory_channel[list[Inbound]](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.run, receive)
        async with send:
            stream.fail_next = 10**9
            await send.send([inbound(1)])
            # Far past 1,024 failed attempts, where 2**failures once overflowed a float.
            while len(stream.calls) < 3000:
                await trio.sleep(60)
            stream.fail_next = 0
    assert [m.payload for m in stream.stored] == [inbound(1).payload]


async def test_a_stream_back_mid_batch_still_stores_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream = ElectingStream(refuse=150)
    publisher = make_publisher(stream)
    send, receive = trio.open_memory_channel[list[Inbound]](10)
    async with send:
        await send.send([inbound(n) for n in range(300)])
    await publisher.run(receive)
    assert [m.payload for m in stream.stored] == [inbound(n).payload for n in range(300)]
    # After a failure one message probes the stream; full batches resume once it is stored.
    assert [len(call) for call in stream.calls][:2] == [100, 1]
    assert max(len(call) for call in stream.calls[-2:]) == 100


async def test_reader_never_waits_and_overflow_is_recorded_in_place(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream = FakeStream()
    stream.up = False
    publisher = make_publisher(stream, buffer_messages=5)
    send, receive = trio.open_memory_channel[list[Inbound]](1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.run, receive)
        async with send:
            await send.send([inbound(0)])
            await trio.sleep(1)
            start = trio.current_time()
            for n in range(1, 12):
                await send.send([inbound(n)])
            assert trio.current_time() == start  # sending never waited on NATS
            await trio.sleep(20)
            stream.up = True
            await trio.sleep(30)
            await send.send([inbound(99)])
    payloads = [m.payload for m in stream.stored]
    assert payloads[:5] == [inbound(n).payload for n in range(5)]
    record = json.loads(payloads[5])
    assert stream.stored[5].subject == "test.kalshi.json.ssmd.overflow"
    assert record["type"] == "ssmd_overflow"
    assert record["dropped"] == 7
    assert record["dropped_bytes"] == 7 * 20
    assert record["first_recv_ns"] == inbound(5).recv_ns
    assert record["last_recv_ns"] == inbound(11).recv_ns
    assert payloads[6:] == [inbound(99).payload]
    assert publisher.stats.dropped == 7


async def test_byte_limit_bounds_the_buffer(autojump_clock: trio.testing.MockClock) -> None:
    stream = FakeStream()
    stream.up = False
    publisher = make_publisher(stream, buffer_bytes=100)
    send, receive = trio.open_memory_channel[list[Inbound]](1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.run, receive)
        async with send:
            for n in range(10):
                await send.send([inbound(n, size=30)])
            await trio.sleep(1)
            assert publisher.buffered == 3
            stream.up = True
    assert publisher.stats.dropped == 7
    assert len(stream.stored) == 4
    assert json.loads(stream.stored[-1].payload)["dropped"] == 7


async def test_close_drains_everything_before_returning(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream = FakeStream()
    stream.up = False
    publisher = make_publisher(stream)
    send, receive = trio.open_memory_channel[list[Inbound]](100)

    async def restore() -> None:
        await trio.sleep(60)
        stream.up = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(restore)
        async with send:
            for n in range(20):
                await send.send([inbound(n)])
        await publisher.run(receive)
        assert trio.current_time() >= 60
    assert len(stream.stored) == 20


async def test_a_hung_bridge_call_is_abandoned_and_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream = FakeStream()
    stream.hang = True
    publisher = make_publisher(stream, timeout=2.0)
    send, receive = trio.open_memory_channel[list[Inbound]](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.run, receive)
        async with send:
            await send.send([inbound(1)])
            await trio.sleep(12)
            assert len(stream.calls) >= 2
            stream.hang = False
    assert [m.payload for m in stream.stored] == [inbound(1).payload]


async def test_a_permanently_refused_message_does_not_block_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream = FakeStream()
    stream.reject_subjects = {inbound(3).subject}
    publisher = make_publisher(stream)
    send, receive = trio.open_memory_channel[list[Inbound]](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.run, receive)
        async with send:
            for n in range(6):
                await send.send([inbound(n)])
    data = [m for m in stream.stored if ".ssmd." not in m.subject]
    assert sorted(m.payload for m in data) == [inbound(n).payload for n in (0, 1, 2, 4, 5)]
    assert publisher.stats.rejected == 1
    records = [json.loads(m.payload) for m in stream.stored if m.subject.endswith(".ssmd.rejected")]
    assert [(r["subject"], r["bytes"]) for r in records] == [
        (inbound(3).subject, len(inbound(3).payload))
    ]


def test_oversized_messages_are_permanent_failures_and_timeouts_are_not() -> None:
    from ssmd.connector.publisher import is_permanent

    assert is_permanent("MaxPayloadError: nats: maximum payload exceeded")
    assert is_permanent("APIError: message size exceeds maximum allowed")
    assert not is_permanent("timed out waiting for the JetStream ack")
    assert not is_permanent("NoRespondersError: no stream for this subject")
