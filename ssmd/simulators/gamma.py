"""A simulated Polymarket Gamma REST API (markets only), over HTTP/1.1 on loopback with h11.

- `GET /markets`: a bare JSON array, paged with `limit` (at most 500, default 20) and
  `offset`; filters `active`, `closed` (`true`/`false`), `condition_ids`,
  `clob_token_ids` and `slug` (repeated or comma-separated).
- `GET /markets/keyset`: `{"markets": [...], "next_cursor": ...}`, at most 100 a page;
  `next_cursor` is absent on the last page and `offset` is refused (422).

Markets come from a callable, so the exchange can add and close them while it runs.
`fail_next(n)` answers the next n requests with 503; `requests` lists every target.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio

log = logging.getLogger("ssmd.simulators.gamma")

MAX_LIMIT = 500
MAX_KEYSET_LIMIT = 100
DEFAULT_LIMIT = 20
_MAX_REQUEST_BYTES = 16 * 1024

MarketSource = Callable[[], list[dict[str, Any]]]


def _values(query: dict[str, list[str]], name: str) -> list[str]:
    return [v for raw in query.get(name, []) for v in raw.split(",") if v]


def _flag(query: dict[str, list[str]], name: str) -> bool | None:
    values = query.get(name)
    return None if not values else values[-1].lower() == "true"


def select(markets: list[dict[str, Any]], query: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The markets the query's filters let through, in listing order."""
    active = _flag(query, "active")
    closed = _flag(query, "closed")
    condition_ids = set(_values(query, "condition_ids"))
    token_ids = set(_values(query, "clob_token_ids"))
    slugs = set(_values(query, "slug"))
    found = []
    for market in markets:
        if active is not None and market["active"] != active:
            continue
        if closed is not None and market["closed"] != closed:
            continue
        if condition_ids and market["conditionId"] not in condition_ids:
            continue
        if token_ids and not token_ids & set(json.loads(market["clobTokenIds"])):
            continue
        if slugs and market["slug"] not in slugs:
            continue
        found.append(market)
    return found


class GammaServer:
    def __init__(self, markets: MarketSource) -> None:
        self.markets = markets
        self.requests: list[str] = []
        self.port: int | None = None
        self._failures_left = 0

    @property
    def url(self) -> str:
        assert self.port is not None, "run() first"
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, count: int) -> None:
        self._failures_left = count

    def respond(self, target: str) -> tuple[int, bytes]:
        self.requests.append(target)
        if self._failures_left > 0:
            self._failures_left -= 1
            return 503, b'{"error":"service unavailable"}'
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        try:
            limit = int(query.get("limit", [str(DEFAULT_LIMIT)])[-1])
            offset = int(query.get("offset", ["0"])[-1])
        except ValueError:
            return 422, b'{"error":"limit and offset must be integers"}'
        if limit < 0 or offset < 0:
            return 422, b'{"error":"limit and offset must not be negative"}'
        if parts.path == "/markets":
            found = select(self.markets(), query)
            page = found[offset : offset + min(limit, MAX_LIMIT)]
            return 200, json.dumps(page).encode()
        if parts.path == "/markets/keyset":
            if "offset" in query:
                return 422, b'{"error":"offset is not supported; use cursor"}'
            cursor = query.get("cursor", ["0"])[-1]
            start = int(cursor) if cursor.isdigit() else 0
            found = select(self.markets(), query)
            end = start + min(limit, MAX_KEYSET_LIMIT)
            body: dict[str, Any] = {"markets": found[start:end]}
            if end < len(found):
                body["next_cursor"] = str(end)
            return 200, json.dumps(body).encode()
        return 404, b'{"error":"not found"}'

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(10):
                await self._serve(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            with trio.move_on_after(1):
                await stream.aclose()

    async def _serve(self, stream: trio.SocketStream) -> None:
        """Requests on one connection, kept alive as long as the client wants."""
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
                if event.method == b"GET":
                    status, body = self.respond(event.target.decode("latin-1"))
                else:
                    status, body = 405, b'{"error":"method not allowed"}'
                headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
                await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
                await stream.send_all(conn.send(h11.Data(data=body)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                continue
            if isinstance(event, h11.EndOfMessage):
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                continue
            return
