"""A simulated Polymarket Gamma REST API (markets only), over HTTP/1.1 on loopback
(`ssmd.simulators.http`).

- `GET /markets`: a bare JSON array, paged with `limit` (at most 500, default 20) and
  `offset`; filters `active`, `closed` (`true`/`false`), `condition_ids`,
  `clob_token_ids` and `slug` (repeated or comma-separated).
- `GET /markets/keyset`: `{"markets": [...], "next_cursor": ...}`, at most 100 a page,
  in order of Gamma `id`; the cursor is the last id served, so markets closing or opening
  during a walk shift nothing; `next_cursor` is absent on the last page and `offset` is
  refused (422). Same filters.

Markets come from a callable, so the exchange can add and close them while it runs.
`fail_next(n, status)` answers the next n requests with `status` (503 unless given;
429 with `Retry-After: 0`); `requests` lists every target.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

from ssmd.simulators.http import HttpServer, Request, Response

log = logging.getLogger("ssmd.simulators.gamma")

MAX_LIMIT = 500
MAX_KEYSET_LIMIT = 100
DEFAULT_LIMIT = 20

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
        self._failure_status = 503

    @property
    def url(self) -> str:
        assert self.port is not None, "run() first"
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, count: int, status: int = 503) -> None:
        self._failures_left = count
        self._failure_status = status

    def respond(self, target: str) -> tuple[int, bytes]:
        self.requests.append(target)
        if self._failures_left > 0:
            self._failures_left -= 1
            return self._failure_status, b'{"error":"simulated failure"}'
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
            cursor = query.get("cursor", [""])[-1]
            after = int(cursor) if cursor.isdigit() else -1
            found = [m for m in select(self.markets(), query) if int(m["id"]) > after]
            found.sort(key=lambda m: int(m["id"]))
            page = found[: min(limit, MAX_KEYSET_LIMIT)]
            body: dict[str, Any] = {"markets": page}
            if len(found) > len(page):
                body["next_cursor"] = page[-1]["id"]
            return 200, json.dumps(body).encode()
        return 404, b'{"error":"not found"}'

    async def handle(self, request: Request) -> Response:
        if request.method != "GET":
            return Response(405, b'{"error":"method not allowed"}')
        status, body = self.respond(request.target)
        headers = (("Retry-After", "0"),) if status == 429 else ()
        return Response(status, body, headers)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        server = HttpServer(self.handle)
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(server.serve)
            task_status.started()
