"""`/health`, `/ready` and `/metrics` over HTTP, served by Trio itself with h11.

- `/health`: 200 while the process runs and is not stopping (liveness).
- `/ready`: 200 when every role is up and every health check passes; 503 with the
  reasons otherwise.
- `/metrics`: Prometheus text format from `prometheus-client`.

A failure to bind is logged, not fatal: recording matters more than being watched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ssmd.supervisor import Supervisor

log = logging.getLogger("ssmd.health")

_MAX_REQUEST_BYTES = 16 * 1024
_REQUEST_TIMEOUT_S = 5.0


class HealthServer:
    def __init__(
        self,
        sup: Supervisor,
        registry: CollectorRegistry,
        not_ready: Callable[[], list[str]],
    ) -> None:
        self._sup = sup
        self._registry = registry
        self._not_ready = not_ready
        self.port: int | None = None

    def respond(self, target: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a request path."""
        path = target.split("?", 1)[0]
        if path == "/health":
            if self._sup.stopping.is_set():
                return 503, "text/plain", b"stopping\n"
            return 200, "text/plain", b"ok\n"
        if path == "/ready":
            problems = self._not_ready() + self._sup.unhealthy()
            if self._sup.stopping.is_set():
                problems.insert(0, "stopping")
            if problems:
                return 503, "text/plain", ("\n".join(problems) + "\n").encode()
            return 200, "text/plain", b"ready\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        return 404, "text/plain", b"not found: try /health, /ready or /metrics\n"

    async def serve(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; reports the bound port (None if it could not bind)."""
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            log.error(
                "health endpoint disabled: cannot listen on %s:%d: %s", host, port, exc.strerror
            )
            task_status.started(None)
            await trio.sleep_forever()
        self.port = listeners[0].socket.getsockname()[1]
        log.info("health and metrics on http://%s:%d/ (/health, /ready, /metrics)", host, self.port)
        # Bound and listening: connections wait in the backlog until served.
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(_REQUEST_TIMEOUT_S):
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
                data = await stream.receive_some(4096)
                conn.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(event, h11.Request):
                status, content_type, body = self.respond(event.target.decode("latin-1"))
                headers = [
                    ("content-type", content_type),
                    ("content-length", str(len(body))),
                    ("connection", "close"),
                ]
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
                if event.method != b"HEAD":
                    await stream.send_all(conn.send(h11.Data(data=body)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                return
            if isinstance(event, h11.ConnectionClosed):
                return
