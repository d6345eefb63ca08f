"""The WebSocket seam: what a connection needs from a socket, and trio-websocket's.

Tests replace `connect_websocket` with in-memory sockets so that time-driven logic
runs under a fake clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import trio
from trio_websocket import ConnectionRejected, WebSocketConnection, open_websocket_url

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DISCONNECT_TIMEOUT_S = 1.0
# A deep queue and large reads let one wakeup of the reader take many messages.
MESSAGE_QUEUE_SIZE = 4096
RECEIVE_BUFFER_BYTES = 256 * 1024


class WebSocket(Protocol):
    async def receive_batch(self, limit: int) -> Sequence[str | bytes]:
        """Wait for at least one message; return it with any already queued, up to `limit`."""

    async def send_message(self, message: str | bytes) -> None: ...

    @property
    def backlogged(self) -> bool:
        """Whether more has certainly arrived than the last `receive_batch` returned."""
        ...

    async def ping(self, payload: bytes | None = None) -> None:
        """Send a ping and return when its pong arrives."""


Connect = Callable[[str, list[tuple[str, str]], float], AbstractAsyncContextManager[WebSocket]]


class HandshakeRejected(Exception):
    """The server answered the upgrade request with an HTTP error (401: bad credentials)."""

    def __init__(self, status_code: int, body: str) -> None:
        self.status_code = status_code
        self.body = body
        super().__init__(
            f"handshake rejected with HTTP {status_code}" + (f": {body}" if body else "")
        )


class _TrioWebSocket:
    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        # trio-websocket offers one message per await; taking the rest of its queue
        # without awaiting saves a task switch per message.
        self._queue: trio.MemoryReceiveChannel[str | bytes] = ws._recv_channel

    async def receive_batch(self, limit: int) -> list[str | bytes]:
        batch = [await self._ws.get_message()]
        receive_nowait = self._queue.receive_nowait
        try:
            while len(batch) < limit:
                batch.append(receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            pass
        return batch

    @property
    def backlogged(self) -> bool:
        return self._queue.statistics().current_buffer_used > 0

    async def send_message(self, message: str | bytes) -> None:
        await self._ws.send_message(message)

    async def ping(self, payload: bytes | None = None) -> None:
        await self._ws.ping(payload)


@asynccontextmanager
async def connect_websocket(
    url: str, headers: list[tuple[str, str]], timeout: float
) -> AsyncIterator[WebSocket]:
    """A trio-websocket client connection to `url`, closed on exit."""
    extra = [(name.encode(), value.encode()) for name, value in headers]
    try:
        async with open_websocket_url(
            url,
            extra_headers=extra,
            connect_timeout=timeout,
            disconnect_timeout=DISCONNECT_TIMEOUT_S,
            max_message_size=MAX_MESSAGE_BYTES,
            message_queue_size=MESSAGE_QUEUE_SIZE,
            receive_buffer_size=RECEIVE_BUFFER_BYTES,
        ) as ws:
            yield _TrioWebSocket(ws)
    except ConnectionRejected as exc:
        body = (exc.body or b"")[:200].decode("utf-8", "replace").strip()
        raise HandshakeRejected(exc.status_code, body) from None
