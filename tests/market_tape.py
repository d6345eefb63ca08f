"""A scripted exchange whose every message, and own state, the test knows.

`KalshiBooks` keeps order books per market and sends `orderbook_snapshot` and
`orderbook_delta` in either of Kalshi's forms (integer cents or 2026 fixed-point
strings), with `seq` per sid; `Tape` collects what was "received" (subject, payload,
receive time) together with ssmd's own records; `archive_tape` runs the real archiver
pipeline (tests/archive_harness.py) over it under the fake clock, so the archive on disk
is exactly what the archiver writes.
"""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from ssmd.archiver.fetcher import Batch, GapEvent
from ssmd.clock import WallClock
from ssmd.connector.records import DiscontinuityRecord, record_json
from ssmd.nats.types import FetchedMessage
from ssmd.subjects import discontinuity_subject, market_subject
from tests.archive_harness import Harness

NS = 1_000_000_000
ENV = "prod"
Form = Literal["cents", "fp"]


@attrs.define
class Received:
    subject: str
    payload: bytes
    recv_ns: int
    backfilled: bool = False


@attrs.define
class Tape:
    """What the connector received, in order, with the time of each message."""

    feed: str = "kalshi"
    items: list[Received] = attrs.field(factory=list)
    stream_gaps: list[tuple[int, int]] = attrs.field(factory=list)  # (index, missing)

    def add(
        self,
        subject: str,
        payload: dict[str, Any] | bytes,
        recv_ns: int,
        *,
        backfilled: bool = False,
    ) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.items.append(Received(subject, data, recv_ns, backfilled))

    def record(self, record: DiscontinuityRecord, recv_ns: int) -> None:
        self.add(discontinuity_subject(ENV, self.feed, record.kind), record_json(record), recv_ns)

    def lose_in_stream(self, missing: int) -> None:
        """The next `missing` stream sequences left the stream before being archived."""
        self.stream_gaps.append((len(self.items), missing))


def _cents_to_dollars(cents: int) -> Decimal:
    return Decimal(cents) / 100


@attrs.define
class KalshiBooks:
    """Kalshi's side of `orderbook_delta` subscriptions: books and per-sid `seq`."""

    tape: Tape
    form: Form
    sids: dict[int, list[str]]
    rng: random.Random = attrs.field(factory=lambda: random.Random(7))
    books: dict[str, dict[str, dict[int, int]]] = attrs.field(factory=dict)
    seq: dict[int, int] = attrs.field(factory=dict)

    def sid_of(self, market: str) -> int:
        return next(sid for sid, markets in self.sids.items() if market in markets)

    def _send(self, market: str, kind: str, msg: dict[str, Any], recv_ns: int) -> None:
        sid = self.sid_of(market)
        self.seq[sid] = self.seq.get(sid, 0) + 1
        payload = {"type": kind, "sid": sid, "seq": self.seq[sid], "msg": msg}
        self.tape.add(market_subject(ENV, self.tape.feed, "orderbook", market), payload, recv_ns)

    def snapshot(self, market: str, recv_ns: int) -> None:
        book = self.books.setdefault(
            market,
            {
                "yes": {p: self.rng.randint(1, 900) for p in range(30, 45)},
                "no": {p: self.rng.randint(1, 900) for p in range(50, 66)},
            },
        )
        msg: dict[str, Any] = {"market_ticker": market}
        for side in ("yes", "no"):
            levels = sorted(book[side].items())
            if self.form == "cents":
                msg[side] = [[p, n] for p, n in levels]
            else:
                msg[f"{side}_dollars_fp"] = [[f"{p / 100:.4f}", f"{n}.00"] for p, n in levels]
        self._send(market, "orderbook_snapshot", msg, recv_ns)

    def delta(self, market: str, recv_ns: int, *, deliver: bool = True) -> None:
        """Change one level; `deliver=False` changes the book but the message is lost
        upstream (its `seq` is used, so the next message shows the jump)."""
        book = self.books[market]
        side = self.rng.choice(("yes", "no"))
        price = self.rng.randint(25, 48) if side == "yes" else self.rng.randint(45, 70)
        size = book[side].get(price, 0)
        delta = self.rng.randint(-size, 300) if size else self.rng.randint(1, 300)
        if size + delta:
            book[side][price] = size + delta
        else:
            book[side].pop(price, None)
        if not deliver:
            sid = self.sid_of(market)
            self.seq[sid] = self.seq.get(sid, 0) + 1
            return
        msg: dict[str, Any] = {"market_ticker": market, "side": side}
        if self.form == "cents":
            msg.update(price=price, delta=delta, ts="2026-01-05T12:00:00Z")
        else:
            msg.update(
                price_dollars=f"{price / 100:.3f}",
                delta_fp=f"{delta}.00",
                ts_ms=recv_ns // 1_000_000,
            )
        self._send(market, "orderbook_delta", msg, recv_ns)

    def state(self, market: str) -> dict[str, list[list[str]]]:
        """The exchange's own book, in `ssmd data book --json`'s form."""
        book = self.books[market]
        return {
            side: [
                [f"{_cents_to_dollars(p):.4f}", f"{n}.00"]
                for p, n in sorted(book[side].items(), reverse=True)
            ]
            for side in ("yes", "no")
        }


async def archive_tape(
    root: Path, tape: Tape, interval_s: int = 900, after_seq: int = 0
) -> dict[str, Any]:
    """Archive the tape with the real pipeline, each message written at its receive
    time (run under a MockClock). Returns per-stream-seq what was archived."""
    first = tape.items[0].recv_ns
    h = Harness(root, interval_s=interval_s, feed=tape.feed)
    lost = dict(tape.stream_gaps)
    async with trio.open_nursery() as nursery:
        clock = WallClock(first - NS)
        await h.start(nursery, clock)
        stream_seq = after_seq
        pending: list[FetchedMessage] = []
        gaps: list[GapEvent] = []
        second = first // NS
        for index, item in enumerate(tape.items):
            if pending and item.recv_ns // NS != second:
                await h.send.send(Batch(pending, pending[-1].reply, gaps))
                pending, gaps = [], []
            second = item.recv_ns // NS
            # One sleep (WallClock.sleep_until can spin on a float rounding of 1 ns).
            await trio.sleep_until(clock.trio_time_at(item.recv_ns))
            if index in lost:
                gaps.append(GapEvent(stream_seq, lost[index], item.recv_ns, True))
                stream_seq += lost[index]
            stream_seq += 1
            pending.append(
                FetchedMessage(
                    item.subject,
                    item.payload,
                    stream_seq,
                    stream_seq,
                    1,
                    item.recv_ns,
                    f"ack.{stream_seq}",
                    backfilled=item.backfilled,
                )
            )
        if pending:
            await h.send.send(Batch(pending, pending[-1].reply, gaps))
        assert await h.stop() == 0
    return {"last_seq": stream_seq}
