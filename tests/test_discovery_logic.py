"""Discovery without I/O: the market set under live events and REST walks, the catalogue,
Kalshi's selection and lifecycle rules, and the trade ledger behind backfills."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ssmd.connector.reconcile import Catalogue, Diff, MarketSet
from ssmd.feeds.kalshi_discovery import (
    NS,
    VOLATILE_MARKET_FIELDS,
    BackfillWindow,
    LifecycleChange,
    Selection,
    TradeLedger,
    backfill_window,
    lifecycle_change,
    series_of,
    trade_ts,
)


def test_a_walk_adds_and_removes_what_changed_before_it_began() -> None:
    markets = MarketSet()
    assert markets.reconcile(["A", "B"], walk_started=10.0) == Diff(("A", "B"), ())
    # A is missing once: kept (a walk over a changing set can skip a market).
    assert markets.reconcile(["B", "C"], walk_started=20.0) == Diff(("C",), ())
    assert markets.members == {"A", "B", "C"} and markets.missed == {"A"}
    # Missing from the second walk in a row: removed.
    assert markets.reconcile(["B", "C"], walk_started=30.0) == Diff((), ("A",))
    assert markets.members == {"B", "C"}
    assert not markets.reconcile(["B", "C"], walk_started=40.0)


def test_a_walk_never_undoes_a_live_event_that_came_during_it() -> None:
    markets = MarketSet()
    markets.reconcile(["A", "B"], walk_started=0.0)
    # During a walk begun at 100: N is created, B settles.
    assert markets.live_add("N", now=105.0)
    assert markets.live_remove("B", now=106.0)
    # The walk's pages were read before those events: B still there, N not yet.
    assert markets.reconcile(["A", "B"], walk_started=100.0) == Diff()
    assert markets.members == {"A", "N"}
    # The next two walks know better about both.
    assert markets.reconcile(["A"], walk_started=200.0) == Diff()
    assert markets.reconcile(["A"], walk_started=300.0) == Diff((), ("N",))


def test_a_live_event_before_the_walk_is_settled_by_it() -> None:
    markets = MarketSet()
    markets.live_add("X", now=5.0)
    assert markets.reconcile([], walk_started=10.0) == Diff()
    assert markets.reconcile([], walk_started=20.0) == Diff((), ("X",))
    assert not markets.live_remove("X", now=21.0)


@settings(max_examples=200, deadline=None)
@given(
    before=st.sets(st.sampled_from("ABCDEFGH")),
    walked=st.sets(st.sampled_from("ABCDEFGH")),
)
def test_without_live_events_two_walks_make_the_set_what_they_saw(
    before: set[str], walked: set[str]
) -> None:
    markets = MarketSet()
    markets.reconcile(sorted(before), walk_started=1.0)
    diff = markets.reconcile(sorted(walked), walk_started=2.0)
    assert set(diff.added) == walked - before and not diff.removed
    assert markets.members == walked | before
    diff = markets.reconcile(sorted(walked), walk_started=3.0)
    assert markets.members == walked
    assert not diff.added and set(diff.removed) == before - walked


def test_the_catalogue_publishes_again_only_when_what_a_market_is_changes() -> None:
    catalogue = Catalogue(VOLATILE_MARKET_FIELDS)
    market = {"ticker": "T", "title": "Will it?", "yes_bid_dollars": "0.40", "volume_fp": "10.00"}
    assert catalogue.changed("T", market)
    assert not catalogue.changed("T", {**market, "yes_bid_dollars": "0.41", "volume_fp": "12.00"})
    assert catalogue.changed("T", {**market, "close_time": "2026-12-01T00:00:00Z"})
    assert catalogue.changed("U", market)
    assert len(catalogue) == 2


def test_selection_by_series_and_status() -> None:
    assert series_of("KXBTCD-26MAR1213-T69499.99") == "KXBTCD"
    every = Selection()
    btc = Selection(frozenset({"KXBTCD"}))
    open_btc = {
        "ticker": "KXBTCD-26MAR1213-T1",
        "event_ticker": "KXBTCD-26MAR1213",
        "status": "active",
    }
    assert every.wants(open_btc) and btc.wants(open_btc)
    assert not btc.wants({**open_btc, "ticker": "KXINX-1", "event_ticker": "KXINX-1"})
    assert not every.wants({**open_btc, "status": "closed"})
    assert not every.wants({"status": "active"})
    assert every.market_walks() == [{"status": "open", "mve_filter": "exclude"}]
    assert [w["series_ticker"] for w in Selection(frozenset({"B", "A"})).market_walks()] == [
        "A",
        "B",
    ]


def lifecycle(event_type: str, ticker: str = "KXBTCD-1-T1", **extra: object) -> dict[str, object]:
    return {
        "type": "market_lifecycle_v2",
        "sid": 1,
        "seq": 3,
        "msg": {"event_type": event_type, "market_ticker": ticker, **extra},
    }


def test_lifecycle_events_add_and_remove_selected_markets() -> None:
    every = Selection()
    assert lifecycle_change(lifecycle("created"), every) == LifecycleChange(
        "KXBTCD-1-T1", True, "lifecycle:created"
    )
    for kind in ("determined", "settled", "deactivated"):
        change = lifecycle_change(lifecycle(kind), every)
        assert change == LifecycleChange("KXBTCD-1-T1", False, f"lifecycle:{kind}")
    assert lifecycle_change(lifecycle("metadata_updated"), every) is None
    assert lifecycle_change(lifecycle("close_date_updated"), every) is None
    inx = Selection(frozenset({"KXINX"}))
    assert lifecycle_change(lifecycle("created"), inx) is None
    created_inx = lifecycle(
        "created", "ODD-TICKER", additional_metadata={"event_ticker": "KXINX-26DEC01"}
    )
    assert lifecycle_change(created_inx, inx) == LifecycleChange(
        "ODD-TICKER", True, "lifecycle:created"
    )
    assert lifecycle_change({"type": "trade", "msg": {}}, every) is None
    assert lifecycle_change({"type": "market_lifecycle_v2", "msg": "x"}, every) is None


def test_backfill_window_covers_the_loss_in_whole_seconds_widened_by_the_margin() -> None:
    window = backfill_window(
        since_ns=1_700_000_010_500_000_000,
        resumed_ns=1_700_000_020_100_000_000,
        markets=["A"],
        cause="disconnect",
    )
    assert window == BackfillWindow(1_700_000_008, 1_700_000_022, ("A",), "disconnect")
    assert window.queries() == [{"min_ts": 1_700_000_008, "max_ts": 1_700_000_022, "ticker": "A"}]
    assert BackfillWindow(1, 2).queries() == [{"min_ts": 1, "max_ts": 2}]
    # The live tape has passed it once the clock is a margin past its last second.
    assert window.settled_ns() == 1_700_000_025_000_000_000


def test_a_rest_trade_time_is_its_ts_or_created_time() -> None:
    assert trade_ts({"ts": 1_700_000_000}) == 1_700_000_000
    assert trade_ts({"created_time": "2023-11-14T22:13:20Z"}) == 1_700_000_000
    assert trade_ts({"created_time": "soon"}) is None and trade_ts({}) is None


def test_the_ledger_publishes_only_what_was_missed_and_only_once() -> None:
    ledger = TradeLedger(capacity=4)
    assert not ledger.seen("t1") and not ledger.seen("t2")
    rest = [
        {"trade_id": "t1"},
        {"trade_id": "t3"},
        {"trade_id": ""},
        {"no": "id"},
        {"trade_id": "t4"},
    ]
    assert ledger.missing(rest) == ([{"trade_id": "t3"}, {"trade_id": "t4"}], 2)  # 2 without id
    assert ledger.missing(rest) == ([], 2)
    # Memory is bounded: the oldest id is forgotten first.
    assert not ledger.seen("t5")
    assert len(ledger) == 4 and "t1" not in ledger and "t5" in ledger


def test_the_ledger_knows_since_when_it_remembers_every_trade() -> None:
    ledger = TradeLedger(capacity=2)
    assert ledger.horizon_ns == 0 and ledger.first_ts() == 0  # nothing forgotten yet
    ledger.seen("a", 10_000_000_000)
    ledger.seen("b", 11_000_000_000)
    assert ledger.horizon_ns == 0
    ledger.seen("c", 12_000_000_000)  # forgets "a", received at 10 s
    assert ledger.horizon_ns == 10_000_000_001
    assert ledger.first_ts() == 13  # past the horizon by the margin, whole seconds
    # A backfilled trade is remembered at its exchange time, and a live copy is counted.
    assert ledger.missing([{"trade_id": "d", "ts": 20}]) == ([{"trade_id": "d", "ts": 20}], 0)
    assert ledger.doubled == 0 and ledger.seen("d", 25_000_000_000) and ledger.doubled == 1
    assert ledger.seen("c", 26_000_000_000) and ledger.doubled == 1  # a live repeat: not one


def test_the_ledger_checks_a_whole_answer_before_noting_any_of_it() -> None:
    """Noting the answer's own ids evicts the oldest: a live id still to be checked must
    not be among them, or it is published again."""
    ledger = TradeLedger(capacity=3)
    for trade_id in ("a", "b", "c"):
        ledger.seen(trade_id)
    answer = [{"trade_id": x} for x in ("x1", "x2", "x3", "a")]
    fresh, _ = ledger.missing(answer)
    assert [t["trade_id"] for t in fresh] == ["x1", "x2", "x3"]


def test_a_tape_passes_by_exchange_time_or_by_receive_time_plus_the_last_lag() -> None:
    ledger = TradeLedger()
    ledger.heard(0, 100 * NS, 70 * NS)  # a stamped frame, received 30 s behind
    assert ledger.passed(0, 70 * NS) and not ledger.passed(0, 80 * NS)
    ledger.heard(0, 105 * NS)  # frames without stamps: still 30 s behind, presumably
    assert not ledger.passed(0, 80 * NS)
    ledger.heard(0, 110 * NS)
    assert ledger.passed(0, 80 * NS)
    assert not TradeLedger().passed(1, 1) and TradeLedger().passed(1, 0)
