"""The fetcher's drain against a real nats-server: it ends, whatever the stream holds."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio

from ssmd.archiver.fetcher import Batch, Drain, FetcherStats, RotateTick, run_fetcher
from ssmd.archiver.service import JetStreamConsumers
from ssmd.clock import WallClock
from ssmd.config import load_config
from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from tests.procs import publish_range, stream_spec, write_config

pytestmark = pytest.mark.trio


async def test_a_drain_ends_when_the_feeds_messages_have_left_the_stream(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Opened below the stream's first sequence on a narrow filter, the consumer reports
    a delivered stream sequence no message of this feed will ever reach: the drain must
    still end at once (it counts deliveries), not wait for the shutdown deadline."""
    config = load_config(write_config(tmp_path / "ssmd.toml", nats_server.url, tmp_path / "a"))
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.>"], max_msgs=4))
        await publish_range(bridge, 1, 2, feed="kalshi")
        await publish_range(bridge, 3, 10, feed="polymarket")  # the stream keeps 7..10
        state = await bridge.stream_state("MARKETDATA")
        assert state is not None and state.first_seq == 7
        drain = Drain(partial(bridge.consumer_position, "MARKETDATA", "archiver-kalshi"))
        drain.requested.set()
        send, receive = trio.open_memory_channel[Batch | RotateTick](100)
        batches: list[Batch | RotateTick] = []
        with trio.fail_after(10):  # without the fix it never ends
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(
                        run_fetcher,
                        JetStreamConsumers(bridge, config),
                        2,
                        send,
                        batch_size=100,
                        fetch_timeout=1.0,
                        covers_stream=False,
                        clock=WallClock(0),
                        stats=FetcherStats(),
                        durable=lambda: None,
                        drain=drain,
                    )
                )
                async with receive:
                    batches.extend([item async for item in receive])
    assert not [m for b in batches if isinstance(b, Batch) for m in b.messages]
