"""Direct subscriptions: every message reaches the handler from nats-py's read loop, in
order, with nothing left counted as pending (so nats-py never drops one as slow)."""

from __future__ import annotations

import asyncio
from typing import Any

import nats

from ssmd.nats.direct import subscribe_direct
from ssmd.nats.server import NatsServer


async def _exercise(url: str, count: int) -> tuple[list[bytes], Any, list[str]]:
    nc = await nats.connect(url)
    got: list[bytes] = []
    tasks: list[str] = []

    def handler(msg: Any) -> None:
        task = asyncio.current_task()
        tasks.append(task.get_name() if task else "")
        if msg.data == b"boom":
            raise ValueError("a handler error is logged, not fatal")
        got.append(msg.data)

    sub = await subscribe_direct(nc, "direct.test", handler)
    for n in range(count):
        await nc.publish("direct.test", b"boom" if n == 3 else str(n).encode() * 100)
    await nc.flush()
    deadline = asyncio.get_running_loop().time() + 30
    while len(got) < count - 1 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    pending = sub._pending_size
    await sub.unsubscribe()
    await nc.close()
    return got, pending, tasks


def test_every_message_is_handled_in_order_and_none_stays_pending(
    nats_server: NatsServer,
) -> None:
    count = 5000
    got, pending, tasks = asyncio.run(_exercise(nats_server.url, count))
    assert got == [str(n).encode() * 100 for n in range(count) if n != 3]
    # Nothing counted as pending: nats-py would drop messages as a slow consumer.
    assert pending == 0
    # Handled by the task that reads the socket, never one task per message.
    assert len(set(tasks)) == 1
