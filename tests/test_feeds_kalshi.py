"""The Kalshi venue session without sockets: frame classification never raises and never
drops, and the seq rules give their records and repairs through the session alone."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssmd.config import ConnectorConfig
from ssmd.connector.publisher import Inbound
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds import VenueUnavailable, load_venue
from ssmd.feeds.base import ConnectionStats, SessionContext, Subjects
from ssmd.feeds.kalshi import VENUE
from ssmd.feeds.kalshi.session import KalshiSession

PLANS = [SubscriptionPlan("orderbook_delta", ("A", "B")), SubscriptionPlan("trade")]


def new_session() -> tuple[KalshiSession, ConnectionStats]:
    stats = ConnectionStats()
    context = SessionContext(0, Subjects("prod", "kalshi"), stats, ConnectorConfig())
    session = VENUE.session(context, PLANS)
    assert isinstance(session, KalshiSession)
    return session, stats


def subscribed(session: KalshiSession) -> None:
    """Answer the two subscribes: sids 1 (orderbook_delta) and 2 (trade)."""
    out: list[Inbound] = []
    for command in session.start():
        cid = json.loads(command.text)["id"]
        reply = {"type": "subscribed", "id": cid, "msg": {"sid": cid}}
        assert session.on_frame(json.dumps(reply).encode(), 1, out)
        assert session.replied(command.reply)
    assert out == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(
            ["trade", "orderbook_delta", "orderbook_snapshot", "subscribed", "error", "ok"]
        )
        | st.text(max_size=8)
        | json_values,
        "id": st.integers(0, 4) | json_values,
        "sid": st.integers(0, 3) | json_values,
        "seq": st.integers(0, 12) | json_values,
        "msg": st.fixed_dictionaries(
            {}, optional={"market_ticker": st.sampled_from(["A", "B", "a.b"]) | json_values}
        )
        | json_values,
    },
).map(lambda e: json.dumps(e).encode())
frames = st.lists(st.binary(max_size=200) | envelopes, max_size=30)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(frames)
def test_classification_of_arbitrary_frames_never_raises_and_never_drops(
    payloads: list[bytes],
) -> None:
    session, stats = new_session()
    subscribed(session)
    for payload in payloads:
        before_control = sum(stats.control.values())
        before_messages = stats.messages
        out: list[Inbound] = []
        session.on_frame(payload, 42, out)
        data = [m for m in out if ".json.ssmd." not in m.subject]
        controls = sum(stats.control.values()) - before_control
        # Exactly one fate per frame: published as received, or counted as control.
        assert (len(data), controls) in ((1, 0), (0, 1)), (payload, out)
        if data:
            assert data[0].payload == payload
            assert data[0].recv_ns == 42
            assert data[0].subject.startswith("prod.kalshi.json.")
            assert stats.messages == before_messages + 1
        session.take_commands()  # a gap may queue a repair; never raises either


def test_a_seq_jump_on_a_snapshot_channel_records_a_gap_then_repairs_it() -> None:
    session, stats = new_session()
    subscribed(session)
    out: list[Inbound] = []

    def data(sid: int, seq: int, market: str) -> bool:
        frame = {
            "type": "orderbook_delta",
            "sid": sid,
            "seq": seq,
            "msg": {"market_ticker": market},
        }
        return session.on_frame(json.dumps(frame).encode(), 7, out)

    assert not data(1, 1, "A")
    assert data(1, 4, "B")  # 2 and 3 lost: the engine is told to look for commands
    gap = json.loads(out[1].payload)
    assert out[1].subject == "prod.kalshi.json.ssmd.gap"
    assert (gap["sid"], gap["expected"], gap["got"], gap["reason"]) == (1, 2, 4, "seq")
    (unsubscribe,) = session.take_commands()
    assert json.loads(unsubscribe.text)["params"] == {"sids": [1]}
    assert session.take_commands() == []  # the resubscribe waits for the old sid's end
    out.clear()
    session.on_frame(
        json.dumps({"type": "unsubscribed", "id": unsubscribe.reply, "sid": 1}).encode(), 8, out
    )
    (subscribe,) = session.take_commands()
    assert json.loads(subscribe.text)["params"] == {
        "channels": ["orderbook_delta"],
        "market_tickers": ["A", "B"],
    }
    assert session.take_commands() == []
    session.on_frame(
        json.dumps({"type": "subscribed", "id": subscribe.reply, "msg": {"sid": 9}}).encode(),
        9,
        out,
    )
    assert [m.subject for m in out] == ["prod.kalshi.json.ssmd.resubscribe"]
    assert json.loads(out[0].payload)["new_sid"] == 9
    assert stats.gaps == 1 and stats.resubscribes == 1


def test_a_seq_jump_on_trades_is_recorded_without_a_resubscribe() -> None:
    session, stats = new_session()
    subscribed(session)
    out: list[Inbound] = []
    for seq in (1, 2, 5):
        frame = {"type": "trade", "sid": 2, "seq": seq, "msg": {"market_ticker": "A"}}
        session.on_frame(json.dumps(frame).encode(), 1, out)
    assert [m.subject.rsplit(".", 1)[-1] for m in out] == ["A", "A", "gap", "A"]
    assert session.take_commands() == []
    assert stats.gaps == 1


def test_the_registry_finds_kalshi_by_kind() -> None:
    assert load_venue("kalshi") is VENUE
    with pytest.raises(VenueUnavailable, match=r"ssmd\.feeds\.nowhere"):
        load_venue("nowhere")
    assert VENUE.default_url({"KALSHI_USE_DEMO": "1"}).startswith("wss://demo-api.kalshi.co")
