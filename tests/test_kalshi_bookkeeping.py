"""Kalshi live subscription bookkeeping under every reply, without sockets: retries send
what is wanted then (never a stale command), markets the exchange does not know leave
the wanted set, refused removals are not recorded as done, the seq check survives odd
snapshots, repeated error 25s repair once, and the session's memory stays bounded."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing

from ssmd.connector.layout import AddMarkets, Subscribe, Unsubscribe
from ssmd.connector.publisher import Inbound
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds.base import Change, Command
from ssmd.feeds.kalshi.replies import RETIRED_SIDS
from tests.kalshi_session import (
    BOOK,
    add,
    as_command,
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
from tests.test_connector_connection import FakeExchange, FakeSocket, Harness, running

# Finding 1: a retry is the difference between wanted and confirmed, never a replay.


def test_a_market_removed_while_its_add_waits_for_the_retry_is_not_added() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    first = add(session, "X")
    assert sent(first)["params"]["market_tickers"] == ["X"]
    out = frame(session, error(first, 27))
    assert [r["markets"] for r in records(out, "subscribe_error")] == [["X"]]
    # While the add waits, X is settled and Y created: nothing goes out before the retry.
    assert delete(session, "X") is None
    assert add(session, "Y") is None
    (retry,) = retries(session)
    assert retry["params"] == {"sids": [7], "market_tickers": ["Y"], "action": "add_markets"}
    assert not session.retries_waiting()


def test_a_retry_deletes_before_it_adds_and_records_with_reason_retry() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A", "B"), 7)
    refused = delete(session, "A")
    frame(session, error(refused, 27))
    assert add(session, "C") is None  # the slot waits for its retry
    deletion, addition = session.take_retries()
    assert (sent(deletion)["params"]["action"], sent(deletion)["params"]["market_tickers"]) == (
        "delete_markets",
        ["A"],
    )
    assert sent(addition)["params"]["market_tickers"] == ["C"]
    (removed,) = records(frame(session, ok(deletion, 7, 3, ["B"])))
    (added,) = records(frame(session, ok(addition, 7, 4, ["B", "C"])))
    assert (removed["removed"], removed["reason"]) == (["A"], "retry")
    assert (added["added"], added["reason"]) == (["C"], "retry")
    assert session.sid_markets() == {7: (BOOK, 2)}


def test_a_change_the_exchange_already_has_sends_nothing() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    assert add(session, "A") is None
    assert delete(session, "Z") is None


def test_a_reconnect_after_a_timeout_subscribes_what_is_wanted_then() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    frame(session, error(add(session, "X"), 27))
    assert delete(session, "X") is None
    (again,) = session.start()  # the connection was lost (a command timed out)
    assert sent(again)["params"]["market_tickers"] == ["A"]
    assert not session.retries_waiting()


def test_unknown_markets_leave_the_wanted_set_with_a_record() -> None:
    """Errors 14/16: the market is dropped (a `subscription` record says so), the rest of
    the command goes out at once, and the unknown one is never sent again."""
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    cmd = add(session, "X", "Y")
    out = frame(session, error(cmd, 16, market_ticker="X"))
    (dropped,) = records(out, "subscription")
    assert (dropped["removed"], dropped["added"], dropped["reason"]) == (["X"], [], "error:16")
    assert not session.retries_waiting()  # not left to the retry's backoff
    (retry,) = [sent(c) for c in session.take_commands()]
    assert retry["params"]["market_tickers"] == ["Y"]
    frame(session, ok(as_command(retry), 7, 2, ["A", "Y"]))
    # Naming no market: every market of the command is dropped, and nothing waits.
    cmd = add(session, "Q")
    (dropped,) = records(frame(session, error(cmd, 14)), "subscription")
    assert (dropped["removed"], dropped["reason"]) == (["Q"], "error:14")
    assert not session.retries_waiting()
    (again,) = session.start()
    assert sent(again)["params"]["market_tickers"] == ["A", "Y"]


def test_a_subscribe_refused_for_an_unknown_market_is_retried_without_it() -> None:
    session, _ = new_session()
    cmd = session.apply(Change(Subscribe(0, BOOK, 0, ("A", "X")), "discovery"))
    (dropped,) = records(frame(session, error(cmd, 16, market_ticker="X")), "subscription")
    assert (dropped["removed"], dropped["reason"]) == (["X"], "error:16")
    assert not session.retries_waiting()  # the rest is subscribed now, not at the retry
    (retry,) = [sent(c) for c in session.take_commands()]
    assert (retry["cmd"], retry["params"]["market_tickers"]) == ("subscribe", ["A"])
    frame(session, {"id": retry["id"], "type": "subscribed", "msg": {"channel": BOOK, "sid": 3}})
    session.apply(Change(Unsubscribe(0, BOOK, 0), "reconcile"))
    # A subscribe whose every market is unknown leaves nothing to retry; the next add
    # subscribes afresh.
    cmd = session.apply(Change(Subscribe(0, BOOK, 1, ("Z",)), "discovery"))
    frame(session, error(cmd, 16))
    assert not session.retries_waiting()
    fresh = session.apply(Change(AddMarkets(0, BOOK, 1, ("W",)), "lifecycle:created"))
    assert (sent(fresh)["cmd"], sent(fresh)["params"]["market_tickers"]) == ("subscribe", ["W"])


# Finding 2: a refused removal is not recorded as done.


def test_a_refused_unsubscribe_keeps_the_sid_and_is_retried() -> None:
    session, stats = new_session()
    subscribed(session, 0, ("A", "B"), 7)
    cmd = session.apply(Change(Unsubscribe(0, BOOK, 0), "reconcile"))
    assert sent(cmd)["params"] == {"sids": [7]}
    assert records(frame(session, error(cmd, 27))) == []  # nothing ended
    assert session.sid_markets() == {7: (BOOK, 2)}
    assert [r["type"] for r in records(frame(session, delta(7, 1)))] == []
    (retry,) = retries(session)
    assert (retry["cmd"], retry["params"]) == ("unsubscribe", {"sids": [7]})
    (gone,) = records(frame(session, {"id": retry["id"], "type": "unsubscribed", "sid": 7}))
    assert (gone["removed"], gone["reason"]) == (["A", "B"], "retry")
    assert session.sid_markets() == {}
    assert stats.changes == {"ok": 2, "error:27": 1}


def test_an_unsubscribe_of_a_sid_the_exchange_does_not_know_records_the_end() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    cmd = session.apply(Change(Unsubscribe(0, BOOK, 0), "reconcile"))
    (gone,) = records(frame(session, error(cmd, 7)))
    assert (gone["removed"], gone["reason"]) == (["A"], "error:7")
    assert not session.retries_waiting()


def test_a_refused_delete_is_not_recorded_until_it_is_done() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A", "B"), 7)
    cmd = delete(session, "A")
    assert records(frame(session, error(cmd, 27))) == []
    assert session.sid_markets() == {7: (BOOK, 2)}
    (retry,) = retries(session)
    (removed,) = records(frame(session, ok(as_command(retry), 7, 2)))
    assert (removed["removed"], removed["reason"]) == (["A"], "retry")


# Finding 4: every error-25 gap goes through the one gap count.


def test_an_error_25_gap_is_counted_by_its_reason() -> None:
    session, stats = new_session()
    subscribed(session, 0, ("A",), 7)
    frame(session, {"type": "error", "sid": 7, "msg": {"code": 25, "msg": "overflow"}})
    assert (stats.gaps, stats.gap_reasons) == (1, {"error:25": 1})


# Finding 5: a mid-sequence snapshot numbered 1 (malformed or not) is no false gap.


def test_a_malformed_snapshot_numbered_1_is_kept_and_makes_no_false_gap() -> None:
    session, stats = new_session()
    subscribed(session, 0, ("A", "B"), 7)
    out: list[Inbound] = []
    for seq in range(1, 6):
        out += frame(session, delta(7, seq))
    # A snapshot without a usable market ticker, numbered 1 in the middle of the sid.
    out += frame(session, delta(7, 1, market=5, kind="orderbook_snapshot"))
    for seq in (6, 7):
        out += frame(session, delta(7, seq))
    assert records(out, "gap") == []
    assert stats.unrouted == 1 and stats.messages == 8
    assert any(".unrouted.orderbook_snapshot" in m.subject for m in out)  # kept
    # A real jump afterwards is still a gap.
    assert [r["expected"] for r in records(frame(session, delta(7, 9)), "gap")] == [8]


def test_snapshots_numbered_from_1_per_market_still_count_on_from_2() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A", "B"), 7)
    out = frame(session, delta(7, 1, kind="orderbook_snapshot"))
    for seq in range(2, 5):
        out += frame(session, delta(7, seq))
    out += frame(session, delta(7, 1, "B", kind="orderbook_snapshot"))
    out += frame(session, delta(7, 2, "B"))
    assert records(out, "gap") == []


# Finding 6: nothing grows with the number of commands on a long run.


def test_the_session_keeps_no_state_per_answered_command() -> None:
    session, _ = new_session()
    subscribed(session, 0, ("A",), 7)
    seq = 0
    for n in range(3000):
        for change in (add, delete):
            cmd = change(session, f"M{n}")
            assert cmd is not None
            seq += 1
            frame(session, ok(cmd, 7, seq))
            assert session.replied(cmd.reply)
        subscribed(session, 1, (f"S{n}",), 100 + n)
        cmd = session.apply(Change(Unsubscribe(0, BOOK, 1), "reconcile"))
        frame(session, {"id": sent(cmd)["id"], "type": "unsubscribed", "sid": 100 + n})
    sizes = {
        name: len(value)
        for name, value in vars(session).items()
        if isinstance(value, dict | set | list | tuple)
    }
    # The sids let go are remembered up to a bound (RETIRED_SIDS); nothing else grows.
    assert sizes.pop("_retired") == RETIRED_SIDS
    assert max(sizes.values()) <= 4, sizes


# Finding 7: a second error 25 during the first repair repairs nothing twice.


def test_a_second_unnamed_25_during_the_repair_repairs_each_subscription_once() -> None:
    session, stats = new_session()
    subscribed(session, 0, ("A", "B"), 3)
    cmd = session.apply(Change(Subscribe(0, "trade", 1, ("C",)), "discovery"))
    frame(session, {"id": sent(cmd)["id"], "type": "subscribed", "msg": {"sid": 4}})
    unnamed = {"type": "error", "msg": {"code": 25, "msg": "overflow"}}
    gaps = records(frame(session, unnamed), "gap")
    assert sorted(g["sid"] for g in gaps) == [3, 4]
    sent_commands: list[dict[str, Any]] = []

    def answer(command: Command, body: dict[str, Any]) -> list[Inbound]:
        sent_commands.append(sent(command))
        return frame(session, {"id": command.reply, **body})

    (unsubscribe,) = session.take_commands()
    answer(unsubscribe, {"type": "error", "msg": {"code": 7, "msg": "not found"}})
    (resubscribe,) = session.take_commands()
    # While the resubscribe is in flight, the exchange sends another unnamed 25 and
    # one naming the sid being replaced.
    assert records(frame(session, unnamed), "gap") == []
    assert records(frame(session, {**unnamed, "sid": 3}), "gap") == []
    answer(resubscribe, {"type": "subscribed", "msg": {"sid": 5}})
    while commands := session.take_commands():
        (command,) = commands
        if sent(command)["cmd"] == "unsubscribe":
            answer(command, {"type": "unsubscribed", "sid": 4})
        else:
            answer(command, {"type": "subscribed", "msg": {"sid": 6}})
    # The exchange names the old sid once more after the repair: nothing to do.
    assert records(frame(session, {**unnamed, "sid": 3})) == []
    assert session.take_commands() == []
    subscribes = [c["params"]["market_tickers"] for c in sent_commands if c["cmd"] == "subscribe"]
    assert sorted(subscribes) == [["A", "B"], ["C"]]
    assert stats.gaps == 2
    assert session.sid_markets() == {5: (BOOK, 2), 6: ("trade", 1)}


# Finding 8: a refused subscribe that succeeds on retry says when capture began.


def test_a_retried_subscribe_records_when_capture_began() -> None:
    session, _ = new_session([SubscriptionPlan("trade", ("A",))])
    (cmd,) = session.start()
    out = frame(session, error(cmd, 27))
    assert [r["type"] for r in records(out)] == ["ssmd_subscribe_error"]
    (retry,) = retries(session)
    out = frame(session, {"id": retry["id"], "type": "subscribed", "msg": {"sid": 9}})
    (began,) = records(out)
    assert (began["type"], began["sid"], began["added"], began["reason"]) == (
        "ssmd_subscription",
        9,
        ["A"],
        "retry",
    )


# Finding 3: the engine reports a refusal raised by a repair's command at once.


async def test_a_repair_refused_as_too_large_reaches_the_planner_without_another_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class LimitedSocket(FakeSocket):
        """Refuses every subscribe after the first as over the market limit (26)."""

        async def send_message(self, message: str | bytes) -> None:
            command = json.loads(message)
            subscribes = [c for c in self.commands if c["cmd"] == "subscribe"]
            if command["cmd"] == "subscribe" and subscribes:
                self.commands.append(command)
                self.push(json.dumps(error(Command("", command["id"]), 26)))
                return
            await super().send_message(message)

    exchange = FakeExchange()
    exchange.socket_class = LimitedSocket
    harness = Harness(exchange, [])
    heard: list[tuple[int, int, tuple[str, ...], bool, int]] = []
    harness.connection.on_refused = lambda *refusal: heard.append(refusal)
    async with running(harness):
        await trio.sleep(1)
        harness.connection.change([Change(Subscribe(0, BOOK, 0, ("A", "B")), "discovery")])
        await trio.sleep(1)
        socket = exchange.sockets[0]
        socket.push_data(BOOK, 1, 1, {"market_ticker": "A"})
        socket.push_data(BOOK, 1, 5, {"market_ticker": "A"})  # a gap: unsubscribe, subscribe
        await trio.sleep(1)
        assert [c["cmd"] for c in socket.commands] == ["subscribe", "unsubscribe", "subscribe"]
        assert heard == [(0, 0, ("A", "B"), True, 0)]


def test_an_update_refused_because_the_sid_is_dead_repairs_it_not_retries() -> None:
    """Error 7 on a change: the exchange has no subscription any more, so its data since
    is lost: a gap record, then a subscribe of what is wanted (the refused add included),
    no unsubscribe of a sid that is gone, no retry."""
    session, stats = new_session()
    subscribed(session, 0, ("A",), 7)
    out = frame(session, error(add(session, "X"), 7))
    (gap,) = records(out, "gap")
    assert (gap["sid"], gap["markets"], gap["reason"]) == (7, ["A"], "error:7")
    assert stats.gap_reasons == {"error:7": 1}
    assert not session.retries_waiting()
    (again,) = [sent(c) for c in session.take_commands()]
    assert (again["cmd"], again["params"]["market_tickers"]) == ("subscribe", ["A", "X"])


def test_an_update_answered_10_or_17_unsubscribes_the_sid_before_subscribing_again() -> None:
    """10/17 say the sid is dead, but only 7 proves it: a sid still streaming would run
    beside its replacement, every delta twice. So: gap record, unsubscribe, and the
    subscribe only once the exchange confirms the old sid ended."""
    for code in (10, 17):
        session, _ = new_session()
        subscribed(session, 0, ("A",), 7)
        (gap,) = records(frame(session, error(add(session, "X"), code)), "gap")
        assert (gap["sid"], gap["reason"]) == (7, f"error:{code}")
        (unsubscribe,) = [sent(c) for c in session.take_commands()]
        assert (unsubscribe["cmd"], unsubscribe["params"]) == ("unsubscribe", {"sids": [7]})
        assert session.take_commands() == []
        frame(session, {"id": unsubscribe["id"], "type": "unsubscribed", "sid": 7})
        (again,) = [sent(c) for c in session.take_commands()]
        assert (again["cmd"], again["params"]["market_tickers"]) == ("subscribe", ["A", "X"])
