"""A small HTTP/1.1 server on Trio (h11) for the simulated venues' REST APIs.

Keep-alive, GET only, one handler that maps a request to a response. Enough for httpx
against loopback; not a web framework.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs
import h11
import trio

log = logging.getLogger("ssmd.simulators.http")

_MAX_REQUEST_BYTES = 64 * 1024
_IDLE_TIMEOUT_S = 30.0


@attrs.frozen
class Request:
    method: str
    target: str
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@attrs.frozen
class Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.port: int | None = None
        self._listeners: list[trio.SocketListener] | None = None

    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Bind now (the port is known before serving); `serve` then uses this socket."""
        self._listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = self._listeners[0].socket.getsockname()[1]
        return self.port

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if self._listeners is None:
            await self.listen(host, port)
        listeners, self._listeners = self._listeners, None
        assert listeners is not None and self.port is not None
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            await self._exchange(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            with trio.move_on_after(1):
                await stream.aclose()

    async def _exchange(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_REQUEST_BYTES)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                with trio.move_on_after(_IDLE_TIMEOUT_S) as idle:
                    data = await stream.receive_some(16384)
                if idle.cancelled_caught or not data:
                    return
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = Request(
                    event.method.decode("ascii"),
                    event.target.decode("latin-1"),
                    {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers},
                )
                response = await self._handler(request)
                headers = [
                    ("content-type", response.content_type),
                    ("content-length", str(len(response.body))),
                    *response.headers,
                ]
                await stream.send_all(
                    conn.send(h11.Response(status_code=response.status, headers=headers))
                )
                await stream.send_all(conn.send(h11.Data(data=response.body)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                continue
            if event is h11.PAUSED:
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    continue
                return
            if isinstance(event, h11.ConnectionClosed):
                return
