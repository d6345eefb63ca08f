"""A venue's REST API, paced, timed out and retried: what discovery and backfill read.

Every request waits for a token from a token bucket (the venue's documented budget), has
a deadline, and is retried with backoff on HTTP 429 (honouring `Retry-After` when the
venue sends one), on 5xx, and on transport errors, until it succeeds or its caller's
cancel scope ends it: a REST outage pauses discovery, it never ends the process. Any
other 4xx, and any 1xx or 3xx (redirects are not followed), raises `RestRefused` at once:
retrying the same request cannot help. An answer that is not what was asked for (a body
that is not JSON, a walk page without its list) is retried like a 5xx a few times, then
raises `RestMalformed`: a walk never passes off a bad page as an empty one.

Requests have a priority (`Priority`): discovery's walks go before trade backfill, so a
long backfill barely delays the periodic walk, and backfill keeps a share of the budget
(`PacedLanes`) when walks run back to back.

httpx runs on Trio; pacing and backoff read `trio.current_time()`, so a MockClock drives
them in tests.
"""

from __future__ import annotations

import collections
import email.utils
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import attrs
import httpx
import trio

from ssmd.backoff import Backoff, Retry
from ssmd.deadline import shielded

log = logging.getLogger("ssmd.connector.rest")

HeaderSource = Callable[[str, str], list[tuple[str, str]]]
"""Headers for one request, from its method and URL path (Kalshi signs each request)."""

Params = Mapping[str, str | int | Sequence[str]]
"""Query parameters; a sequence value is repeated (`condition_ids=a&condition_ids=b`)."""


class RestRefused(Exception):
    """The venue answered a request with a client error other than 429: retrying the same
    request cannot help (bad credentials, bad parameters, unknown path)."""

    def __init__(self, status: int, path: str, body: str) -> None:
        self.status = status
        self.path = path
        super().__init__(f"HTTP {status} for GET {path}: {body[:200]}")


class RestMalformed(RestRefused):
    """The venue kept answering 2xx with something other than what was asked for (a body
    that is not JSON, a page without its list): a walk cannot be completed from it."""

    def __init__(self, status: int, path: str, reason: str) -> None:
        super().__init__(status, path, reason)


class Priority(enum.IntEnum):
    """Who goes first for the REST budget: lower values are served first."""

    WALK = 0
    """Discovery's walks: the set of markets recorded depends on them."""
    BACKGROUND = 1
    """Trade backfill: what the walks leave of the budget, and at least a share."""


@attrs.define
class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up."""

    rate: float
    burst: float
    tokens: float = attrs.field(init=False)
    stamp: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, got {self!r}")
        self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_time(self, now: float, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are there (0 when they are)."""
        self._refill(now)
        return max(0.0, (cost - self.tokens) / self.rate)

    def take(self, now: float, cost: float = 1.0) -> None:
        self._refill(now)
        self.tokens -= cost

    async def acquire(self, cost: float = 1.0) -> None:
        """Wait for `cost` tokens and take them. The bucket refills continuously, so
        one sleep of the computed time is enough."""
        await trio.sleep(self.wait_time(trio.current_time(), cost))
        self.take(trio.current_time(), cost)


class PacedLanes:
    """One token bucket shared by requests of different priorities.

    Waiting requests are served in priority order, then in arrival order, with one
    bound: a lower priority request that waits goes first once the walks had `share` - 1
    tokens since the lower lane's last, so it gets at least one token in `share`: walks
    back to back slow by at most 1/`share` and never starve backfill. A lower
    priority request that has the bucket to itself also leaves `reserve` tokens in it
    (at most `burst` - 1), so the next walk request finds a token at once instead of
    waiting behind the backfill's last one.
    """

    def __init__(self, bucket: TokenBucket, reserve: float = 1.0, share: int = 5) -> None:
        if share < 2:
            raise ValueError(f"a lower priority's share is one token in `share` >= 2, got {share}")
        self._bucket = bucket
        self._reserve = max(0.0, min(reserve, bucket.burst - 1.0))
        self._share = share
        # Tokens the top lane took since a lower lane last had one.
        self._streak = 0
        self._waiting: dict[Priority, collections.deque[object]] = {
            p: collections.deque() for p in Priority
        }
        self._moved = trio.Event()

    def _lower_waiting(self) -> collections.deque[object] | None:
        for priority in Priority:
            if priority != min(Priority) and self._waiting[priority]:
                return self._waiting[priority]
        return None

    def _head(self) -> object | None:
        top = self._waiting[min(Priority)]
        lower = self._lower_waiting()
        if lower is not None and (not top or self._streak >= self._share - 1):
            return lower[0]
        if top:
            return top[0]
        return None

    def _wake_all(self) -> None:
        self._moved.set()
        self._moved = trio.Event()

    async def acquire(self, priority: Priority = Priority.WALK) -> None:
        me = object()
        queue = self._waiting[priority]
        queue.append(me)
        if self._head() is me:
            self._wake_all()  # the old head's wait is for a token it no longer gets first
        top = priority == min(Priority)
        try:
            while True:
                moved = self._moved
                if self._head() is not me:
                    await moved.wait()
                    continue
                # A lower lane served by its share takes no reserve: a walk waits anyway.
                alone = top or not self._waiting[min(Priority)]
                cost = 1.0 + (0.0 if top or not alone else self._reserve)
                wait = self._bucket.wait_time(trio.current_time(), cost)
                if wait > _TOKEN_EPSILON / self._bucket.rate:
                    with trio.move_on_after(wait):
                        await moved.wait()
                    continue  # still the head, and the tokens there? look again
                self._bucket.take(trio.current_time())
                self._granted(top)
                return
        finally:
            queue.remove(me)
            self._wake_all()

    def _granted(self, top: bool) -> None:
        self._streak = self._streak + 1 if top else 0


# Float rounding can leave a bucket this short of a token after the computed wait.
_TOKEN_EPSILON = 1e-6


def retry_after_seconds(value: str | None, now_epoch: float | None = None) -> float | None:
    """A `Retry-After` header as seconds to wait: delta-seconds or an HTTP date."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    now = time.time() if now_epoch is None else now_epoch
    return max(0.0, when.timestamp() - now)


@attrs.define
class RestStats:
    requests: collections.Counter[str] = attrs.field(factory=collections.Counter)
    """Finished requests by outcome: the HTTP status code, or `error` / `timeout`."""
    retries: int = 0
    last_success_ns: int = 0


@attrs.frozen
class RestSettings:
    rate: float = 10.0
    burst: float = 10.0
    timeout: float = 10.0
    backoff: Backoff = Backoff(1.0, 60.0, jitter=0.5)
    max_retry_after: float = 300.0
    malformed_attempts: int = 5
    """Answers to one request that are not what was asked for, before `RestMalformed`."""


class RestClient:
    """GET JSON from one venue's REST base URL, within its budget, through its outages."""

    def __init__(
        self,
        base_url: str,
        settings: RestSettings,
        *,
        headers: HeaderSource | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        label: str = "rest",
    ) -> None:
        self._base = base_url.rstrip("/")
        self._base_path = httpx.URL(self._base).path.rstrip("/")
        self._settings = settings
        self._headers = headers
        self._lanes = PacedLanes(TokenBucket(settings.rate, settings.burst))
        self._label = label
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(settings.timeout),
            headers={"Accept": "application/json", "User-Agent": "ssmd"},
            follow_redirects=False,
        )
        self.stats = RestStats()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> RestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with shielded(1.0):
            await self.aclose()

    async def get_json(
        self,
        path: str,
        params: Params | None = None,
        *,
        priority: Priority = Priority.WALK,
        expect: Callable[[Any], str | None] | None = None,
    ) -> Any:
        """The decoded JSON body of `GET base + path`, retried until it succeeds.

        `expect` says what is wrong with a body (None: nothing); a body it finds wrong,
        like one that is not JSON, is retried `malformed_attempts` times in all and then
        raises `RestMalformed`."""
        retry = Retry(self._settings.backoff)
        malformed = 0
        while True:
            await self._lanes.acquire(priority)
            outcome, delay = await self._attempt(path, params)
            if not isinstance(outcome, _Failed):
                problem = expect(outcome) if expect is not None else None
                if problem is None:
                    self.stats.last_success_ns = time.time_ns()
                    return outcome
                outcome = _Failed(f"HTTP 200 with {problem}", malformed=True)
            if outcome.malformed:
                malformed += 1
                if malformed >= self._settings.malformed_attempts:
                    raise RestMalformed(200, path, f"{outcome.reason} ({malformed} times)")
            self.stats.retries += 1
            wait = retry.next_delay() if delay is None else delay
            if retry.failures in (1, 10) or retry.failures % 100 == 0:
                log.warning(
                    "%s: GET %s failed (%s); retrying in %.1fs (attempt %d)",
                    self._label,
                    path,
                    outcome.reason,
                    wait,
                    retry.failures,
                )
            await trio.sleep(wait)

    async def _attempt(self, path: str, params: Params | None) -> tuple[Any, float | None]:
        url = self._base + path
        headers = self._headers("GET", self._base_path + path) if self._headers else []
        try:
            with trio.fail_after(self._settings.timeout):
                response = await self._client.get(url, params=params, headers=headers)
        except trio.TooSlowError:
            self.stats.requests["timeout"] += 1
            return _Failed("timed out"), None
        except httpx.HTTPError as exc:
            self.stats.requests["error"] += 1
            return _Failed(f"{type(exc).__name__}: {exc}"), None
        status = response.status_code
        self.stats.requests[str(status)] += 1
        if status == 429:
            hinted = retry_after_seconds(response.headers.get("Retry-After"))
            if hinted is not None:
                hinted = min(hinted, self._settings.max_retry_after)
            return _Failed("HTTP 429 too many requests"), hinted
        if status >= 500:
            return _Failed(f"HTTP {status}"), None
        if not 200 <= status < 300:
            # 4xx, and 1xx or 3xx: redirects are not followed (a signed path would
            # not match), and asking again gets the same answer.
            raise RestRefused(status, path, response.text)
        try:
            body = response.json()
        except ValueError:
            return _Failed(f"HTTP {status} with a body that is not JSON", malformed=True), None
        return body, None

    async def walk(
        self,
        path: str,
        params: Params,
        items_key: str,
        *,
        limit: int,
        priority: Priority = Priority.WALK,
        cursor_key: str = "cursor",
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Each page's `items_key` list, following the body's `cursor_key` (Kalshi
        `cursor`, Gamma's keyset `next_cursor`), passed back as `cursor`, until it is
        empty or absent.

        A page without that list (or with something in it that is not an object) is
        retried, then raises `RestMalformed`; so does a cursor that comes back. A walk that
        ends without raising has seen every page."""

        def expect(body: Any) -> str | None:
            if not isinstance(body, dict):
                return f"a {type(body).__name__} where an object was expected"
            items = body.get(items_key)
            if not isinstance(items, list):
                return f"no {items_key!r} list"
            if not all(isinstance(item, dict) for item in items):
                return f"a {items_key!r} list with something that is not an object"
            return None

        cursor: str | None = None
        seen: set[str] = set()
        while True:
            query: dict[str, str | int | Sequence[str]] = {**params, "limit": limit}
            if cursor:
                query["cursor"] = cursor
            body = await self.get_json(path, query, priority=priority, expect=expect)
            yield list(body[items_key])
            next_cursor = body.get(cursor_key)
            if not isinstance(next_cursor, str) or not next_cursor:
                return
            if next_cursor in seen:
                raise RestMalformed(200, path, f"the cursor {next_cursor!r} came back")
            seen.add(next_cursor)
            cursor = next_cursor


@attrs.frozen
class _Failed:
    reason: str
    malformed: bool = False
