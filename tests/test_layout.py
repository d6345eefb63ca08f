"""The subscription planner: its actions, replayed into a simulated exchange written
without it (with a market limit the planner does not know, and refusals reported late),
leave the exchange as the planner says, within every rule, and nothing behind."""

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
    # The subscribe of 8 was refused: its slot is gone.
    actions = layout.refused_as_too_large(0, [f"M{i}" for i in range(8)], dropped=True)
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


@attrs.define
class SimulatedExchange:
    """An exchange the planner's actions are replayed into, written without the
    planner: subscriptions by slot, a true market limit the planner does not know, and
    refusals (Kalshi's error 26) reported back later, the way `KalshiSession` carries
    the actions out. A refused subscribe drops its slot (actions queued behind it are
    ignored); a refused add leaves the subscription as it was."""

    limit: int
    connections: set[int] = attrs.field(factory=set)
    subs: dict[int, tuple[int, str, set[str]]] = attrs.field(factory=dict)
    dropped: set[int] = attrs.field(factory=set)
    used: set[int] = attrs.field(factory=set)
    reports: list[tuple[int, tuple[str, ...], bool, int]] = attrs.field(factory=list)

    def apply(self, action: Action, planner_limit: int) -> None:
        match action:
            case OpenConnection(conn):
                assert conn not in self.connections, "a connection opened twice"
                self.connections.add(conn)
            case Subscribe(conn, channel, slot, markets, op):
                assert conn in self.connections, "a subscription on an unknown connection"
                assert slot not in self.used, "a slot used twice"
                assert 0 < len(markets) <= planner_limit
                assert len(set(markets)) == len(markets)
                self.used.add(slot)
                if len(markets) > self.limit:
                    self.dropped.add(slot)
                    self.reports.append((slot, markets, True, op))
                else:
                    self.subs[slot] = (conn, channel, set(markets))
            case AddMarkets(conn, channel, slot, markets, op):
                assert markets and len(set(markets)) == len(markets)
                if slot in self.dropped:
                    return
                assert slot in self.subs, "an add to a slot that is not subscribed"
                held_conn, held_channel, held = self.subs[slot]
                assert (held_conn, held_channel) == (conn, channel)
                assert not held & set(markets), "a market added twice to a sid"
                assert len(held) + len(markets) <= planner_limit
                if len(held) + len(markets) > self.limit:
                    self.reports.append((slot, markets, False, op))
                else:
                    held.update(markets)
            case DeleteMarkets(conn, channel, slot, markets):
                if slot in self.dropped:
                    return
                assert slot in self.subs, "a delete on a slot that is not subscribed"
                held = self.subs[slot][2]
                assert self.subs[slot][:2] == (conn, channel)
                held.difference_update(markets)
                # The planner cannot know an add is being refused: deletes sent
                # meanwhile may empty the sid. It must end it when told.
                assert held or any(slot == r[0] for r in self.reports), (
                    "a delete must never empty a sid; that is an unsubscribe"
                )
            case Unsubscribe(conn, channel, slot):
                if slot in self.dropped:
                    return
                assert slot in self.subs, "an unsubscribe of a slot that is not subscribed"
                assert self.subs.pop(slot)[:2] == (conn, channel)

    def take_reports(self) -> list[tuple[int, tuple[str, ...], bool, int]]:
        reports, self.reports = self.reports, []
        return reports


def check_agree(
    exchange: SimulatedExchange,
    layout: SubscriptionLayout,
    wanted: set[str],
    per_connection: int,
    channels: tuple[str, ...] = CHANNELS,
) -> None:
    """With no refusal outstanding: the exchange holds what the planner says, and that
    is every wanted market exactly once per channel, within every limit."""
    assert layout.markets == wanted
    assert set(layout.slots()) == set(exchange.subs), "the planner and exchange disagree"
    per_conn: dict[int, set[str]] = {}
    for channel in channels:
        placed = [m for conn, ch, held in exchange.subs.values() if ch == channel for m in held]
        assert sorted(placed) == sorted(wanted), f"{channel}: not every market exactly once"
    for slot, (conn, channel, held) in exchange.subs.items():
        assert layout.subscription(slot) == (conn, channel, layout.subscription(slot)[2])
        assert set(layout.subscription(slot)[2]) == held
        assert conn in exchange.connections
        assert held and len(held) <= exchange.limit
        per_conn.setdefault(conn, set()).update(held)
        for market in held:
            assert layout.connection_of(market) == conn
    assert all(len(held) <= per_connection for held in per_conn.values())
    assert all(layout.markets_on(conn) == len(held) for conn, held in per_conn.items())


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(st.integers(0, 60), max_size=25)),
        st.tuples(st.just("remove"), st.lists(st.integers(0, 60), max_size=25)),
        st.tuples(st.just("report"), st.integers(0, 3)),
    ),
    max_size=40,
)


def deliver(
    exchange: SimulatedExchange, layout: SubscriptionLayout, count: int | None = None
) -> None:
    """Tell the planner about `count` outstanding refusals (all, until none is left)."""
    while exchange.reports and (count is None or count > 0):
        slot, markets, dropped, op = exchange.reports.pop(0)
        limit_before = layout.per_subscription
        actions = layout.refused_as_too_large(slot, markets, dropped=dropped, op=op)
        assert layout.per_subscription <= limit_before
        for action in actions:
            exchange.apply(action, layout.per_subscription)
        if count is not None:
            count -= 1


@settings(max_examples=400, deadline=None)
@given(
    ops=OPS,
    per_subscription=st.integers(1, 8),
    per_connection=st.integers(1, 20),
    true_limit=st.integers(1, 8),
)
def test_any_history_leaves_the_exchange_as_the_planner_says(
    ops: list[tuple[str, object]], per_subscription: int, per_connection: int, true_limit: int
) -> None:
    layout = SubscriptionLayout(CHANNELS, per_subscription, per_connection)
    exchange = SimulatedExchange(limit=true_limit)
    wanted: set[str] = set()
    ever: set[str] = set()
    for op, arg in ops:
        if op == "report":
            assert isinstance(arg, int)
            deliver(exchange, layout, arg)
            continue
        assert isinstance(arg, list)
        markets = [f"M{i}" for i in arg]
        if op == "add":
            actions = layout.add(markets)
            wanted.update(markets)
            ever.update(markets)
        else:
            actions = layout.remove(markets)
            wanted.difference_update(markets)
        for action in actions:
            exchange.apply(action, layout.per_subscription)
        if not exchange.reports:
            check_agree(exchange, layout, wanted, per_connection)
    deliver(exchange, layout)
    check_agree(exchange, layout, wanted, per_connection)
    # Removing everything leaves nothing behind, on either side.
    for action in layout.remove(sorted(ever)):
        exchange.apply(action, layout.per_subscription)
    deliver(exchange, layout)
    assert exchange.subs == {} and layout.slots() == [] and layout.markets == set()
    assert all(layout.markets_on(conn) == 0 for conn in exchange.connections)


def test_a_late_refusal_never_moves_a_market_that_came_back_to_its_slot() -> None:
    """An add is refused while the market is removed and added again: the refusal,
    told late, names only the slot and the market, so the market must not be back on
    that slot (it would be moved off a subscription that holds it: there twice, and
    never deleted)."""
    layout = SubscriptionLayout(["orderbook_delta"], per_subscription=3, per_connection=100)
    exchange = SimulatedExchange(limit=2)

    def replay(actions: list[Action]) -> None:
        for action in actions:
            exchange.apply(action, layout.per_subscription)

    replay(layout.add(["A", "C"]))
    replay(layout.add(["B"]))  # refused: the exchange's limit is 2
    replay(layout.remove(["C", "B"]))
    replay(layout.add(["B"]))
    deliver(exchange, layout)
    check_agree(exchange, layout, {"A", "B"}, 100, channels=("orderbook_delta",))
    replay(layout.remove(["A", "B"]))
    assert exchange.subs == {}


def test_a_late_refusal_after_many_departures_moves_nothing_that_came_back() -> None:
    """However many markets leave the slot while a refused add is under way (review of
    issue 9's walk, M1: a 64-market memory was the bound), the refusal names its add's
    op and the market placed again by a later add stays where it is."""
    layout = SubscriptionLayout(["orderbook_delta"], per_subscription=200, per_connection=1000)
    exchange = SimulatedExchange(limit=100)

    def replay(actions: list[Action]) -> None:
        for action in actions:
            exchange.apply(action, layout.per_subscription)

    xs = [f"X{i}" for i in range(100)]
    replay(layout.add(xs))
    replay(layout.add(["M"]))  # over the exchange's true limit: refused, told late
    replay(layout.remove(["M"]))
    replay(layout.remove(xs[:65]))  # an hourly event's strikes settle together
    replay(layout.add(["M"]))  # M comes back to the same slot; this add goes through
    assert layout.subscription(0)[2][-1] == "M"
    deliver(exchange, layout)
    check_agree(exchange, layout, {"M", *xs[65:]}, 1000, channels=("orderbook_delta",))
    held = [slot for slot, (_c, _ch, markets) in exchange.subs.items() if "M" in markets]
    assert held == [0]
