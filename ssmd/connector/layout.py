"""Which subscription on which connection carries each market: the subscription planner.

Pure bookkeeping, no I/O. The connection engine asks it what to do when markets come and
go, carries out the actions it returns in order, and tells it when the exchange refuses
a subscription as too large. The rules it keeps:

- a market lives on one connection, on every market-scoped channel of that connection;
- a connection carries at most `per_connection` markets, a subscription at most
  `per_subscription` (lowered when the exchange says so);
- markets are added to a subscription with room first, then to a new subscription on a
  connection with room, then to a new connection;
- a subscription is only ever unsubscribed when it carries no market any more, so a
  removal never gaps the other markets that share its sid;
- a refusal moves only the markets whose placement it refuses: each `Subscribe` and
  `AddMarkets` carries an `op` id, the session reports the op of the add it refused,
  and a market placed on the slot again since then (removed and added back while the
  refusal was under way) is left where it is, since that later add gets its own answer.

Subscriptions are named by `slot` numbers that the planner assigns; the engine maps
each slot to the sid the exchange gives it.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs


@attrs.frozen
class OpenConnection:
    conn: int


@attrs.frozen
class Subscribe:
    conn: int
    channel: str
    slot: int
    markets: tuple[str, ...]
    op: int = attrs.field(default=0, eq=False)  # the planner's id of this placement


@attrs.frozen
class AddMarkets:
    conn: int
    channel: str
    slot: int
    markets: tuple[str, ...]
    op: int = attrs.field(default=0, eq=False)  # the planner's id of this placement


@attrs.frozen
class DeleteMarkets:
    conn: int
    channel: str
    slot: int
    markets: tuple[str, ...]


@attrs.frozen
class Unsubscribe:
    conn: int
    channel: str
    slot: int


Action = OpenConnection | Subscribe | AddMarkets | DeleteMarkets | Unsubscribe


@attrs.define
class _Subscription:
    slot: int
    conn: int
    channel: str
    markets: dict[str, None] = attrs.field(factory=dict)


class SubscriptionLayout:
    def __init__(self, channels: Iterable[str], per_subscription: int, per_connection: int) -> None:
        self.channels = tuple(dict.fromkeys(channels))
        if not self.channels:
            raise ValueError("a subscription layout needs at least one channel")
        if per_subscription < 1 or per_connection < 1:
            raise ValueError("subscription and connection limits must be at least 1")
        self.per_connection = per_connection
        self.per_subscription = min(per_subscription, per_connection)
        self._next_slot = 0
        self._connections: dict[int, dict[str, None]] = {}
        self._market_conn: dict[str, int] = {}
        self._subs: dict[int, _Subscription] = {}
        # Per (conn, channel): its subscriptions' slots, oldest first.
        self._by_channel: dict[tuple[int, str], list[int]] = {}
        self._market_slots: dict[tuple[str, str], int] = {}
        # Per (channel, market): the op of the Subscribe or AddMarkets that placed it.
        self._placed_by: dict[tuple[str, str], int] = {}
        self._next_op = 1

    @property
    def markets(self) -> frozenset[str]:
        return frozenset(self._market_conn)

    def connection_of(self, market: str) -> int | None:
        return self._market_conn.get(market)

    def connection_count(self) -> int:
        return len(self._connections)

    def markets_on(self, conn: int) -> int:
        return len(self._connections.get(conn, {}))

    def subscription(self, slot: int) -> tuple[int, str, tuple[str, ...]]:
        sub = self._subs[slot]
        return sub.conn, sub.channel, tuple(sub.markets)

    def slots(self) -> list[int]:
        return list(self._subs)

    def add(self, markets: Iterable[str]) -> list[Action]:
        """Place new markets; ones already placed are left where they are."""
        fresh = [m for m in dict.fromkeys(markets) if m not in self._market_conn]
        actions: list[Action] = []
        while fresh:
            conn = self._connection_with_room(actions)
            room = self.per_connection - len(self._connections[conn])
            batch, fresh = fresh[:room], fresh[room:]
            for market in batch:
                self._connections[conn][market] = None
                self._market_conn[market] = conn
            for channel in self.channels:
                actions.extend(self._place(conn, channel, batch))
        return actions

    def remove(self, markets: Iterable[str]) -> list[Action]:
        """Take markets off their subscriptions; a subscription left empty is ended."""
        actions: list[Action] = []
        by_slot: dict[int, list[str]] = {}
        for market in dict.fromkeys(markets):
            conn = self._market_conn.pop(market, None)
            if conn is None:
                continue
            del self._connections[conn][market]
            for channel in self.channels:
                slot = self._market_slots.pop((channel, market), None)
                self._placed_by.pop((channel, market), None)
                if slot is not None:
                    by_slot.setdefault(slot, []).append(market)
        for slot, gone in by_slot.items():
            sub = self._subs[slot]
            for market in gone:
                del sub.markets[market]
            if sub.markets:
                actions.append(DeleteMarkets(sub.conn, sub.channel, slot, tuple(gone)))
            else:
                actions.append(Unsubscribe(sub.conn, sub.channel, slot))
                self._forget(slot)
        return actions

    def refused_as_too_large(
        self, slot: int, markets: Iterable[str], *, dropped: bool = False, op: int | None = None
    ) -> list[Action]:
        """The exchange refused to put `markets` on `slot` (Kalshi error 26: market limit).

        The limit is learned (at most what the subscription held before, halved when it
        was a fresh subscription), the markets are taken back and placed again. `dropped`:
        a subscribe was refused and the slot is gone, so every market on it moves (those
        added behind it too) and the limit comes from the refused subscribe's size alone.
        `op`: the refused add's; a market placed on the slot by a later one stays.
        """
        sub = self._subs.get(slot)
        if sub is None:
            return []
        exact = op is not None and not dropped
        refused = [
            m
            for m in dict.fromkeys(markets)
            if m in sub.markets and (not exact or self._placed_by.get((sub.channel, m)) == op)
        ]
        if not refused and not dropped:
            return []  # a refusal of an add since superseded: the later one stands
        if dropped:
            limit = len(refused) // 2 or 1
            refused = list(sub.markets)
        else:
            limit = len(sub.markets) - len(refused) or len(refused) // 2 or 1
        self.per_subscription = max(1, min(self.per_subscription, limit))
        for market in refused:
            del sub.markets[market]
            del self._market_slots[(sub.channel, market)]
            del self._placed_by[(sub.channel, market)]
        actions: list[Action] = []
        if not sub.markets:
            if not dropped:
                # The subscription exists on the exchange, emptied by deletes sent
                # while the refused add was under way: end it, or it stays there.
                actions.append(Unsubscribe(sub.conn, sub.channel, slot))
            self._forget(slot)
        actions.extend(self._place(sub.conn, sub.channel, refused))
        return actions

    def _forget(self, slot: int) -> None:
        sub = self._subs.pop(slot)
        self._by_channel[(sub.conn, sub.channel)].remove(slot)

    def _connection_with_room(self, actions: list[Action]) -> int:
        for conn, markets in self._connections.items():
            if len(markets) < self.per_connection:
                return conn
        conn = max(self._connections, default=-1) + 1
        self._connections[conn] = {}
        actions.append(OpenConnection(conn))
        return conn

    def _place(self, conn: int, channel: str, markets: list[str]) -> list[Action]:
        actions: list[Action] = []
        pending = list(markets)
        for slot in self._by_channel.get((conn, channel), []):
            if not pending:
                break
            sub = self._subs[slot]
            room = self.per_subscription - len(sub.markets)
            if room <= 0:
                continue
            batch, pending = pending[:room], pending[room:]
            op = self._assign(sub, batch)
            actions.append(AddMarkets(conn, channel, slot, tuple(batch), op))
        while pending:
            batch, pending = pending[: self.per_subscription], pending[self.per_subscription :]
            sub = _Subscription(self._next_slot, conn, channel)
            self._next_slot += 1
            self._subs[sub.slot] = sub
            self._by_channel.setdefault((conn, channel), []).append(sub.slot)
            op = self._assign(sub, batch)
            actions.append(Subscribe(conn, channel, sub.slot, tuple(batch), op))
        return actions

    def _assign(self, sub: _Subscription, markets: list[str]) -> int:
        """Place `markets` on `sub`; the new placement's op."""
        op, self._next_op = self._next_op, self._next_op + 1
        for market in markets:
            sub.markets[market] = None
            self._market_slots[(sub.channel, market)] = sub.slot
            self._placed_by[(sub.channel, market)] = op
        return op
