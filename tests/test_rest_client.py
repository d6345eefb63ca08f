"""The paced, retrying REST client against httpx's in-memory transport, on a fake clock."""

from __future__ import annotations

import itertools

import httpx
import pytest
import trio
import trio.testing

from ssmd.backoff import Backoff
from ssmd.connector.rest import (
    RestClient,
    RestRefused,
    RestSettings,
    TokenBucket,
    retry_after_seconds,
)
from ssmd.deadline import arm_shutdown_deadline

SETTINGS = RestSettings(rate=2.0, burst=2.0, timeout=5.0, backoff=Backoff(1.0, 8.0))


def client_for(handler: httpx.MockTransport, **kw: object) -> RestClient:
    return RestClient("https://venue.test/trade-api/v2", SETTINGS, transport=handler, **kw)  # type: ignore[arg-type]


async def test_requests_are_paced_under_the_budget(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        return httpx.Response(200, json={"ok": True})

    async with client_for(httpx.MockTransport(handler)) as rest:
        for _ in range(10):
            assert await rest.get_json("/x") == {"ok": True}
    # A burst of 2, then 2 per second.
    assert times[1] - times[0] == pytest.approx(0.0)
    assert times[-1] - times[0] == pytest.approx(4.0)
    assert rest.stats.requests["200"] == 10


async def test_429_waits_retry_after_then_backoff(autojump_clock: trio.testing.MockClock) -> None:
    answers = [
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(429),
        httpx.Response(503),
        httpx.Response(200, json={"markets": []}),
    ]
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        return answers.pop(0)

    async with client_for(httpx.MockTransport(handler)) as rest:
        assert await rest.get_json("/markets") == {"markets": []}
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert gaps == [7.0, 1.0, 2.0]
    assert rest.stats.requests == {"429": 2, "503": 1, "200": 1}
    assert rest.stats.retries == 3


async def test_an_unanswered_request_times_out_and_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await trio.sleep_forever()
        return httpx.Response(200, json=[1])

    async with client_for(httpx.MockTransport(handler)) as rest:
        assert await rest.get_json("/slow") == [1]
    assert rest.stats.requests["timeout"] == 1


async def test_an_outage_pauses_and_resumes(autojump_clock: trio.testing.MockClock) -> None:
    down_until = trio.current_time() + 600.0

    def handler(request: httpx.Request) -> httpx.Response:
        if trio.current_time() < down_until:
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json={"up": 1})

    async with client_for(httpx.MockTransport(handler)) as rest:
        assert await rest.get_json("/x") == {"up": 1}
    assert trio.current_time() >= down_until
    assert rest.stats.requests["error"] >= 10


async def test_a_client_error_is_refused_at_once(autojump_clock: trio.testing.MockClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, text="bad signature")

    async with client_for(httpx.MockTransport(handler)) as rest:
        with pytest.raises(RestRefused, match="HTTP 401 for GET /markets: bad signature"):
            await rest.get_json("/markets")


async def test_walk_follows_the_cursor_and_signs_the_path_without_query(
    autojump_clock: trio.testing.MockClock,
) -> None:
    signed: list[tuple[str, str]] = []
    seen: list[httpx.URL] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        assert request.headers["X-Sig"] == "sig"
        cursor = request.url.params.get("cursor")
        page = {None: (["A", "B"], "c1"), "c1": (["C"], "c2"), "c2": ([], "")}[cursor]
        return httpx.Response(
            200, json={"markets": [{"ticker": t} for t in page[0]], "cursor": page[1]}
        )

    def headers(method: str, path: str) -> list[tuple[str, str]]:
        signed.append((method, path))
        return [("X-Sig", "sig")]

    async with client_for(httpx.MockTransport(handler), headers=headers) as rest:
        pages = [
            [m["ticker"] for m in page]
            async for page in rest.walk("/markets", {"status": "open"}, "markets", limit=1000)
        ]
    assert pages == [["A", "B"], ["C"], []]
    assert signed == [("GET", "/trade-api/v2/markets")] * 3
    assert all(u.params["limit"] == "1000" and u.params["status"] == "open" for u in seen)


def test_token_bucket_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="token bucket"):
        TokenBucket(0.0, 1.0)


def test_retry_after_forms() -> None:
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now_epoch=1445412480.0) == 10.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


async def test_closing_the_client_ends_at_the_shutdown_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its close is shielded (a connection pool to tear down) but, like every shield,
    never past the shutdown deadline."""
    rest = client_for(httpx.MockTransport(lambda request: httpx.Response(200)))

    async def slow_close() -> None:
        await trio.sleep(10)

    rest.aclose = slow_close  # type: ignore[method-assign]
    t0 = trio.current_time()
    arm_shutdown_deadline(t0 + 0.25)
    async with rest:
        pass
    assert trio.current_time() - t0 == pytest.approx(0.25)
