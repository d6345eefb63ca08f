"""Pipelined JetStream publishing on one wildcard inbox (runs on the asyncio side).

Each message is a core publish whose reply subject names its batch and position; the
stream's acks come back on the inbox and fill the batch's outcomes. This is what
`js.publish_async` does, without its per-message Future, semaphore, random token and
PubAck object, which made it the connector's bottleneck.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any

from ssmd.nats.direct import subscribe_direct
from ssmd.nats.types import (
    BACKFILLED_HEADER,
    MSG_ID_HEADER,
    RECV_NS_HEADER,
    OutgoingMessage,
    PublishOutcome,
)

ACK_TIMED_OUT = "timed out waiting for the JetStream ack"

_ACK_SEQ = re.compile(rb'"seq":(\d+)')


def parse_pub_ack(data: bytes, headers: Mapping[str, str] | None) -> PublishOutcome:
    """The outcome a JetStream reply (payload and headers) reports for one publish."""
    if not data:
        status = (headers or {}).get("Status", "")
        if status == "503":
            return PublishOutcome(error="NoRespondersError: no stream for this subject")
        return PublishOutcome(error=f"empty JetStream reply (status {status or 'none'})")
    if b'"error"' in data:
        try:
            description = json.loads(data)["error"].get("description", "")
        except (ValueError, KeyError, AttributeError):
            description = data[:200].decode("utf-8", "replace")
        return PublishOutcome(error=f"APIError: {description}")
    match = _ACK_SEQ.search(data)
    if match is None:
        return PublishOutcome(error=f"unreadable JetStream ack: {data[:200]!r}")
    return PublishOutcome(stream_seq=int(match.group(1)), duplicate=b'"duplicate":true' in data)


class _BatchAcks:
    def __init__(self, size: int) -> None:
        self.outcomes: list[PublishOutcome | None] = [None] * size
        self.remaining = size
        self.done = asyncio.Event()

    def settle(self, index: int, outcome: PublishOutcome) -> None:
        """Record the first outcome for `index`; later ones (a late duplicate) are ignored."""
        if self.outcomes[index] is not None:
            return
        self.outcomes[index] = outcome
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()


class AckInbox:
    def __init__(self, nc: Any) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox()
        self._batches: dict[str, _BatchAcks] = {}
        self._next_batch = 0

    async def subscribe(self) -> None:
        await subscribe_direct(self._nc, self._prefix + ".*.*", self._on_ack)

    def _on_ack(self, msg: Any) -> None:
        _, batch_id, index = msg.subject.rsplit(".", 2)
        batch = self._batches.get(batch_id)
        if batch is None:
            return  # a late ack for a batch that already timed out: it will be retried
        batch.settle(int(index), parse_pub_ack(msg.data, msg.headers))

    async def publish(
        self, messages: Sequence[OutgoingMessage], timeout: float
    ) -> list[PublishOutcome]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        batch_id = str(self._next_batch)
        self._next_batch += 1
        batch = _BatchAcks(len(messages))
        self._batches[batch_id] = batch
        reply_prefix = f"{self._prefix}.{batch_id}."
        publish = self._nc.publish
        try:
            for i, m in enumerate(messages):
                try:
                    await publish(
                        m.subject,
                        m.payload,
                        reply=reply_prefix + str(i),
                        headers=(
                            {
                                MSG_ID_HEADER: m.msg_id,
                                RECV_NS_HEADER: str(m.recv_ns),
                                BACKFILLED_HEADER: "1",
                            }
                            if m.backfilled
                            else {MSG_ID_HEADER: m.msg_id, RECV_NS_HEADER: str(m.recv_ns)}
                        ),
                    )
                except Exception as exc:
                    batch.settle(i, PublishOutcome(error=f"{type(exc).__name__}: {exc}"))
                if loop.time() > deadline:
                    break
            if batch.remaining > 0:
                with suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await batch.done.wait()
        finally:
            del self._batches[batch_id]
        missing = PublishOutcome(error=ACK_TIMED_OUT)
        return [o if o is not None else missing for o in batch.outcomes]
