"""The archiver's AckAll rides along with its consumer's next pull traffic (no crossing of
its own): it reaches the server with the next fetch, only the newest one is needed, each
consumer keeps its own, and closing the bridge sends what is still waiting."""

from __future__ import annotations

import pytest
import trio
from prometheus_client.core import Metric

from ssmd.archiver.metrics import archiver_metrics
from ssmd.archiver.service import ArchiverStatus
from ssmd.nats.bridge import NatsBridge, open_bridge
from ssmd.nats.pull import PendingAck, PullConsumer, ack_reply_consumer, send_pending_ack
from ssmd.nats.server import NatsServer
from ssmd.nats.types import NatsUnavailable
from tests.procs import publish_range, stream_spec

STREAM = "MARKETDATA"


def test_the_consumer_of_an_ack_reply_in_both_forms() -> None:
    old = "$JS.ACK.MARKETDATA.archiver-kalshi.2.8812.17.1767614400123456789.41"
    new = "$JS.ACK.hub.ACCHASH.MARKETDATA.archiver-kalshi.1.5.3.1767614400123456789.0.xyz"
    assert ack_reply_consumer(old) == ("MARKETDATA", "archiver-kalshi")
    assert ack_reply_consumer(new) == ("MARKETDATA", "archiver-kalshi")
    with pytest.raises(ValueError, match="not a JetStream ack subject"):
        ack_reply_consumer("_INBOX.abc.1")


def test_a_pending_ack_keeps_only_the_newest_reply_and_is_taken_once() -> None:
    pending = PendingAck()
    assert pending.take() is None
    pending.put("r1")
    pending.put("r2")
    assert pending.take() == "r2"
    assert pending.take() is None


class FakeConnection:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.published: list[str] = []

    async def publish(self, subject: str, payload: bytes) -> None:
        if self.fail:
            raise ConnectionError("connection closed")
        self.published.append(subject)


@pytest.mark.trio
async def test_acks_are_counted_when_sent_and_when_the_send_fails() -> None:
    """`ssmd_archive_acks` counts acks written to the connection (a reply replaced
    before it went out is not one); a failed send reaches `ssmd_archive_ack_failures`."""
    pending = PendingAck()
    pending.put("r1")
    pending.put("r2")
    nc = FakeConnection(fail=False)
    await send_pending_ack(nc, pending)
    await send_pending_ack(nc, pending)  # nothing waits: nothing sent
    assert nc.published == ["r2"] and (pending.sent, pending.failed) == (1, 0)
    pending.put("r3")
    await send_pending_ack(FakeConnection(fail=True), pending)
    assert (pending.sent, pending.failed) == (1, 1)

    status = ArchiverStatus(wire_acks=pending)
    status.writer.acks = 3  # handed over to the bridge
    status.writer.ack_failures = 2  # not even handed over (connection closed, timeout)
    families = {f.name: f for f in archiver_metrics("kalshi", status) if isinstance(f, Metric)}
    assert families["ssmd_archive_acks"].samples[0].value == 1
    assert families["ssmd_archive_ack_failures"].samples[0].value == 3


async def _consumer(bridge: NatsBridge, durable: str, subject: str) -> PullConsumer:
    return await bridge.reset_consumer(STREAM, durable, subject, None, 30.0, 10_000)


async def _floor(bridge: NatsBridge, durable: str) -> int | None:
    return await bridge.consumer_ack_floor(STREAM, durable)


async def _wait_floor(bridge: NatsBridge, durable: str, seq: int) -> None:
    with trio.fail_after(30):
        while (await _floor(bridge, durable) or 0) < seq:
            await trio.sleep(0.05)


@pytest.mark.trio
async def test_the_ack_goes_out_with_the_next_fetch_for_its_own_consumer(
    nats_server: NatsServer,
) -> None:
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.>"]))
        await publish_range(bridge, 1, 10, feed="kalshi")
        await publish_range(bridge, 11, 20, feed="polymarket")
        kalshi = await _consumer(bridge, "a-kalshi", "prod.kalshi.>")
        poly = await _consumer(bridge, "a-poly", "prod.polymarket.>")
        k = await kalshi.fetch(100, 5)
        p = await poly.fetch(100, 5)
        assert len(k) == 10 and len(p) == 10
        await bridge.ack(k[4].reply)
        await bridge.ack(k[-1].reply)  # replaces the older one: AckAll covers it
        await bridge.ack(p[2].reply)
        # Nothing crossed yet: the acks wait for their consumer's pull traffic.
        assert await _floor(bridge, "a-kalshi") is None
        assert await _floor(bridge, "a-poly") is None
        assert await kalshi.fetch(100, 0.2) == []
        await _wait_floor(bridge, "a-kalshi", 10)
        # The other consumer's ack was not sent with (nor replaced by) this one.
        assert await _floor(bridge, "a-poly") is None
        assert await poly.fetch(100, 0.2) == []
        await _wait_floor(bridge, "a-poly", 13)


@pytest.mark.trio
async def test_closing_the_bridge_sends_the_ack_still_waiting(nats_server: NatsServer) -> None:
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.>"]))
        await publish_range(bridge, 1, 5, feed="kalshi")
        consumer = await _consumer(bridge, "a-close", "prod.kalshi.>")
        msgs = await consumer.fetch(100, 5)
        assert len(msgs) == 5
        await bridge.ack(msgs[-1].reply)
    async with open_bridge([nats_server.url]) as bridge:
        await _wait_floor(bridge, "a-close", 5)


@pytest.mark.trio
async def test_an_ack_on_a_closed_bridge_raises(nats_server: NatsServer) -> None:
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.>"]))
        await publish_range(bridge, 1, 1, feed="kalshi")
        consumer = await _consumer(bridge, "a-closed", "prod.kalshi.>")
        (msg,) = await consumer.fetch(100, 5)
    with pytest.raises(NatsUnavailable):
        await bridge.ack(msg.reply)
