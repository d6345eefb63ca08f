"""Kalshi refusals that once stranded markets, without sockets: a dropped market is handed
to the planner, an error naming no market splits its command, a slot left with no market
is never subscribed with an empty list, and a refusal with no documented remedy cannot
block its slot forever."""

from __future__ import annotations

from ssmd.connector.layout import AddMarkets, DeleteMarkets, Subscribe
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds.base import Change, DropsMarkets
from ssmd.feeds.kalshi.session import KalshiSession
from tests.kalshi_session import (
    BOOK,
    add,
    as_command,
    delete,
    error,
    frame,
    new_session,
    ok,
    records,
    retries,
    sent,
    subscribed,
)


def sub_reply(session: KalshiSession, body: dict[str, object], sid: int) -> None:
    frame(session, {"id": body["id"], "type": "subscribed", "msg": {"channel": BOOK, "sid": sid}})


def test_markets_dropped_for_14_or_16_are_handed_to_the_planner() -> None:
    session, _ = new_session([SubscriptionPlan(BOOK, ("S", "T"))])
    assert isinstance(session, DropsMarkets)
    subscribed(session, 0, ("A",), 7)
    frame(session, error(add(session, "X", "Y"), 16, market_ticker="X"))
    assert session.take_dropped() == [(0, ("X",), "error:16")]
    assert session.take_dropped() == []
    # A static slot has no planner to tell: dropped, with its record, not reported.
    (static,) = [c for c in session.start() if sent(c)["params"]["market_tickers"] == ["S", "T"]]
    (record,) = records(frame(session, error(static, 16, market_ticker="T")), "subscription")
    assert record["removed"] == ["T"]
    assert session.take_dropped() == []


def test_a_market_dropped_by_16_and_placed_back_before_the_rest_went_out_never_loops() -> None:
    """The planner forgets a market dropped by 16 and the next walk may place it back on
    the same slot before any retry: the rest of the refused subscribe went out at once
    without it, and the market placed back is added once that subscribe is confirmed,
    not resent with the rest (refused again, dropped again, placed again: forever)."""
    session, _ = new_session()
    cmd = session.apply(Change(Subscribe(0, BOOK, 0, ("A", "X", "B")), "discovery"))
    assert cmd is not None
    frame(session, error(cmd, 16, market_ticker="X"))
    assert session.take_dropped() == [(0, ("X",), "error:16")]
    assert not session.retries_waiting()
    (rest,) = [sent(c) for c in session.take_commands()]
    assert (rest["cmd"], rest["params"]["market_tickers"]) == ("subscribe", ["A", "B"])
    # The next walk places X back while that subscribe is in flight.
    assert session.apply(Change(AddMarkets(0, BOOK, 0, ("X",), 1), "reconcile")) is None
    sub_reply(session, rest, 7)
    (again,) = [sent(c) for c in session.take_commands()]
    assert again["params"] == {"sids": [7], "market_tickers": ["X"], "action": "add_markets"}
    # Still unknown: dropped again, nothing left to send until a later walk.
    frame(session, error(as_command(again), 16, market_ticker="X"))
    assert session.take_dropped() == [(0, ("X",), "error:16")]
    assert session.take_commands() == []
    assert not session.retries_waiting()


def test_an_error_naming_no_market_splits_the_command_and_drops_only_the_culprit() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    out = frame(session, error(add(session, "W", "X", "Y", "Z"), 16))
    assert records(out, "subscription") == []  # nothing dropped yet
    assert not session.retries_waiting()  # split at once, not at the retry
    (first,) = [sent(c) for c in session.take_commands()]
    assert first["params"]["market_tickers"] == ["W", "X"]
    frame(session, error(as_command(first), 16))
    (half,) = [sent(c) for c in session.take_commands()]
    assert half["params"]["market_tickers"] == ["W"]
    (added,) = records(frame(session, ok(as_command(half), 7, 1, ["A", "W"])), "subscription")
    assert added["added"] == ["W"]
    (alone,) = [sent(c) for c in session.take_commands()]
    assert alone["params"]["market_tickers"] == ["X"]
    (dropped,) = records(frame(session, error(as_command(alone), 16)), "subscription")
    assert (dropped["removed"], dropped["reason"]) == (["X"], "error:16")
    rest = [sent(c) for c in session.take_commands()]
    assert [c["params"]["market_tickers"] for c in rest] == [["Y"]]
    frame(session, ok(as_command(rest[0]), 7, 2, ["A", "W", "Y"]))
    (last,) = [sent(c) for c in session.take_commands()]
    frame(session, ok(as_command(last), 7, 3, ["A", "W", "Y", "Z"]))
    assert session.take_commands() == []
    assert session.take_dropped() == [(0, ("X",), "error:16")]
    assert session.sid_markets() == {7: (BOOK, 4)}


def test_a_subscribe_refused_naming_no_market_is_split_not_dropped_whole() -> None:
    session, _ = new_session()
    cmd = session.apply(Change(Subscribe(0, BOOK, 0, ("A", "B", "C", "D")), "discovery"))
    assert records(frame(session, error(cmd, 16, market_id="uuid")), "subscription") == []
    (first,) = [sent(c) for c in session.take_commands()]
    assert (first["cmd"], first["params"]["market_tickers"]) == ("subscribe", ["A", "B"])
    sub_reply(session, first, 7)
    (rest,) = [sent(c) for c in session.take_commands()]
    assert (rest["params"]["action"], rest["params"]["market_tickers"]) == (
        "add_markets",
        ["C", "D"],
    )
    assert session.take_dropped() == []


def test_an_error_naming_a_market_not_in_the_command_is_taken_as_naming_none() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    out = frame(session, error(add(session, "X", "Y"), 16, market_ticker="Q"))
    assert records(out, "subscription") == []
    (half,) = [sent(c) for c in session.take_commands()]
    assert half["params"]["market_tickers"] == ["X"]


def test_a_slot_emptied_by_deletes_is_unsubscribed_and_never_subscribed_empty() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    frame(session, error(add(session, "X"), 16))  # X dropped; the planner still has it
    end = delete(session, "A")
    assert (sent(end)["cmd"], sent(end)["params"]) == ("unsubscribe", {"sids": [7]})
    (gone,) = records(frame(session, {"id": end.reply if end else 0, "type": "unsubscribed"}))
    assert (gone["removed"], gone["reason"]) == (["A"], "lifecycle:determined")
    assert session.start() == []  # a reconnect sends no subscribe without markets
    fresh = add(session, "B")
    assert (sent(fresh)["cmd"], sent(fresh)["params"]["market_tickers"]) == ("subscribe", ["B"])


def test_a_gap_repair_of_an_emptied_slot_only_unsubscribes() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    frame(session, error(add(session, "X"), 27))
    assert delete(session, "X", "A") is None  # the slot waits for its retry, wanting nothing
    frame(session, {"type": "error", "msg": {"code": 25}})  # names no sid: unsubscribe first
    (unsubscribe,) = [sent(c) for c in session.take_commands()]
    frame(session, {"id": unsubscribe["id"], "type": "unsubscribed"})
    assert session.take_commands() == []  # no subscribe without markets
    assert all(sent(c)["cmd"] != "subscribe" for c in session.take_retries())


def test_an_unclassified_refusal_splits_then_drops_the_market_refused_alone() -> None:
    """Error 9 (or any code without a remedy) on an add: retried, then split; a market
    refused alone is dropped with a record and handed to the planner, so later adds on
    its slot are not blocked forever."""
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    frame(session, error(add(session, "P"), 5))
    assert add(session, "Q") is None  # deferred behind the waiting slot
    (retry,) = retries(session)
    assert retry["params"]["market_tickers"] == ["P", "Q"]
    frame(session, error(as_command(retry), 5))
    (retry,) = retries(session)
    out = frame(session, error(as_command(retry), 5))  # the third: split
    assert records(out, "subscription") == []
    (half,) = [sent(c) for c in session.take_commands()]
    assert half["params"]["market_tickers"] == ["P"]
    for _ in range(2):
        frame(session, error(as_command(half), 5))
        (half,) = retries(session)
    (dropped,) = records(frame(session, error(as_command(half), 5)), "subscription")
    assert (dropped["removed"], dropped["reason"]) == (["P"], "error:5")
    assert session.take_dropped() == [(0, ("P",), "error:5")]
    (q,) = [sent(c) for c in session.take_commands()]
    assert q["params"]["market_tickers"] == ["Q"]


def test_a_client_bug_code_splits_at_once() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    frame(session, error(add(session, "P", "Q"), 9))
    (half,) = [sent(c) for c in session.take_commands()]
    assert half["params"]["market_tickers"] == ["P"]
    frame(session, error(as_command(half), 9))
    assert session.take_dropped() == [(0, ("P",), "error:9")]


def test_an_ok_that_leaves_out_a_market_is_retried_then_dropped() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    cmd = add(session, "X", "Y")
    (record,) = records(frame(session, ok(cmd, 7, 1, ["A", "X"])), "subscription")
    assert record["added"] == ["X"]  # the confirmed difference, not the request
    assert session.sid_markets() == {7: (BOOK, 2)}
    for _ in range(2):
        (retry,) = retries(session)
        assert retry["params"]["market_tickers"] == ["Y"]
        out = frame(session, ok(as_command(retry), 7, 2, ["A", "X"]))
    (dropped,) = records(out, "subscription")
    assert (dropped["removed"], dropped["reason"]) == (["Y"], "omitted")
    assert not session.retries_waiting()


def test_a_16_on_a_delete_takes_the_market_out_of_the_confirmed_set() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A", "B"), 7)
    frame(session, error(delete(session, "A"), 16, market_ticker="A"))
    assert session.sid_markets() == {7: (BOOK, 1)}
    assert retries(session) == []  # nothing left to delete


def test_an_add_to_a_static_plan_emptied_by_16_is_not_an_all_markets_subscribe() -> None:
    session, _ = new_session([SubscriptionPlan("trade", ("A",))])
    (cmd,) = session.start()
    frame(session, error(cmd, 16))
    assert not session.retries_waiting()
    assert session.start() == []
    assert session.apply(Change(AddMarkets(0, "trade", 5, ("B",)), "discovery")) is None
    assert session.apply(Change(DeleteMarkets(0, "trade", 5, ("B",)), "discovery")) is None
