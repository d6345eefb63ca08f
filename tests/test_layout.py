"""The subscription planner: actions replayed onto a model exchange keep every rule."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmd.connector.layout import (
    Action,
    AddMarkets,
    DeleteMarkets,
    OpenConnection,
    Subscribe,
    SubscriptionLayout,
    Unsubscribe,
)

CHANNELS = ("orderbook_delta", "trade")


@attrs.define
class ModelExchange:
    """What the exchange would hold after the planner's actions, with its complaints."""

    connections: set[int] = attrs.field(factory=set)
    subs: dict[int, tuple[int, str, set[str]]] = attrs.field(factory=dict)

    def apply(self, actions: list[Action], sub_limit: int) -> None:
        for action in actions:
            match action:
                case OpenConnection(conn):
                    assert conn not in self.connections
                    self.connections.add(conn)
                case Subscribe(conn, channel, slot, markets):
                    assert conn in self.connections and slot not in self.subs
                    assert 0 < len(markets) <= sub_limit
                    self.subs[slot] = (conn, channel, set(markets))
                case AddMarkets(conn, channel, slot, markets):
                    held = self.subs[slot][2]
                    assert self.subs[slot][:2] == (conn, channel)
                    assert markets and not held & set(markets)
                    held.update(markets)
                    assert len(held) <= sub_limit
                case DeleteMarkets(conn, channel, slot, markets):
                    held = self.subs[slot][2]
                    assert set(markets) <= held and len(markets) < len(held), (
                        "a delete must never empty a sid; that is an unsubscribe"
                    )
                    held.difference_update(markets)
                case Unsubscribe(conn, channel, slot):
                    # Only ever a subscription whose markets have all been deleted.
                    self.subs.pop(slot)

    def check(self, layout: SubscriptionLayout, per_connection: int) -> None:
        per_channel: dict[str, list[str]] = {c: [] for c in CHANNELS}
        per_conn: dict[int, set[str]] = {}
        for conn, channel, markets in self.subs.values():
            per_channel[channel].extend(markets)
            per_conn.setdefault(conn, set()).update(markets)
        for channel, placed in per_channel.items():
            assert len(placed) == len(set(placed)), f"a market twice on {channel}"
            assert set(placed) == set(layout.markets)
        assert all(len(m) <= per_connection for m in per_conn.values())
        for slot, (conn, channel, markets) in self.subs.items():
            assert layout.subscription(slot) == (conn, channel, tuple(layout.subscription(slot)[2]))
            assert set(layout.subscription(slot)[2]) == markets
            assert all(layout.connection_of(m) == conn for m in markets)


def test_fills_subscriptions_then_connections() -> None:
    layout = SubscriptionLayout(["orderbook_delta"], per_subscription=2, per_connection=3)
    actions = layout.add(["A", "B", "C", "D"])
    assert actions == [
        OpenConnection(0),
        Subscribe(0, "orderbook_delta", 0, ("A", "B")),
        Subscribe(0, "orderbook_delta", 1, ("C",)),
        OpenConnection(1),
        Subscribe(1, "orderbook_delta", 2, ("D",)),
    ]
    assert layout.add(["E", "A"]) == [AddMarkets(1, "orderbook_delta", 2, ("E",))]


def test_removal_deletes_markets_and_unsubscribes_only_an_empty_sid() -> None:
    layout = SubscriptionLayout(["orderbook_delta"], per_subscription=2, per_connection=10)
    layout.add(["A", "B", "C"])
    assert layout.remove(["A"]) == [DeleteMarkets(0, "orderbook_delta", 0, ("A",))]
    assert layout.remove(["B", "C", "Z"]) == [
        Unsubscribe(0, "orderbook_delta", 0),
        Unsubscribe(0, "orderbook_delta", 1),
    ]
    # Freed room is used again.
    assert layout.add(["D"]) == [Subscribe(0, "orderbook_delta", 2, ("D",))]


def test_a_market_limit_refusal_lowers_the_limit_and_places_the_markets_again() -> None:
    layout = SubscriptionLayout(["orderbook_delta"], per_subscription=100, per_connection=1000)
    layout.add([f"M{i}" for i in range(8)])
    actions = layout.refused_as_too_large(0, [f"M{i}" for i in range(8)])
    assert layout.per_subscription == 4
    assert actions == [
        Subscribe(0, "orderbook_delta", 1, ("M0", "M1", "M2", "M3")),
        Subscribe(0, "orderbook_delta", 2, ("M4", "M5", "M6", "M7")),
    ]
    # An add refused on a sid that held 4: the limit is 4 and only the new ones move.
    actions = layout.add(["N0"])
    assert actions == [Subscribe(0, "orderbook_delta", 3, ("N0",))]


def test_nonsense_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SubscriptionLayout(["trade"], 0, 10)
    with pytest.raises(ValueError, match="channel"):
        SubscriptionLayout([], 1, 10)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(st.integers(0, 60), max_size=25)),
        st.tuples(st.just("remove"), st.lists(st.integers(0, 60), max_size=25)),
        st.tuples(st.just("refuse"), st.integers(0, 40)),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=OPS,
    per_subscription=st.integers(1, 8),
    per_connection=st.integers(1, 20),
)
def test_any_history_keeps_every_rule(
    ops: list[tuple[str, object]], per_subscription: int, per_connection: int
) -> None:
    layout = SubscriptionLayout(CHANNELS, per_subscription, per_connection)
    model = ModelExchange()
    for op, arg in ops:
        limit_before = layout.per_subscription
        if op == "add":
            assert isinstance(arg, list)
            actions = layout.add(f"M{i}" for i in arg)
        elif op == "remove":
            assert isinstance(arg, list)
            actions = layout.remove(f"M{i}" for i in arg)
        else:
            slots = layout.slots()
            if not slots:
                continue
            assert isinstance(arg, int)
            slot = slots[arg % len(slots)]
            _conn, _channel, held = layout.subscription(slot)
            # The exchange refuses the second half of what the slot holds.
            refused = held[len(held) // 2 :]
            model.subs[slot][2].difference_update(refused)
            if not model.subs[slot][2]:
                model.subs.pop(slot)
            actions = layout.refused_as_too_large(slot, refused)
            assert layout.per_subscription <= limit_before
        model.apply(actions, max(limit_before, layout.per_subscription))
        model.check(layout, per_connection)
