"""The bridge's protocol parts without a server: ack subjects, publish acks, pull credit,
the error map, and cancelling a call across the thread."""

from __future__ import annotations

import asyncio
import threading

import nats.errors
import nats.js.errors
import pytest
import trio

from ssmd.deadline import arm_shutdown_deadline
from ssmd.nats.loop import AsyncioThread
from ssmd.nats.publish import AckInbox, _BatchAcks, parse_pub_ack
from ssmd.nats.pull import (
    HEARTBEAT_S,
    SILENCE_HEARTBEATS,
    PullCredit,
    parse_ack_reply,
    recv_ns_of,
    status_lost,
)
from ssmd.nats.types import ConsumerLost, NatsUnavailable, PublishOutcome, as_unavailable


def test_ack_reply_in_the_old_form() -> None:
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
    reply = "$JS.ACK.MARKETDATA.archiver-kalshi.2.8812.17.1767614400123456789.41"
    assert parse_ack_reply(reply) == (8812, 17, 2, 41)


def test_ack_reply_with_domain_and_account_hash() -> None:
    # $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>.<token>
    reply = "$JS.ACK.hub.ACCHASH.MARKETDATA.archiver-kalshi.1.5.3.1767614400123456789.0.xyz"
    assert parse_ack_reply(reply) == (5, 3, 1, 0)


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.MARKETDATA.archiver-kalshi.1.5.3.1767614400123456789",  # 8 tokens
        "$JS.ACK.hub.MARKETDATA.archiver-kalshi.1.5.3.1767614400123456789.0",  # 10 tokens
        "_INBOX.abc.MARKETDATA.archiver-kalshi.2.8812.17.1767614400123456789.41",
        "",
    ],
)
def test_an_ack_reply_of_another_shape_is_a_clear_error(reply: str) -> None:
    with pytest.raises(ValueError, match="not a JetStream ack subject"):
        parse_ack_reply(reply)


def test_an_ack_reply_without_the_trailing_token_is_read_like_nats_py() -> None:
    reply = "$JS.ACK.hub.ACCHASH.MARKETDATA.archiver-kalshi.1.5.3.1767614400123456789.0"
    assert parse_ack_reply(reply) == (5, 3, 1, 0)


def test_batch_acks_keep_the_first_outcome_and_finish_when_all_are_settled() -> None:
    batch = _BatchAcks(2)
    batch.settle(1, PublishOutcome(stream_seq=8))
    batch.settle(1, PublishOutcome(stream_seq=9, duplicate=True))  # a late duplicate
    assert not batch.done.is_set() and batch.remaining == 1
    batch.settle(0, PublishOutcome(stream_seq=7))
    assert batch.done.is_set()
    assert batch.outcomes == [PublishOutcome(stream_seq=7), PublishOutcome(stream_seq=8)]


def test_the_ack_inbox_settles_the_message_its_reply_subject_names() -> None:
    class FakeNats:
        def new_inbox(self) -> str:
            return "_INBOX.x"

    class Ack:
        def __init__(self, subject: str, data: bytes) -> None:
            self.subject, self.data, self.headers = subject, data, None

    def deliver() -> tuple[_BatchAcks, _BatchAcks]:
        inbox = AckInbox(FakeNats())
        first, second = _BatchAcks(3), _BatchAcks(12)
        inbox._batches.update({"0": first, "12": second})
        inbox._on_ack(Ack("_INBOX.x.12.10", b'{"stream":"MARKETDATA","seq":110}'))
        inbox._on_ack(Ack("_INBOX.x.0.2", b'{"stream":"MARKETDATA","seq":3}'))
        inbox._on_ack(Ack("_INBOX.x.7.0", b'{"stream":"MARKETDATA","seq":1}'))  # gone
        return first, second

    async def in_a_loop() -> tuple[_BatchAcks, _BatchAcks]:
        return deliver()  # _BatchAcks makes asyncio events, so an asyncio loop must run

    first, second = asyncio.run(in_a_loop())
    assert first.outcomes == [None, None, PublishOutcome(stream_seq=3)]
    assert second.outcomes[10] == PublishOutcome(stream_seq=110)
    assert second.remaining == 11


def test_an_asyncio_task_cancelled_on_its_own_side_is_nats_unavailable() -> None:
    async def main() -> None:
        thread = AsyncioThread()

        async def cancelled_by_the_loop() -> None:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(1)

        try:
            with pytest.raises(NatsUnavailable, match="cancelled on the asyncio side"):
                await thread.call(cancelled_by_the_loop)
        finally:
            thread.stop()

    trio.run(main)


def test_pub_ack_stored_and_duplicate() -> None:
    assert parse_pub_ack(b'{"stream":"MARKETDATA","seq":42}', None) == PublishOutcome(stream_seq=42)
    dup = parse_pub_ack(b'{"stream":"MARKETDATA","seq":42,"duplicate":true}', None)
    assert dup == PublishOutcome(stream_seq=42, duplicate=True) and dup.ok


def test_pub_ack_errors() -> None:
    refused = parse_pub_ack(
        b'{"error":{"code":400,"err_code":10054,"description":"maximum messages exceeded"}}',
        None,
    )
    assert refused.error == "APIError: maximum messages exceeded" and not refused.ok
    no_stream = parse_pub_ack(b"", {"Status": "503"})
    assert no_stream.error is not None and no_stream.error.startswith("NoRespondersError")
    empty = parse_pub_ack(b"", None)
    assert empty.error == "empty JetStream reply (status none)"
    garbage = parse_pub_ack(b"hello", None)
    assert garbage.error is not None and "unreadable" in garbage.error
    broken_error = parse_pub_ack(b'{"error": 5', None)
    assert broken_error.error == 'APIError: {"error": 5'


def test_pull_credit_keeps_two_batches_outstanding() -> None:
    credit = PullCredit(expires_s=30.0)
    assert credit.request_size(batch=100, buffered=0, now=0.0) == 200
    credit.requested(200, now=0.0)
    assert credit.request_size(100, 0, 1.0) == 0
    for _ in range(40):
        credit.delivered()
    # 40 used: less than half a batch, so no request for a trickle.
    assert credit.request_size(100, 40, 1.0) == 0
    # Handed over: 40 short of two batches, still under half a batch.
    assert credit.request_size(100, 0, 1.0) == 0
    for _ in range(20):
        credit.delivered()
    assert credit.request_size(100, 0, 1.0) == 60
    credit.requested(60, now=1.0)
    assert credit.credit == 200


def test_pull_credit_expires_and_is_given_back() -> None:
    credit = PullCredit(expires_s=5.0)
    credit.requested(200, now=0.0)
    # An expired request announces what it did not deliver.
    credit.request_ended(pending=150)
    assert credit.credit == 50
    credit.request_ended(pending=None)
    assert credit.credit == 0
    credit.requested(200, now=10.0)
    # Past its expiry the credit is forgotten even without a status reply.
    assert credit.request_size(100, 0, now=15.0) == 200


def test_pull_credit_silence_means_lost_only_while_credit_is_out() -> None:
    credit = PullCredit(expires_s=30.0)
    limit = SILENCE_HEARTBEATS * HEARTBEAT_S
    assert not credit.lost(now=1000.0)  # nothing asked: silence is expected
    credit.requested(10, now=100.0)
    assert not credit.lost(now=100.0 + limit - 0.1)
    credit.heard(now=100.0 + limit - 0.1)
    assert not credit.lost(now=100.0 + limit + 0.5)
    assert credit.lost(now=100.0 + 2 * limit)
    credit.request_ended(pending=None)
    assert not credit.lost(now=100.0 + 3 * limit)


def test_error_map() -> None:
    assert isinstance(as_unavailable(nats.errors.NoServersError()), NatsUnavailable)
    assert isinstance(as_unavailable(TimeoutError()), NatsUnavailable)
    assert isinstance(as_unavailable(ConnectionResetError("reset")), NatsUnavailable)
    lost = ConsumerLost("gone")
    assert as_unavailable(lost) is lost
    assert isinstance(as_unavailable(nats.js.errors.APIError(code=503)), NatsUnavailable)
    assert as_unavailable(nats.js.errors.APIError(code=400, description="bad")) is None
    assert as_unavailable(ValueError("bug")) is None


async def test_cancelling_a_call_cancels_and_awaits_the_asyncio_task() -> None:
    thread = AsyncioThread()
    started = threading.Event()
    ended: list[str] = []

    async def slow() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # cleanup that must finish before the call returns
            ended.append("cancelled")
            raise

    try:
        with trio.move_on_after(30) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(thread.call, slow)
                await trio.to_thread.run_sync(started.wait)
                nursery.cancel_scope.cancel()
        assert not scope.cancelled_caught
        assert ended == ["cancelled"]

        async def echo(text: str) -> str:
            return text

        assert await thread.call(echo, "still usable") == "still usable"
    finally:
        thread.stop()


async def test_a_task_that_ignores_cancellation_is_left_at_the_shutdown_deadline() -> None:
    thread = AsyncioThread()
    started = threading.Event()
    release = threading.Event()
    done = threading.Event()

    async def stubborn() -> None:
        started.set()
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue
        done.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(thread.call, stubborn)
            await trio.to_thread.run_sync(started.wait)
            t0 = trio.current_time()
            arm_shutdown_deadline(t0 + 0.5)
            nursery.cancel_scope.cancel()
        # Bounded by the deadline, not the call's own 10 s wait.
        assert trio.current_time() - t0 < 5.0
    finally:
        release.set()
        await trio.to_thread.run_sync(done.wait, 10.0)
        thread.stop()


def test_pull_status_replies() -> None:
    assert status_lost("503", "No Responders")
    assert status_lost("409", "Consumer Deleted")
    assert not status_lost("408", "Request Timeout")
    assert not status_lost("409", "Exceeded MaxWaiting")
    assert recv_ns_of({"Ssmd-Recv-Ns": "1767614400123456789"}) == 1767614400123456789
    assert recv_ns_of({"Ssmd-Recv-Ns": "soon"}) is None
    assert recv_ns_of(None) is None
