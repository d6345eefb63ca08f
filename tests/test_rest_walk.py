"""A REST walk either sees every page or raises; walks go before backfill for the budget.

httpx's in-memory transport on a fake clock (review of issue 9, findings 1 and 4).
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from ssmd.backoff import Backoff
from ssmd.connector.rest import (
    Priority,
    RestClient,
    RestMalformed,
    RestRefused,
    RestSettings,
)

SETTINGS = RestSettings(rate=10.0, burst=10.0, timeout=5.0, backoff=Backoff(1.0, 8.0))


def client(handler: Any, settings: RestSettings = SETTINGS) -> RestClient:
    return RestClient("https://venue.test/v2", settings, transport=httpx.MockTransport(handler))


async def walked(rest: RestClient, **kw: Any) -> list[list[str]]:
    return [
        [m["ticker"] for m in page]
        async for page in rest.walk("/markets", {"status": "open"}, "markets", limit=2, **kw)
    ]


def pages(*bodies: object) -> Any:
    """A handler answering the walk's requests with `bodies` in turn, recording when."""
    answers = list(bodies)
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        body = answers.pop(0)
        if isinstance(body, httpx.Response):
            return body
        return httpx.Response(200, json=body)

    handler.times = times  # type: ignore[attr-defined]
    return handler


@pytest.mark.parametrize(
    "bad",
    [
        {"cursor": "c1"},  # no list at all
        {"markets": None, "cursor": "c1"},
        {"markets": {"ticker": "B"}, "cursor": "c1"},
        {"markets": [{"ticker": "B"}, "C"], "cursor": "c1"},
        ["not", "an", "object"],
    ],
)
async def test_a_page_without_its_list_is_retried_never_taken_as_empty(
    autojump_clock: trio.testing.MockClock, bad: object
) -> None:
    handler = pages(
        {"markets": [{"ticker": "A"}], "cursor": "c1"},
        bad,
        bad,
        {"markets": [{"ticker": "B"}], "cursor": ""},
    )
    async with client(handler) as rest:
        assert await walked(rest) == [["A"], ["B"]]
    # Backed off like a 5xx: 1 s, then 2 s.
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(handler.times)]
    assert gaps[1:] == [1.0, 2.0]
    assert rest.stats.retries == 2


async def test_a_page_that_stays_bad_ends_the_walk_with_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = pages({"markets": [{"ticker": "A"}], "cursor": "c1"}, *[{"cursor": "c2"}] * 5)
    seen: list[list[dict[str, Any]]] = []
    async with client(handler) as rest:
        with pytest.raises(RestMalformed, match="no 'markets' list") as caught:
            async for page in rest.walk("/markets", {}, "markets", limit=2):
                seen.append(page)
    assert len(handler.times) == 1 + SETTINGS.malformed_attempts
    assert seen == [[{"ticker": "A"}]]
    # Callers that handle a refusal (discovery, backfill) handle this too.
    assert isinstance(caught.value, RestRefused)


async def test_a_body_that_is_not_json_is_retried_then_raised(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = pages(*[httpx.Response(200, text="<html>maintenance</html>")] * 5)
    async with client(handler) as rest:
        with pytest.raises(RestMalformed, match="not JSON"):
            await rest.get_json("/markets")
    assert len(handler.times) == 5


@pytest.mark.parametrize("status", [301, 302, 304, 307])
async def test_a_redirect_is_refused_at_once_not_retried_forever(
    autojump_clock: trio.testing.MockClock, status: int
) -> None:
    handler = pages(
        httpx.Response(status, headers={"Location": "https://elsewhere.test/"}, json={}),
        {"markets": [], "cursor": ""},
    )
    async with client(handler) as rest:
        with pytest.raises(RestRefused, match=f"HTTP {status}"):
            await walked(rest)
    assert len(handler.times) == 1


async def test_a_repeating_cursor_is_an_error_not_the_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = pages(
        {"markets": [{"ticker": "A"}], "cursor": "c1"},
        {"markets": [{"ticker": "B"}], "cursor": "c1"},
    )
    async with client(handler) as rest:
        with pytest.raises(RestMalformed, match="came back"):
            await walked(rest)


async def test_a_cursor_cycle_is_an_error_not_a_walk_forever(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = pages(
        {"markets": [{"ticker": "A"}], "cursor": "c1"},
        {"markets": [{"ticker": "B"}], "cursor": "c2"},
        {"markets": [{"ticker": "C"}], "cursor": "c1"},
    )
    async with client(handler) as rest:
        with pytest.raises(RestMalformed, match="'c1' came back"):
            await walked(rest)
    assert len(handler.times) == 3


def endless_pages(request: httpx.Request) -> httpx.Response:
    cursor = int(request.url.params.get("cursor", "0"))
    more = str(cursor + 1) if cursor < 19 else ""
    return httpx.Response(200, json={"markets": [{"ticker": f"M{cursor}"}], "cursor": more})


async def test_a_long_backfill_does_not_delay_the_walk(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """20 backfill requests always waiting, 10 tokens a second: a 20-page walk takes
    its own 2 s and the backfill's share of one token in five, 2.5 s (first in a FIFO
    it would take 40 s)."""
    backfilled = 0

    async def backfill(rest: RestClient) -> None:
        nonlocal backfilled
        while True:
            await rest.get_json("/markets/trades", priority=Priority.BACKGROUND)
            backfilled += 1

    async with client(endless_pages) as rest, trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(backfill, rest)
        await trio.sleep(10.0)  # the bucket is empty, the backlog long
        assert backfilled == pytest.approx(10 + 10 * 10, abs=2)
        started = trio.current_time()
        assert len(await walked(rest)) == 20
        took = trio.current_time() - started
        assert took <= 2.5 + 1e-6
        # The backfill got what the walk left: ten a second over the whole time.
        total = backfilled + 20
        assert total == pytest.approx(10 + 10 * (trio.current_time() - started + 10.0), abs=2)
        nursery.cancel_scope.cancel()


async def test_background_requests_go_on_at_the_full_rate_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with client(endless_pages) as rest:
        started = trio.current_time()
        for _ in range(60):
            await rest.get_json("/markets/trades", priority=Priority.BACKGROUND)
        # A burst of 10 less the walk's reserve of one, then 10 a second.
        assert trio.current_time() - started == pytest.approx(5.1, abs=0.01)


async def test_a_cancelled_waiter_leaves_the_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with client(endless_pages, RestSettings(rate=1.0, burst=1.0)) as rest:
        await rest.get_json("/x")
        with trio.move_on_after(0.5):
            await rest.get_json("/x")  # waits for a token; cancelled before it comes
        started = trio.current_time()
        await rest.get_json("/x", priority=Priority.BACKGROUND)
        # Its wait was not inherited by anyone: one token a second (a bucket of one
        # keeps no reserve: it could never hold one more).
        assert trio.current_time() - started == pytest.approx(0.5)


async def slow_pages(request: httpx.Request) -> httpx.Response:
    await trio.sleep(0.05)
    return httpx.Response(200, json={"markets": [], "cursor": ""})


@pytest.mark.parametrize("rate", [10.0, 1.0])
async def test_walks_back_to_back_leave_backfill_its_share(
    autojump_clock: trio.testing.MockClock, rate: float
) -> None:
    served = {Priority.WALK: 0, Priority.BACKGROUND: 0}

    async def loop(rest: RestClient, priority: Priority) -> None:
        while True:
            await rest.get_json("/markets", priority=priority)
            served[priority] += 1

    settings = RestSettings(rate=rate, burst=max(1.0, rate))
    async with client(slow_pages, settings) as rest, trio.open_nursery() as nursery:
        nursery.start_soon(loop, rest, Priority.WALK)
        nursery.start_soon(loop, rest, Priority.BACKGROUND)
        await trio.sleep(600.0)
        nursery.cancel_scope.cancel()
    # Every token used; one in five for the backfill, the rest for the walks.
    total = served[Priority.WALK] + served[Priority.BACKGROUND]
    assert total == pytest.approx(600 * rate, rel=0.02)
    assert served[Priority.BACKGROUND] == pytest.approx(total / 5, rel=0.05)


async def test_a_walk_that_comes_during_a_backfill_wait_goes_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    granted: list[tuple[str, float]] = []

    async def get(name: str, priority: Priority) -> None:
        await rest.get_json("/x", priority=priority)
        granted.append((name, round(trio.current_time(), 3)))

    settings = RestSettings(rate=1.0, burst=2.0)
    async with client(endless_pages, settings) as rest, trio.open_nursery() as nursery:
        await get("b1", Priority.BACKGROUND)  # 2 tokens, leaves its reserve of 1
        nursery.start_soon(get, "b2", Priority.BACKGROUND)  # needs 2: waits 1 s
        await trio.sleep(0.5)
        nursery.start_soon(get, "walk", Priority.WALK)  # finds its token at once
    # b2 then waits again for its 1 + reserve: the bucket never goes below empty.
    assert granted == [("b1", 0.0), ("walk", 0.5), ("b2", 2.0)]
