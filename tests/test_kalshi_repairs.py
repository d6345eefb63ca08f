"""Kalshi sid repairs and positions, without sockets: a reconnect records what it changes,
a sid is subscribed again only once the old one has ended, an `ok` reply's seq is a
position (a jump is a gap, a step back is none), and a reused sid number starts afresh."""

from __future__ import annotations

from ssmd.connector.layout import Unsubscribe
from ssmd.feeds.base import Change
from tests.kalshi_session import (
    BOOK,
    add,
    delete,
    delta,
    error,
    frame,
    new_session,
    ok,
    records,
    retries,
    sent,
    subscribed,
)

# M1: a reconnect changes coverage only with a record.


def test_a_reconnect_records_the_market_it_adds() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    (refused,) = records(frame(session, error(add(session, "X"), 27)), "subscribe_error")
    assert refused["markets"] == ["X"]
    (again,) = session.start()
    assert sent(again)["params"]["market_tickers"] == ["A", "X"]
    out = frame(session, {"id": again.reply, "type": "subscribed", "msg": {"sid": 9}})
    (record,) = records(out, "subscription")
    assert (record["sid"], record["added"], record["removed"], record["reason"]) == (
        9,
        ["X"],
        [],
        "reconnect",
    )


def test_a_reconnect_records_the_market_it_drops() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A", "B"), 7)
    frame(session, error(delete(session, "A"), 27))
    (again,) = session.start()
    assert sent(again)["params"]["market_tickers"] == ["B"]
    out = frame(session, {"id": again.reply, "type": "subscribed", "msg": {"sid": 9}})
    (record,) = records(out, "subscription")
    assert (record["added"], record["removed"], record["reason"]) == ([], ["A"], "reconnect")


def test_a_reconnect_that_changes_nothing_records_nothing() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    (again,) = session.start()
    out = frame(session, {"id": again.reply, "type": "subscribed", "msg": {"sid": 9}})
    assert records(out, "subscription") == []


# M2 and M3: never a second sid beside one that may still stream.


def test_an_unsubscribe_answered_17_is_retried_not_taken_as_done() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    cmd = session.apply(Change(Unsubscribe(0, BOOK, 0), "reconcile"))
    assert records(frame(session, error(cmd, 17))) == []
    assert session.sid_markets() == {7: (BOOK, 1)}
    (retry,) = retries(session)
    assert (retry["cmd"], retry["params"]) == ("unsubscribe", {"sids": [7]})
    (gone,) = records(frame(session, {"id": retry["id"], "type": "error", "msg": {"code": 7}}))
    assert (gone["removed"], gone["reason"]) == (["A"], "error:7")


def test_an_unsubscribe_answered_17_again_and_again_is_taken_as_the_end() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    cmd = session.apply(Change(Unsubscribe(0, BOOK, 0), "reconcile"))
    body = error(cmd, 17)
    for _ in range(2):
        frame(session, body)
        (retry,) = retries(session)
        body = {"id": retry["id"], "type": "error", "msg": {"code": 17}}
    (gone,) = records(frame(session, body))
    assert (gone["removed"], gone["reason"]) == (["A"], "error:17")
    assert not session.retries_waiting()


def test_a_repair_whose_unsubscribe_is_refused_does_not_subscribe_beside_it() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    frame(session, delta(7, 1))
    frame(session, delta(7, 5))  # a gap: the sid is repaired
    (unsubscribe,) = [sent(c) for c in session.take_commands()]
    assert unsubscribe["params"] == {"sids": [7]}
    frame(session, {"id": unsubscribe["id"], "type": "error", "msg": {"code": 27}})
    assert session.take_commands() == []  # no second sid while the first runs
    assert add(session, "X") is None  # nor a fresh subscribe for a change meanwhile
    (retry,) = retries(session)
    assert retry["cmd"] == "unsubscribe"
    frame(session, {"id": retry["id"], "type": "unsubscribed", "sid": 7})
    (resubscribe,) = [sent(c) for c in session.take_commands()]
    assert (resubscribe["cmd"], resubscribe["params"]["market_tickers"]) == (
        "subscribe",
        ["A", "X"],
    )
    out = frame(session, {"id": resubscribe["id"], "type": "subscribed", "msg": {"sid": 8}})
    (record,) = records(out, "resubscribe")
    assert (record["old_sid"], record["new_sid"]) == (7, 8)


def test_an_unnamed_25_while_a_repair_waits_for_its_unsubscribe_adds_no_second_gap() -> None:
    session, stats = new_session()
    subscribed(session, 0, ("A",), 7)
    frame(session, {"type": "error", "msg": {"code": 25}})
    (unsubscribe,) = [sent(c) for c in session.take_commands()]
    assert records(frame(session, {"type": "error", "msg": {"code": 25}}), "gap") == []
    assert records(frame(session, {"type": "error", "sid": 7, "msg": {"code": 25}})) == []
    assert session.take_commands() == []
    frame(session, {"id": unsubscribe["id"], "type": "unsubscribed", "sid": 7})
    (resubscribe,) = [sent(c) for c in session.take_commands()]
    assert resubscribe["cmd"] == "subscribe"
    assert stats.gaps == 1
    assert session._replacing == set()


# M4: an `ok` reply's seq is the sid's position.


def test_an_ok_seq_past_the_position_is_a_gap_and_repairs_the_sid() -> None:
    session, stats = new_session()
    subscribed(session, 0, ("A",), 7)
    for seq in (1, 2, 3):
        frame(session, delta(7, seq))
    out = frame(session, ok(add(session, "X"), 7, 6, ["A", "X"]))  # 4 and 5 never came
    (gap,) = records(out, "gap")
    assert (gap["sid"], gap["expected"], gap["got"]) == (7, 4, 6)
    assert stats.gaps == 1
    (unsubscribe,) = [sent(c) for c in session.take_commands()]
    assert unsubscribe["cmd"] == "unsubscribe"
    assert records(frame(session, delta(7, 7))) == []  # counted on from the ok


def test_an_ok_seq_of_the_last_message_or_the_next_is_no_gap() -> None:
    for position in (3, 4):  # a position report, or the ok took a number of its own
        session, stats = new_session()
        subscribed(session, 0, ("A",), 7)
        for seq in (1, 2, 3):
            frame(session, delta(7, seq))
        assert records(frame(session, ok(add(session, "X"), 7, position)), "gap") == []
        assert records(frame(session, delta(7, position + 1))) == []
        assert stats.gaps == 0


def test_an_ok_seq_behind_what_was_seen_does_not_move_the_sid_back() -> None:
    session, stats = new_session()
    subscribed(session, 0, ("A",), 7)
    for seq in (1, 2, 3, 4, 5):
        frame(session, delta(7, seq))
    assert records(frame(session, ok(add(session, "X"), 7, 2)), "gap") == []
    assert records(frame(session, delta(7, 6))) == []  # not a gap "expected 3"
    assert stats.gaps == 0


# L1 and L2: a sid number used again starts afresh; nothing kept for an ended sid.


def test_a_reused_sid_number_starts_a_fresh_count() -> None:
    session, stats = new_session()
    subscribed(session, 0, ("A",), 7)
    frame(session, delta(7, 1))
    frame(session, delta(7, 2))
    cmd = session.apply(Change(Unsubscribe(0, BOOK, 0), "reconcile"))
    frame(session, {"id": sent(cmd)["id"], "type": "unsubscribed", "sid": 7})
    frame(session, delta(7, 3))  # a late frame of the old sid
    subscribed(session, 1, ("B",), 7)  # the exchange gives the number out again
    assert records(frame(session, delta(7, 1, "B"))) == []
    assert stats.gaps == 0


def test_a_25_on_a_sid_being_unsubscribed_leaves_nothing_behind() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    cmd = session.apply(Change(Unsubscribe(0, BOOK, 0), "reconcile"))
    frame(session, error(cmd, 27))
    frame(session, {"type": "error", "sid": 7, "msg": {"code": 25}})
    assert session.take_commands() == []
    assert session._dropped == set()
