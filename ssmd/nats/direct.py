"""Subscriptions handled as their messages are parsed (runs on the asyncio side).

nats-py hands each message of a subscription with a callback to a task of its own: a
queue put, a task wakeup and a coroutine call per message. ssmd's two busy
subscriptions (publish acks, pull deliveries) only record what arrived, so their
handler is a plain function called from nats-py's read loop as the message is parsed.

This leans on one detail of nats-py (pinned in pyproject.toml): its read loop delivers
with `sub._pending_queue.put_nowait(msg)` after counting the bytes in
`sub._pending_size`. `tests/test_nats_direct.py` fails if that stops being so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("ssmd.nats")

Handler = Callable[[Any], None]


class _Dispatch(asyncio.Queue[Any]):
    """Stands in for a subscription's pending queue: every put is handled at once."""

    def __init__(self, sub: Any, handler: Handler) -> None:
        super().__init__()
        self._sub = sub
        self._handler = handler

    def put_nowait(self, item: Any) -> None:
        self._sub._pending_size -= len(item.data)
        try:
            self._handler(item)
        except Exception:
            log.exception("handling a message on %s failed", item.subject)


async def _never(msg: Any) -> None:  # nats-py's own task waits on a queue nothing enters
    raise AssertionError("direct subscriptions are not delivered through nats-py's task")


async def subscribe_direct(nc: Any, subject: str, handler: Handler) -> Any:
    """Subscribe `subject`; `handler(msg)` runs for each message in nats-py's read loop.

    It must not block or await; an exception it raises is logged, never propagated."""
    sub = await nc.subscribe(subject, cb=_never)
    sub._pending_queue = _Dispatch(sub, handler)
    return sub
