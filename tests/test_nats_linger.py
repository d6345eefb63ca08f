"""The linger stretches only at a trickle, and never past TRICKLE_STRETCH lingers, in the
publisher and in the pull consumer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from ssmd.clock import WallClock
from ssmd.connector.publisher import Inbound, Publisher
from ssmd.nats.bridge import open_bridge
from ssmd.nats.linger import TRICKLE_BATCH, TRICKLE_STRETCH, stretch
from ssmd.nats.pull import PullState
from ssmd.nats.server import NatsServer
from ssmd.nats.types import OutgoingMessage, PublishOutcome
from tests.procs import publish_range, stream_spec


def test_a_linger_that_gathered_enough_is_not_stretched() -> None:
    # 20 ms at 1,000 msg/s gathers ~20, 10 ms ~10: the latency at that rate is left
    # alone, and so is a linger that came close (no wakeup for a short extension).
    assert stretch(0.020, 20) == 0.0
    assert stretch(0.010, TRICKLE_BATCH) == 0.0
    assert stretch(0.010, TRICKLE_BATCH // 2 + 1) == 0.0


def test_no_linger_means_no_stretch() -> None:
    assert stretch(0.0, 1) == 0.0


@pytest.mark.parametrize("gathered", [0, 1, 2])
def test_a_trickle_waits_at_most_the_stretch_in_all(gathered: int) -> None:
    assert stretch(0.020, gathered) == pytest.approx((TRICKLE_STRETCH - 1) * 0.020)


def test_a_half_full_linger_waits_as_long_as_the_rate_needs() -> None:
    # 5 in 20 ms: 4 ms each, 5 more take 20 ms.
    assert stretch(0.020, TRICKLE_BATCH // 2) == pytest.approx(TRICKLE_BATCH // 2 * 0.004)


class _Calls:
    def __init__(self) -> None:
        self.at: list[tuple[float, int]] = []

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], timeout: float
    ) -> list[PublishOutcome]:
        self.at.append((trio.current_time(), len(messages)))
        return [PublishOutcome(stream_seq=i + 1) for i in range(len(messages))]


def _publisher(calls: _Calls, linger: float) -> Publisher:
    return Publisher(
        calls.publish_batch,
        env="prod",
        feed="kalshi",
        clock=WallClock(0),
        buffer_messages=1000,
        buffer_bytes=1 << 20,
        batch_max=1000,
        timeout=5.0,
        linger=linger,
    )


async def _feed(publisher: Publisher, gaps: list[float]) -> None:
    send, receive = trio.open_memory_channel[list[Inbound]](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.run, receive)
        async with send:
            for i, gap in enumerate(gaps):
                await trio.sleep(gap)
                await send.send([Inbound("prod.kalshi.json.trade.A", b'{"i":%d}' % i, i)])
            await trio.sleep(1.0)


async def test_a_lone_message_is_published_after_the_stretched_linger(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = _Calls()
    await _feed(_publisher(calls, 0.010), [0.0])
    assert len(calls.at) == 1
    assert calls.at[0][0] == pytest.approx(TRICKLE_STRETCH * 0.010)


async def test_a_busy_linger_is_not_stretched(autojump_clock: trio.testing.MockClock) -> None:
    calls = _Calls()
    # 20 messages 0.5 ms apart: the 10 ms linger gathers all of them.
    await _feed(_publisher(calls, 0.010), [0.0] + [0.0005] * 19)
    at, size = calls.at[0]
    assert size == 20
    assert at == pytest.approx(0.010)


async def test_a_pull_at_a_trickle_waits_the_stretched_linger(nats_server: NatsServer) -> None:
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.>"]))
        consumer = await bridge.reset_consumer(
            "MARKETDATA", "linger", "prod.>", None, 30.0, 1000, linger_s=0.1
        )
        await publish_range(bridge, 1, 1)
        started = trio.current_time()
        assert len(await consumer.fetch(100, 5.0)) == 1
        # Only a lower bound: a loaded machine can make it longer, never shorter.
        assert trio.current_time() - started >= TRICKLE_STRETCH * 0.1 * 0.95


class _QuietConnection:
    """The nats-py calls a `PullState` makes, with nothing on the wire."""

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        pass


def test_a_stretched_pull_linger_never_outlasts_the_fetch_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With `archiver.linger` at half of `fetch_timeout`, the stretch (up to 4 lingers
    more) is cut at the fetch's deadline: a drain's short fetch stays short. The asyncio
    loop's time is virtual: each sleep moves it by exactly what was asked."""
    timeout, linger = 0.2, 0.1
    real_sleep = asyncio.sleep

    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        now = [0.0]
        monkeypatch.setattr(loop, "time", lambda: now[0])

        async def sleep(seconds: float) -> None:
            now[0] += seconds
            await real_sleep(0)

        monkeypatch.setattr(asyncio, "sleep", sleep)
        state = PullState(_QuietConnection(), "MARKETDATA", "c", 5.0, linger)
        msg = SimpleNamespace(
            subject="prod.kalshi.json.trade.A",
            data=b"{}",
            headers=None,
            reply="$JS.ACK.MARKETDATA.c.1.1.1.1767614400123456789.0",
        )
        state.on_message(msg)
        out = await state.fetch(100, timeout)
        return len(out), now[0]

    delivered, elapsed = asyncio.run(main())
    assert delivered == 1
    assert elapsed <= timeout + 1e-9, f"the fetch waited {elapsed:.2f}s of its {timeout}s"
    assert stretch(linger, 1) > timeout - linger  # uncapped, the stretch would outlast it
