"""An asyncio event loop on a thread of its own, called from Trio.

nats-py is asyncio-only. Trio code runs a coroutine on this loop with `await
thread.call(fn, *args)`. Cancelling the Trio side cancels the asyncio task and waits
for it to finish, so no asyncio work outlives the Trio scope that started it; that wait
is bounded by `CANCEL_WAIT_S` and by the shutdown deadline (`ssmd.deadline`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, TypeVar

import trio

from ssmd.deadline import shielded
from ssmd.nats.types import NatsUnavailable

log = logging.getLogger("ssmd.nats")

T = TypeVar("T")

CANCEL_WAIT_S = 10.0


class AsyncioThread:
    """An asyncio event loop running on its own daemon thread."""

    def __init__(self) -> None:
        # A selector loop works even where a Trio-hosted asyncio policy is installed.
        self._loop = asyncio.SelectorEventLoop()
        self._thread = threading.Thread(target=self._run, name="ssmd-asyncio", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `fn(*args)` on the asyncio loop and wait for it from Trio."""
        token = trio.lowlevel.current_trio_token()
        finished = trio.Event()
        holder: list[asyncio.Task[T]] = []

        def wake(_task: object) -> None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(finished.set)

        def start() -> None:
            task: asyncio.Task[T] = self._loop.create_task(fn(*args))  # type: ignore[arg-type]
            task.add_done_callback(wake)
            holder.append(task)

        self._loop.call_soon_threadsafe(start)
        try:
            await finished.wait()
        except BaseException:
            self._loop.call_soon_threadsafe(lambda: holder[0].cancel())
            with shielded(CANCEL_WAIT_S) as waited:
                await finished.wait()
            if waited.cancelled_caught:
                log.error("asyncio task did not finish after its cancellation; left behind")
            raise
        task = holder[0]
        if task.cancelled():
            # Not by us (we were not cancelled): the loop is shutting down. An asyncio
            # CancelledError must not reach Trio, where it means nothing.
            raise NatsUnavailable("the NATS call was cancelled on the asyncio side")
        return task.result()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop; wait up to `timeout` for its thread (a daemon: never past exit)."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=timeout)
