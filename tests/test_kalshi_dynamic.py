"""The Kalshi session's live subscription changes, without sockets: commands, replies,
records, and the seq re-base that keeps an add or a delete from looking like a gap."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ssmd.config import ConfigError, ConnectorConfig, parse_config
from ssmd.connector.layout import (
    Action,
    AddMarkets,
    DeleteMarkets,
    Subscribe,
    SubscriptionLayout,
    Unsubscribe,
)
from ssmd.connector.publisher import Inbound
from ssmd.feeds.base import Change, ConnectionStats, DynamicSession, SessionContext, Subjects
from ssmd.feeds.kalshi.session import KalshiSession


def new_session() -> tuple[KalshiSession, ConnectionStats]:
    stats = ConnectionStats()
    context = SessionContext(0, Subjects("prod", "kalshi"), stats, ConnectorConfig())
    session = KalshiSession(context, [])
    assert session.start() == []
    return session, stats


def frame(session: KalshiSession, body: dict[str, Any]) -> list[Inbound]:
    out: list[Inbound] = []
    session.on_frame(json.dumps(body).encode(), 1, out)
    return out


def kinds(out: list[Inbound]) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in out if ".ssmd." in m.subject]


def delta(sid: int, seq: int, market: str = "A") -> dict[str, Any]:
    return {"type": "orderbook_delta", "sid": sid, "seq": seq, "msg": {"market_ticker": market}}


def test_add_and_delete_rebase_the_sid_and_record_the_change() -> None:
    session, stats = new_session()
    assert isinstance(session, DynamicSession)
    cmd = session.apply(Change(Subscribe(0, "orderbook_delta", 0, ("A", "B")), "discovery"))
    assert cmd is not None and json.loads(cmd.text)["cmd"] == "subscribe"
    (record,) = kinds(frame(session, {"id": cmd.reply, "type": "subscribed", "msg": {"sid": 7}}))
    assert record["type"] == "ssmd_subscription"
    assert (record["sid"], record["added"], record["reason"]) == (7, ["A", "B"], "discovery")
    assert kinds(frame(session, delta(7, 1))) == []

    add = session.apply(Change(AddMarkets(0, "orderbook_delta", 0, ("C",)), "lifecycle:created"))
    assert add is not None
    params = json.loads(add.text)["params"]
    assert params == {"sids": [7], "market_tickers": ["C"], "action": "add_markets"}
    # The exchange's snapshot of C and its `ok` each took a seq: 2 and 3.
    assert kinds(frame(session, {**delta(7, 2, "C"), "type": "orderbook_snapshot"})) == []
    (added,) = kinds(frame(session, {"id": add.reply, "type": "ok", "sid": 7, "seq": 3}))
    assert (added["added"], added["reason"]) == (["C"], "lifecycle:created")
    assert kinds(frame(session, delta(7, 4))) == []  # no false gap

    delete = session.apply(Change(DeleteMarkets(0, "orderbook_delta", 0, ("A",)), "reconcile"))
    assert delete is not None
    assert json.loads(delete.text)["params"]["action"] == "delete_markets"
    (removed,) = kinds(frame(session, {"id": delete.reply, "type": "ok", "sid": 7, "seq": 5}))
    assert (removed["removed"], removed["reason"]) == (["A"], "reconcile")
    assert session.sid_markets() == {7: ("orderbook_delta", 2)}
    assert stats.changes["ok"] == 3 and stats.gaps == 0
    # A real jump is still a gap.
    assert [r["type"] for r in kinds(frame(session, delta(7, 9)))] == ["ssmd_gap"]

    last = session.apply(Change(Unsubscribe(0, "orderbook_delta", 0), "reconcile"))
    assert last is not None and json.loads(last.text)["params"] == {"sids": [7]}
    (gone,) = kinds(frame(session, {"id": last.reply, "type": "unsubscribed", "sid": 7}))
    assert gone["removed"] == ["B", "C"]
    # A reconnect subscribes what is wanted now: nothing.
    assert session.start() == []


def test_refusals_26_and_27_and_a_drop_25() -> None:
    session, stats = new_session()
    cmd = session.apply(Change(Subscribe(0, "orderbook_delta", 0, ("A",)), "discovery"))
    assert cmd is not None
    frame(session, {"id": cmd.reply, "type": "subscribed", "msg": {"sid": 3}})
    add = session.apply(Change(AddMarkets(0, "orderbook_delta", 0, ("B", "C")), "discovery"))
    assert add is not None
    error = {"id": add.reply, "type": "error", "msg": {"code": 26, "msg": "limit"}}
    assert [r["type"] for r in kinds(frame(session, error))] == ["ssmd_subscribe_error"]
    assert session.take_refused() == [(0, ("B", "C"), False, 0)]
    assert session.take_refused() == []
    # A reconnect does not subscribe what was refused: the planner placed it elsewhere.
    (again,) = session.start()
    assert json.loads(again.text)["params"]["market_tickers"] == ["A"]
    frame(session, {"id": again.reply, "type": "subscribed", "msg": {"sid": 4}})

    add = session.apply(Change(AddMarkets(0, "orderbook_delta", 0, ("D",)), "discovery"))
    assert add is not None
    frame(session, {"id": add.reply, "type": "error", "msg": {"code": 27, "msg": "slow down"}})
    assert session.retries_waiting()
    (retry,) = session.take_retries()
    assert json.loads(retry.text)["params"]["market_tickers"] == ["D"]
    frame(session, {"id": retry.reply, "type": "ok", "sid": 4, "seq": 0})
    assert stats.changes == {"ok": 2, "error:26": 1, "error:27": 1}

    dropped = frame(session, {"type": "error", "sid": 4, "msg": {"code": 25, "msg": "overflow"}})
    (gap,) = kinds(dropped)
    assert (gap["type"], gap["reason"], sorted(gap["markets"])) == (
        "ssmd_gap",
        "error:25",
        ["A", "D"],
    )
    (resubscribe,) = session.take_commands()  # no unsubscribe of a sid the exchange ended
    assert json.loads(resubscribe.text)["params"]["market_tickers"] == ["A", "D"]


def test_discovery_config_errors_name_the_key() -> None:
    base = {"env": "t", "nats": {"url": "nats://x"}}
    config = parse_config({**base, "connector": {"discovery": {"series": ["KXBTCD"]}}})
    assert config.connector is not None and config.connector.discovery is not None
    assert config.connector.discovery.refresh.seconds == 300
    with pytest.raises(ConfigError, match=r"connector\.discovery\.refresh"):
        parse_config({**base, "connector": {"discovery": {"refresh": "soon"}}})
    with pytest.raises(ConfigError, match=r"connector\.discovery\.serie"):
        parse_config({**base, "connector": {"discovery": {"serie": []}}})
    with pytest.raises(ConfigError, match=r"connector\[0\]\.discovery.*kalshi"):
        parse_config(
            {**base, "connector": [{"feed": "kraken", "markets": ["BTC/USD"], "discovery": {}}]}
        )


@pytest.mark.parametrize("add_first", [False, True], ids=["add-after-refusal", "add-before"])
def test_a_refused_subscribe_strands_none_of_the_markets_queued_behind_it(
    add_first: bool,
) -> None:
    """The planner queues an add to a slot whose subscribe the exchange then refuses (26):
    every market on the slot is placed again, and the limit is learned from the refused
    subscribe's own size, not from the count queued behind it."""
    session, _ = new_session()
    layout = SubscriptionLayout(["orderbook_delta"], per_subscription=256, per_connection=10_000)
    first = [f"M{i:03d}" for i in range(232)]
    later = [f"N{i:02d}" for i in range(24)]
    (subscribe,) = [a for a in layout.add(first) if isinstance(a, Subscribe)]
    (add,) = layout.add(later)
    assert isinstance(add, AddMarkets) and add.slot == subscribe.slot
    cmd = session.apply(Change(subscribe, "discovery"))
    assert cmd is not None
    if add_first:
        assert session.apply(Change(add, "discovery")) is None  # waits for the subscribe
    refusal = {"id": cmd.reply, "type": "error", "msg": {"code": 26, "msg": "limit"}}
    frame(session, refusal)
    if not add_first:
        assert session.apply(Change(add, "discovery")) is None
    actions: list[Action] = []
    for slot, markets, dropped, op in session.take_refused():
        actions += layout.refused_as_too_large(slot, markets, dropped=dropped, op=op)
    assert layout.per_subscription == 116  # half the refused subscribe's 232
    subscribed: list[str] = []
    for action in actions:
        assert isinstance(action, Subscribe) and len(action.markets) <= 116
        assert session.apply(Change(action, "error:26")) is not None
        subscribed += action.markets
    assert sorted(subscribed) == sorted(first + later)


@pytest.mark.parametrize("named", ["no-sid", "unknown-sid", "pending-id"])
def test_a_drop_25_naming_no_held_sid_gaps_and_resubscribes_every_subscription(
    named: str,
) -> None:
    """Error 25 is unsolicited and may name no sid (or carry a pending command's id):
    every subscription on the connection gets a gap record and is subscribed again, and
    the pending command still waits for its own answer."""
    session, stats = new_session()
    sids = {"orderbook_delta": 3, "trade": 4}
    for slot, (channel, markets) in enumerate(
        {"orderbook_delta": ("A", "B"), "trade": ("C",)}.items()
    ):
        cmd = session.apply(Change(Subscribe(0, channel, slot, markets), "discovery"))
        assert cmd is not None
        frame(session, {"id": cmd.reply, "type": "subscribed", "msg": {"sid": sids[channel]}})
    add = session.apply(Change(AddMarkets(0, "orderbook_delta", 0, ("D",)), "discovery"))
    assert add is not None
    error: dict[str, Any] = {"type": "error", "msg": {"code": 25, "msg": "overflow"}}
    if named == "unknown-sid":
        error["sid"] = 99
    elif named == "pending-id":
        error["id"] = add.reply
    gaps = kinds(frame(session, error))
    assert sorted((g["type"], g["reason"], g["sid"], sorted(g["markets"])) for g in gaps) == [
        ("ssmd_gap", "error:25", 3, ["A", "B"]),
        ("ssmd_gap", "error:25", 4, ["C"]),
    ]
    assert stats.gaps == 2
    again = []
    while commands := session.take_commands():  # one repair at a time
        again += [json.loads(c.text) for c in commands]
        for command in commands:
            body = json.loads(command.text)
            if body["cmd"] == "unsubscribe":
                frame(session, {"id": command.reply, "type": "unsubscribed"})
    # Which one ended is unknown: each is unsubscribed (so none still running is doubled),
    # then its wanted set (the add waiting for its answer included) subscribed again.
    assert sorted(c["params"]["sids"] for c in again if c["cmd"] == "unsubscribe") == [[3], [4]]
    assert sorted(
        (c["params"]["channels"], c["params"]["market_tickers"])
        for c in again
        if c["cmd"] == "subscribe"
    ) == [(["orderbook_delta"], ["A", "B", "D"]), (["trade"], ["C"])]
    # The add is still pending: its own answer is an answer.
    frame(session, {"id": add.reply, "type": "ok", "sid": 3, "seq": 0})
    assert stats.changes == {"ok": 3}  # the two subscribes and the add


def test_a_late_26_names_the_op_of_its_add_and_spares_a_market_added_back() -> None:
    """Review of issue 9's walk, M1: B's add is refused late, after B was deleted and
    added back by a later op; the refusal moves nothing, the later add's refusal does."""
    session, _ = new_session()
    cmd = session.apply(Change(Subscribe(0, "orderbook_delta", 0, ("A",), op=1), "discovery"))
    assert cmd is not None
    frame(session, {"id": cmd.reply, "type": "subscribed", "msg": {"sid": 3}})
    first = session.apply(Change(AddMarkets(0, "orderbook_delta", 0, ("B",), op=2), "x"))
    assert first is not None
    assert session.apply(Change(DeleteMarkets(0, "orderbook_delta", 0, ("B",)), "x")) is None
    again = session.apply(Change(AddMarkets(0, "orderbook_delta", 0, ("B",), op=3), "x"))
    assert again is not None
    limit = {"type": "error", "msg": {"code": 26, "msg": "limit"}}
    frame(session, {"id": first.reply, **limit})
    assert session.take_refused() == []
    frame(session, {"id": again.reply, **limit})
    assert session.take_refused() == [(0, ("B",), False, 3)]
