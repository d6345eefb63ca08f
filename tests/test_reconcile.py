"""Reconciliation never loses an open market, never undoes a later lifecycle removal,
keeps its catalogue memory bounded, and walks start to start (review of issue 9,
findings 1, 2, 3 and 5). Pure logic, and a fake clock for the schedule."""

from __future__ import annotations

import tracemalloc

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmd.connector.reconcile import Catalogue, Diff, MarketSet, Refresher
from ssmd.feeds.kalshi_discovery import VOLATILE_MARKET_FIELDS


def walk(markets: MarketSet, pages: list[list[str]], started: float) -> Diff:
    """What Discovery.walk does: each page's markets added with the walk's start as
    their stamp, then the whole walk reconciled."""
    walked: list[str] = []
    for page in pages:
        for ticker in page:
            walked.append(ticker)
            markets.live_add(ticker, started)
    return markets.reconcile(walked, started)


# Finding 1: one incomplete-looking walk removes nothing.


def test_a_market_missing_from_one_walk_is_kept_and_from_two_in_a_row_removed() -> None:
    markets = MarketSet()
    walk(markets, [["A", "B", "C"]], 0.0)
    # A page boundary shifted: B was skipped although it is open.
    assert walk(markets, [["A"], ["C"]], 10.0) == Diff()
    assert "B" in markets and markets.missed == {"B"}
    assert walk(markets, [["A", "B"], ["C"]], 20.0) == Diff()
    assert markets.missed == set()
    # Missed again, once: still kept; the count starts over after a walk that saw it.
    assert walk(markets, [["A", "C"]], 30.0) == Diff()
    assert walk(markets, [["A", "C"]], 40.0) == Diff((), ("B",))
    assert markets.members == {"A", "C"}


def test_a_walk_that_lists_a_missed_market_starts_its_count_over() -> None:
    markets = MarketSet()
    markets.reconcile(["A"], 0.0)
    markets.reconcile([], 10.0)  # missed once
    markets.reconcile(["A"], 20.0)  # listed again (not through live_add)
    assert markets.reconcile([], 30.0) == Diff()
    assert "A" in markets and markets.missed == {"A"}


def test_a_lookup_removes_the_missed_markets_it_did_not_find_open() -> None:
    markets = MarketSet()
    markets.reconcile(["A", "B", "C", "D"], 0.0)
    markets.reconcile(["D"], 10.0)  # A, B and C missed once
    markets.live_add("C", 11.0)  # a live event while the lookup is under way stands
    assert markets.settle_missed(["A", "B", "C"], still_open=["B"]) == ["A"]
    assert markets.members == {"B", "C", "D"} and markets.missed == set()
    # B was skipped by paging, not closed: it starts over, one more miss keeps it.
    assert markets.reconcile(["C", "D"], 20.0) == Diff()
    assert markets.members == {"B", "C", "D"}


def test_a_lifecycle_removal_still_removes_at_once() -> None:
    markets = MarketSet()
    walk(markets, [["A", "B"]], 0.0)
    assert markets.live_remove("A", 5.0)
    assert "A" not in markets
    walk(markets, [["B"]], 10.0)  # closed silently: one miss
    assert markets.live_remove("B", 12.0)  # then its settlement event
    assert markets.members == set() and markets.missed == set()


def test_a_live_event_during_the_walk_resets_the_count() -> None:
    markets = MarketSet()
    walk(markets, [["A"]], 0.0)
    walk(markets, [[]], 10.0)  # missed once
    assert markets.live_add("A", 25.0) is False  # activated again: already a member
    assert markets.missed == set()
    # Missing from a walk that began before the event: not counted at all.
    assert walk(markets, [[]], 20.0) == Diff()
    assert walk(markets, [[]], 30.0) == Diff()
    assert walk(markets, [[]], 40.0) == Diff((), ("A",))


def test_one_miss_is_allowed_to_be_configured_away() -> None:
    markets = MarketSet(misses_to_remove=1)
    walk(markets, [["A"]], 0.0)
    assert walk(markets, [[]], 10.0) == Diff((), ("A",))
    with pytest.raises(ValueError, match="at least 1"):
        MarketSet(misses_to_remove=0)


# Finding 2: a walk page read before a settlement does not bring the market back.


def test_a_page_of_a_walk_begun_before_a_removal_does_not_re_add_it() -> None:
    markets = MarketSet()
    walk(markets, [["A", "B"]], 0.0)
    # A walk begins at 100; A settles at 105 (live), then the walk's page that still
    # lists A (read before the venue updated it) is handled at 106.
    started = 100.0
    assert markets.live_remove("A", 105.0)
    assert markets.live_add("A", started) is False
    assert "A" not in markets
    assert markets.reconcile(["A", "B"], started) == Diff()
    assert markets.members == {"B"}
    # A walk begun after the settlement is believed, though: reactivated markets exist.
    assert walk(markets, [["A", "B"]], 200.0) == Diff()
    assert "A" in markets


def test_a_stale_removal_does_not_undo_a_later_addition() -> None:
    markets = MarketSet()
    assert markets.live_add("A", 10.0)
    assert markets.live_remove("A", 5.0) is False
    assert "A" in markets


EVENT = st.tuples(st.sampled_from("ABCD"), st.booleans(), st.floats(0.5, 99.0, allow_nan=False))


@settings(max_examples=300, deadline=None)
@given(
    before=st.sets(st.sampled_from("ABCD")),
    events=st.lists(EVENT, max_size=12),
    listed=st.sets(st.sampled_from("ABCD")),
    page_at=st.floats(0.0, 99.0, allow_nan=False),
)
def test_the_latest_live_event_during_a_walk_always_wins(
    before: set[str],
    events: list[tuple[str, bool, float]],
    listed: set[str],
    page_at: float,
) -> None:
    """A walk begins at 0 and ends at 100; live events come at any time in between, and
    its one page is handled at `page_at` (whatever it lists). A market's last live
    event decides; a market with none is what the walk says (kept if missed once)."""
    markets = MarketSet()
    walk(markets, [sorted(before)], -100.0)
    timeline = sorted(events, key=lambda e: e[2])
    page_done = False
    for market, opened, at in timeline:
        if not page_done and at >= page_at:
            for ticker in sorted(listed):
                markets.live_add(ticker, 0.0)
            page_done = True
        if opened:
            markets.live_add(market, at)
        else:
            markets.live_remove(market, at)
    if not page_done:
        for ticker in sorted(listed):
            markets.live_add(ticker, 0.0)
    markets.reconcile(sorted(listed), 0.0)
    last = {market: opened for market, opened, _ in timeline}
    for market in "ABCD":
        if market in last:
            assert (market in markets) == last[market], market
        else:
            assert (market in markets) == (market in listed or market in before), market


# Finding 3: the catalogue forgets what closed, and costs little per market.


def market(ticker: str, title: str = "Will it?") -> dict[str, object]:
    return {"ticker": ticker, "title": title, "status": "active", "yes_bid_dollars": "0.40"}


def test_the_catalogue_forgets_keys_no_recent_walk_saw() -> None:
    catalogue = Catalogue(VOLATILE_MARKET_FIELDS, keep_walks=2)
    for round_ in range(50):
        # One market open all along, ten new ones each walk that close after it.
        assert catalogue.changed("LONG", market("LONG")) is (round_ == 0)
        for i in range(10):
            assert catalogue.changed(f"M{round_}-{i}", market(f"M{round_}-{i}"))
        catalogue.walk_complete()
        assert len(catalogue) <= 1 + 2 * 10
    assert "LONG" in catalogue and "M49-0" in catalogue and "M48-0" in catalogue
    assert "M47-0" not in catalogue
    # One that comes back after it was forgotten is published again.
    assert catalogue.changed("M0-0", market("M0-0"))


def test_a_key_missed_by_fewer_than_keep_walks_is_still_remembered() -> None:
    catalogue = Catalogue(keep_walks=3)
    assert catalogue.changed("K", market("K"))
    for _ in range(3):
        catalogue.walk_complete()
    assert not catalogue.changed("K", market("K"))  # seen three walks ago: kept
    assert catalogue.changed("K", market("K", "Will it, really?"))
    for _ in range(4):
        catalogue.walk_complete()
    assert "K" not in catalogue
    with pytest.raises(ValueError, match="at least 1"):
        Catalogue(keep_walks=0)


def test_the_catalogue_costs_at_most_a_few_hundred_bytes_a_market() -> None:
    count = 20_000
    objects = [market(f"KXBTCD-26DEC0112-T{100_000 + i}.99") for i in range(count)]
    catalogue = Catalogue(VOLATILE_MARKET_FIELDS)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(2):
            for obj in objects:
                # A fresh key string each walk, as parsed from a page: the catalogue
                # keeps one of them.
                catalogue.changed(str(obj["ticker"]).lower().upper(), obj)
            catalogue.walk_complete()
        per_market = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    print(f"catalogue bytes a market: {per_market:.0f}")
    assert per_market < 250, per_market


# Finding 5: walks start every `refresh`, start to start.


async def test_walks_start_every_period_however_long_they_take(
    autojump_clock: trio.testing.MockClock,
) -> None:
    refresher = Refresher(100.0)
    t0 = trio.current_time()
    starts: list[float] = []
    for took in (30.0, 99.0, 0.0, 130.0, 10.0):
        await refresher.wait()
        starts.append(refresher.begin() - t0)
        await trio.sleep(took)  # the walk
    # A walk that overran is followed at once; the schedule counts from there.
    assert starts == [0.0, 100.0, 200.0, 300.0, 430.0]
    with pytest.raises(ValueError, match="positive"):
        Refresher(0.0)
