"""Kalshi's REST API as the simulated exchange serves it: markets, events and trades.

`KalshiMarkets` is the exchange's own market catalogue (what is open, what settled, the
trades done); the WebSocket side of the simulator and this REST side read the same one.
`KalshiRest` answers `GET /trade-api/v2/markets`, `/events` and `/markets/trades` the
way kalshi-ws.md describes: cursor pagination with `limit` 1-1000, status filters with
Kalshi's two vocabularies (`open` lists `active` markets), `series_ticker`,
`mve_filter`, and the signed headers checked like the WebSocket handshake. Fault
switches: a read budget that answers 429 when spent (Kalshi's token bucket), and
`fail_next` for outages (500s, 429s with or without `Retry-After`), `serve_listless`
for pages without their list, `hide` for walks that skip open markets.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ssmd.simulators.http import HttpServer, Request, Response

REST_PREFIX = "/trade-api/v2"
MAX_CLOCK_SKEW_MS = 5000
# Kalshi's Basic tier: 200 read tokens per second, 10 per GET.
READ_TOKENS_PER_S = 200.0
TOKENS_PER_GET = 10.0
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)

# The REST `status` filter and the names market objects carry.
FILTER_STATUSES = {
    "unopened": {"initialized"},
    "open": {"active"},
    "paused": {"inactive"},
    "closed": {"closed", "determined", "disputed", "amended"},
    "settled": {"finalized"},
}


def check_signature(
    headers: dict[str, str],
    path: str,
    public_key: rsa.RSAPublicKey,
    api_key: str,
    max_skew_ms: int = MAX_CLOCK_SKEW_MS,
) -> str | None:
    """None when a request (REST, or the WebSocket upgrade) is signed like Kalshi wants
    (`path` without its query; header names lower-case), else why not."""
    if headers.get("kalshi-access-key") != api_key:
        return "unknown API key"
    timestamp = headers.get("kalshi-access-timestamp", "")
    if not timestamp.isdigit():
        return "missing timestamp"
    if abs(int(timestamp) - int(time.time() * 1000)) > max_skew_ms:
        return "stale timestamp"
    try:
        signature = base64.b64decode(headers.get("kalshi-access-signature", ""), validate=True)
        public_key.verify(signature, f"{timestamp}GET{path}".encode(), _PSS, hashes.SHA256())
    except (InvalidSignature, ValueError):
        return "invalid signature"
    return None


def series_of(ticker: str) -> str:
    return ticker.split("-", 1)[0]


@attrs.define
class SimMarket:
    ticker: str
    event_ticker: str
    status: str = "active"
    title: str = ""
    open_time: str = "2026-01-01T00:00:00Z"
    close_time: str = "2030-01-01T00:00:00Z"
    multivariate: bool = False
    version: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "ticker": self.ticker,
            "event_ticker": self.event_ticker,
            "market_type": "binary",
            "title": self.title or f"Will {self.ticker} resolve yes?",
            "status": self.status,
            "open_time": self.open_time,
            "close_time": self.close_time,
            "price_level_structure": "linear_cent",
            "price_ranges": [{"start": "0.0000", "end": "1.0000", "step": "0.0100"}],
            "yes_bid_dollars": "0.4500",
            "yes_ask_dollars": "0.4700",
            "volume_fp": f"{self.version * 10}.00",
            "rules_primary": f"rules v{self.version}",
        }


@attrs.frozen
class SimTrade:
    trade_id: str
    ticker: str
    ts_ms: int
    yes_price_cents: int
    count: int
    taker_side: str

    def as_json(self) -> dict[str, Any]:
        return {
            "trade_id": self.trade_id,
            "ticker": self.ticker,
            "yes_price_dollars": f"{self.yes_price_cents / 100:.4f}",
            "no_price_dollars": f"{(100 - self.yes_price_cents) / 100:.4f}",
            "count_fp": f"{self.count}.00",
            "taker_side": self.taker_side,
            "created_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.ts_ms / 1000)),
            "ts": self.ts_ms // 1000,
        }


class KalshiMarkets:
    """The exchange's markets and trades; what both the REST and WebSocket sides serve."""

    def __init__(self) -> None:
        self.markets: dict[str, SimMarket] = {}
        self.trades: list[SimTrade] = []

    def open(self, tickers: Iterable[str], *, multivariate: bool = False) -> None:
        for ticker in tickers:
            self.markets[ticker] = SimMarket(
                ticker, ticker.rsplit("-", 1)[0], multivariate=multivariate
            )

    def set_status(self, ticker: str, status: str) -> None:
        self.markets[ticker].status = status

    def amend(self, ticker: str) -> None:
        """Change what the market is (its rules), as a metadata update does."""
        self.markets[ticker].version += 1

    def open_tickers(self) -> list[str]:
        return [m.ticker for m in self.markets.values() if m.status == "active"]


def _page(items: list[Any], cursor: str | None, limit: int) -> tuple[list[Any], str]:
    start = int(cursor) if cursor and cursor.isdigit() else 0
    end = start + limit
    return items[start:end], str(end) if end < len(items) else ""


@attrs.define
class RestFaults:
    fail_status: int = 0
    fail_count: int = 0
    retry_after: str | None = None
    listless: int = 0  # market pages still to answer 200 without their list
    hidden: dict[str, int] = attrs.field(factory=dict)  # ticker: market walks to skip it in
    hiding: frozenset[str] = frozenset()  # skipped by the walk under way


class KalshiRest:
    """The REST handler. With `public_key`, every request must be signed."""

    def __init__(
        self,
        markets: KalshiMarkets,
        *,
        public_key: rsa.RSAPublicKey | None = None,
        api_key: str = "",
        rate_limit: bool = True,
    ) -> None:
        self.markets = markets
        self._public_key = public_key
        self._api_key = api_key
        self._rate_limit = rate_limit
        self._tokens = READ_TOKENS_PER_S
        self._stamp: float | None = None
        self.faults = RestFaults()
        self.requests: list[str] = []
        self.status_counts: dict[int, int] = {}

    def fail_next(self, count: int, status: int = 500, retry_after: str | None = None) -> None:
        self.faults.fail_status = status
        self.faults.fail_count = count
        self.faults.retry_after = retry_after

    def serve_listless(self, count: int) -> None:
        """The next `count` market pages answer 200 with a cursor but no `markets`."""
        self.faults.listless = count

    def hide(self, tickers: Iterable[str], walks: int = 1) -> None:
        """The next `walks` market walks (a listing from its first page) leave `tickers`
        out though they are open, as cursor pages over a changing set can skip one."""
        for ticker in tickers:
            self.faults.hidden[ticker] = walks

    async def serve(
        self, port: int = 0, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await HttpServer(self.handle).serve(port=port, task_status=task_status)

    async def handle(self, request: Request) -> Response:
        response = self._respond(request)
        self.status_counts[response.status] = self.status_counts.get(response.status, 0) + 1
        return response

    def _spend(self) -> bool:
        now = trio.current_time()
        if self._stamp is not None:
            self._tokens = min(
                READ_TOKENS_PER_S, self._tokens + (now - self._stamp) * READ_TOKENS_PER_S
            )
        self._stamp = now
        if self._tokens < TOKENS_PER_GET:
            return False
        self._tokens -= TOKENS_PER_GET
        return True

    def _respond(self, request: Request) -> Response:
        self.requests.append(request.target)
        if request.method != "GET":
            return _error(405, "method not allowed")
        if self._public_key is not None:
            problem = check_signature(
                request.headers, request.path, self._public_key, self._api_key
            )
            if problem is not None:
                return _error(401, problem)
        if self.faults.fail_count > 0:
            self.faults.fail_count -= 1
            headers = (("retry-after", self.faults.retry_after),) if self.faults.retry_after else ()
            return _error(self.faults.fail_status, "simulated failure", headers)
        if self._rate_limit and not self._spend():
            return _error(429, "too many requests")
        split = urlsplit(request.target)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            return _error(400, "limit must be an integer")
        path = split.path.removeprefix(REST_PREFIX)
        if path == "/markets":
            if not 1 <= limit <= 1000:
                return _error(400, "limit must be 1-1000")
            return self._list_markets(query, limit)
        if path == "/events":
            return self._list_events(query, min(max(limit, 1), 200))
        if path == "/markets/trades":
            return self._list_trades(query, min(max(limit, 1), 1000))
        return _error(404, f"no route for {path}")

    def _matching(self, query: dict[str, str]) -> list[SimMarket]:
        wanted = FILTER_STATUSES.get(query.get("status", ""))
        series = query.get("series_ticker")
        tickers = set(query["tickers"].split(",")) if "tickers" in query else None
        exclude_mve = query.get("mve_filter") == "exclude"
        return [
            m
            for m in self.markets.markets.values()
            if (wanted is None or m.status in wanted)
            and (series is None or series_of(m.ticker) == series)
            and (tickers is None or m.ticker in tickers)
            and not (exclude_mve and m.multivariate)
        ]

    def _list_markets(self, query: dict[str, str], limit: int) -> Response:
        faults = self.faults
        if not query.get("cursor") and "tickers" not in query:  # a walk begins
            faults.hiding = frozenset(t for t, n in faults.hidden.items() if n > 0)
            faults.hidden = {t: n - 1 for t, n in faults.hidden.items() if n > 1}
        # A lookup by ticker (`tickers=`) finds hidden markets: hiding is paging's skip.
        hiding = faults.hiding if "tickers" not in query else frozenset()
        matching = [m for m in self._matching(query) if m.ticker not in hiding]
        page, cursor = _page(matching, query.get("cursor"), limit)
        if faults.listless > 0:
            faults.listless -= 1
            return _json({"cursor": cursor})
        return _json({"markets": [m.as_json() for m in page], "cursor": cursor})

    def _list_events(self, query: dict[str, str], limit: int) -> Response:
        events: dict[str, list[SimMarket]] = {}
        for market in self._matching(query):
            if not market.multivariate:
                events.setdefault(market.event_ticker, []).append(market)
        rows = [
            {
                "event_ticker": event,
                "series_ticker": series_of(event),
                "title": f"Event {event}",
                "category": "Simulated",
                "markets": [m.as_json() for m in markets]
                if query.get("with_nested_markets") == "true"
                else None,
            }
            for event, markets in events.items()
        ]
        page, cursor = _page(rows, query.get("cursor"), limit)
        return _json({"events": page, "cursor": cursor})

    def _list_trades(self, query: dict[str, str], limit: int) -> Response:
        ticker = query.get("ticker")
        min_ts = int(query.get("min_ts", "0") or 0)
        max_ts = int(query.get("max_ts", str(2**62)) or 2**62)
        rows = [
            t.as_json()
            for t in self.markets.trades
            if (ticker is None or t.ticker == ticker) and min_ts <= t.ts_ms // 1000 <= max_ts
        ]
        page, cursor = _page(rows, query.get("cursor"), limit)
        return _json({"trades": page, "cursor": cursor})


def _json(body: object) -> Response:
    return Response(200, json.dumps(body, separators=(",", ":")).encode())


def _error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps({"error": {"code": str(status), "message": message}}).encode()
    return Response(status, body, headers)
