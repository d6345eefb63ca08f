"""The fetcher's position logic against a scripted consumer (no NATS, fake clock)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from ssmd.archiver.fetcher import Batch, Drain, FetcherStats, RotateTick, run_fetcher
from ssmd.clock import WallClock
from ssmd.nats.types import ConsumerPosition, FetchedMessage, NatsUnavailable

pytestmark = pytest.mark.trio


def delivery(
    stream_seq: int, consumer_seq: int, delivered: int = 1, pending: int = 0
) -> FetchedMessage:
    return FetchedMessage(
        "prod.kalshi.json.trade.A",
        b"{}",
        stream_seq,
        consumer_seq,
        delivered,
        None,
        f"r{stream_seq}",
        pending,
    )


class Reconnect:
    """A script step: the NATS connection reconnects, and the fetch returns nothing."""


Step = list[FetchedMessage] | Exception | Reconnect


class ScriptedConsumer:
    def __init__(self, source: ScriptedSource, batches: list[Step]) -> None:
        self.source = source
        self.batches = batches

    async def fetch(self, batch: int, timeout: float) -> list[FetchedMessage]:
        if not self.batches:
            await trio.sleep(timeout)
            return []
        item = self.batches.pop(0)
        if isinstance(item, Exception):
            raise item
        if isinstance(item, Reconnect):
            self.source.reconnects += 1
            return []
        return item

    async def close(self) -> None:
        pass


class ScriptedSource:
    def __init__(self, scripts: list[list[Step]], first_seq: int = 1) -> None:
        self.scripts = scripts
        self.opened_at: list[int | None] = []
        self.reconnects = 0
        self._first_seq = first_seq

    async def open_at(self, start_seq: int | None) -> ScriptedConsumer:
        self.opened_at.append(start_seq)
        return ScriptedConsumer(self, self.scripts.pop(0) if self.scripts else [])

    async def first_seq(self) -> int:
        return self._first_seq


async def collect(
    source: ScriptedSource,
    cursor: int | None,
    covers: bool = True,
    stats: FetcherStats | None = None,
    durable: Callable[[], int | None] = lambda: None,
) -> list[Batch]:
    """What the fetcher forwards in 30 s; `durable` is what the writer has fsynced
    (by default nothing since the start: every batch is still on its way to disk)."""
    send, receive = trio.open_memory_channel[Batch | RotateTick](100)
    out: list[Batch] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_fetcher(
                source,
                cursor,
                send,
                batch_size=100,
                fetch_timeout=1,
                covers_stream=covers,
                clock=WallClock(0),
                stats=stats or FetcherStats(),
                durable=durable,
            )
        )
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    async with receive:
        while True:
            try:
                item = receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            assert isinstance(item, Batch)
            out.append(item)
    return out


async def test_starts_right_after_the_archive_cursor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = ScriptedSource([[[delivery(11, 1), delivery(12, 2)]]])
    batches = await collect(source, cursor=10)
    assert source.opened_at == [11]
    assert [m.stream_seq for b in batches for m in b.messages] == [11, 12]
    assert batches[0].ack_reply == "r12"


async def test_the_backlog_is_what_the_last_delivery_left_pending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """ssmd_archive_pending_messages (the SsmdArchiveBacklogGrowing alert) reads it; an
    empty fetch (nothing delivered) leaves the last figure standing."""
    source = ScriptedSource(
        [[[delivery(1, 1, pending=40), delivery(2, 2, pending=950)], [delivery(3, 3, pending=7)]]]
    )
    stats = FetcherStats()
    batches = await collect(source, cursor=None, stats=stats)
    assert [m.stream_seq for b in batches for m in b.messages] == [1, 2, 3]
    assert stats.pending == 7


async def test_missing_delivery_rewinds_instead_of_acking_past_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Delivery 3 (stream seq 3) never arrived; acking seq 4 with AckAll would lose it.
    source = ScriptedSource(
        [
            [[delivery(1, 1), delivery(2, 2), delivery(4, 4), delivery(5, 5)]],
            [[delivery(3, 1), delivery(4, 2), delivery(5, 3)]],
        ]
    )
    # By the reopen the writer has fsynced 1..2: the consumer restarts right after them.
    batches = await collect(source, cursor=None, durable=lambda: 2 if source.opened_at else None)
    assert source.opened_at == [None, 3]
    assert [m.stream_seq for b in batches for m in b.messages] == [1, 2, 3, 4, 5]
    assert batches[0].ack_reply == "r2"
    assert all(not b.gaps for b in batches)


async def test_a_reconnect_reopens_after_what_is_fsynced_not_what_was_forwarded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Creating a consumer at S sets its ack floor to S-1 at once: reopened after the
    forwarded 15 while the writer had fsynced only through 12, a crash before 13..15
    reach the disk would resume after 15 and lose them with no gap. Reopened after 12,
    13..15 come again, are skipped by sequence, and acked behind their first copies."""
    source = ScriptedSource(
        [
            [[delivery(s, s - 10) for s in range(11, 16)], Reconnect()],
            [[delivery(13, 1, 2), delivery(14, 2, 2), delivery(15, 3, 2), delivery(16, 4)]],
        ]
    )
    stats = FetcherStats()
    batches = await collect(
        source, cursor=10, stats=stats, durable=lambda: 12 if source.opened_at else None
    )
    assert source.opened_at == [11, 13]
    assert [m.stream_seq for b in batches for m in b.messages] == [11, 12, 13, 14, 15, 16]
    assert [b.ack_reply for b in batches] == ["r15", "r16"]
    assert stats.redelivered_skipped == 3
    assert all(not b.gaps for b in batches)


async def test_redeliveries_are_skipped_but_still_acked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = ScriptedSource(
        [[[delivery(1, 1), delivery(2, 2)], [delivery(1, 3, 2), delivery(2, 4, 2), delivery(3, 5)]]]
    )
    batches = await collect(source, cursor=None)
    assert [m.stream_seq for b in batches for m in b.messages] == [1, 2, 3]
    assert [b.ack_reply for b in batches] == ["r2", "r3"]


async def test_jump_is_a_gap_when_the_filter_covers_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = ScriptedSource([[[delivery(11, 1), delivery(15, 2)]]])
    batches = await collect(source, cursor=10)
    gaps = [g for b in batches for g in b.gaps]
    assert [(g.after_seq, g.missing_count, g.exact) for g in gaps] == [(11, 3, True)]


async def test_narrow_filter_counts_only_messages_that_left_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Seqs 12..14 belong to another feed and are still in the stream: no gap.
    source = ScriptedSource([[[delivery(11, 1), delivery(15, 2)]]], first_seq=1)
    assert not [g for b in await collect(source, cursor=10, covers=False) for g in b.gaps]
    # After expiry the stream starts at 21: 11..20 left; 10 is an upper bound.
    source = ScriptedSource([[[delivery(25, 1)]]], first_seq=21)
    gaps = [g for b in await collect(source, cursor=10, covers=False) for g in b.gaps]
    assert [(g.after_seq, g.missing_count, g.exact) for g in gaps] == [(10, 10, False)]


async def test_nats_errors_back_off_and_reopen_at_the_cursor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = ScriptedSource(
        [
            [[delivery(1, 1)], NatsUnavailable("down")],
            [NatsUnavailable("still down")],
            [[delivery(2, 1)]],
        ]
    )
    batches = await collect(source, cursor=None, durable=lambda: 1 if source.opened_at else None)
    assert source.opened_at == [None, 2, 2]
    assert [m.stream_seq for b in batches for m in b.messages] == [1, 2]


async def test_first_delivery_after_opening_is_checked_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Delivery 1 (seq 11) was lost; acking seq 13 would also ack 11.
    source = ScriptedSource(
        [[[delivery(12, 2), delivery(13, 3)]], [[delivery(11, 1), delivery(12, 2)]]]
    )
    batches = await collect(source, cursor=10)
    assert source.opened_at == [11, 11]
    assert [m.stream_seq for b in batches for m in b.messages] == [11, 12]
    assert all(not b.gaps for b in batches)


async def test_quiet_feed_on_a_busy_stream_has_no_false_gap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Caught up at seq 11 (nothing pending); other feeds' messages 12..59 then aged out.
    source = ScriptedSource([[[delivery(11, 1, pending=0)], [delivery(60, 2)]]], first_seq=50)
    assert not [g for b in await collect(source, cursor=10, covers=False) for g in b.gaps]


async def test_behind_on_a_narrow_filter_counts_what_left_as_an_upper_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = ScriptedSource([[[delivery(11, 1, pending=5)], [delivery(60, 2)]]], first_seq=50)
    gaps = [g for b in await collect(source, cursor=10, covers=False) for g in b.gaps]
    assert [(g.after_seq, g.missing_count, g.exact) for g in gaps] == [(11, 38, False)]


@pytest.mark.parametrize(
    "position",
    [
        # 1..5 delivered to the client already, not yet fetched.
        ConsumerPosition(delivered_seq=5, pending=0, consumer_seq=5),
        # 1..3 delivered, two more matching messages beyond.
        ConsumerPosition(delivered_seq=3, pending=2, consumer_seq=3),
    ],
)
async def test_a_drain_ends_the_fetcher_once_it_has_taken_what_the_stream_held(
    mock_clock: trio.testing.MockClock, position: ConsumerPosition
) -> None:
    """Asked to finish, the fetcher keeps fetching until it has forwarded everything
    delivered and pending when the drain began, then ends and closes its channel; the
    end is read once, so later publishes are not chased."""
    source = ScriptedSource(
        [
            [
                [delivery(1, 1), delivery(2, 2)],
                [delivery(3, 3)],
                [delivery(4, 4), delivery(5, 5)],
                [delivery(6, 6)],  # published after the drain began
            ]
        ]
    )
    positions = [position]

    async def read_position() -> ConsumerPosition:
        return positions.pop(0)

    drain = Drain(read_position)
    drain.requested.set()
    send, receive = trio.open_memory_channel[Batch | RotateTick](100)
    forwarded: list[int] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: run_fetcher(
                    source,
                    None,
                    send,
                    batch_size=100,
                    fetch_timeout=1,
                    covers_stream=True,
                    clock=WallClock(0),
                    stats=FetcherStats(),
                    durable=lambda: None,
                    drain=drain,
                )
            )
            async with receive:
                async for item in receive:  # ends when the fetcher closes its channel
                    assert isinstance(item, Batch)
                    forwarded.extend(m.stream_seq for m in item.messages)
    assert forwarded == [1, 2, 3, 4, 5]


async def test_a_drain_reads_its_end_again_when_the_consumer_is_reopened(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reopened consumer numbers its deliveries from 1: the end read from the old one
    would never be reached (or be reached too early)."""
    source = ScriptedSource(
        [
            [[delivery(1, 1), delivery(2, 2)], [delivery(3, 5)]],  # delivery 3 lost: reopen
            [[delivery(3, 1)], [delivery(4, 2)]],
        ]
    )
    positions = [
        ConsumerPosition(delivered_seq=2, pending=2, consumer_seq=2),
        ConsumerPosition(delivered_seq=3, pending=1, consumer_seq=1),
    ]

    async def read_position() -> ConsumerPosition:
        return positions.pop(0)

    drain = Drain(read_position)
    drain.requested.set()
    send, receive = trio.open_memory_channel[Batch | RotateTick](100)
    forwarded: list[int] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: run_fetcher(
                    source,
                    None,
                    send,
                    batch_size=100,
                    fetch_timeout=1,
                    covers_stream=True,
                    clock=WallClock(0),
                    stats=FetcherStats(),
                    durable=lambda: 2 if source.opened_at else None,
                    drain=drain,
                )
            )
            async with receive:
                async for item in receive:
                    assert isinstance(item, Batch)
                    forwarded.extend(m.stream_seq for m in item.messages)
    assert forwarded == [1, 2, 3, 4]
    assert source.opened_at == [None, 3]
