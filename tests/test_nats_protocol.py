"""The bridge's protocol parts without a server: ack subjects, publish acks, pull credit,
the error map, and cancelling a call across the thread."""

from __future__ import annotations

import asyncio
import threading

import nats.errors
import nats.js.errors
import trio

from ssmd.deadline import arm_shutdown_deadline
from ssmd.nats.loop import AsyncioThread
from ssmd.nats.publish import parse_pub_ack
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
