"""Polymarket CLOB market channel: token-id subscriptions with no replies, frames that are
one event or a JSON array of events, routing by `event_type` and condition id.

- Subscription units are token ids (`asset_id`); the configured `markets` are condition
  ids, resolved to their token ids through the Gamma API at start-up (gamma.py).
- A connection holds at most `markets_per_connection` token ids (default 200). Its first
  frame is `{"assets_ids": [...], "type": "market", "custom_feature_enabled": true}`;
  further subscription chunks use `"operation": "subscribe"`. Polymarket acknowledges
  nothing, so no command waits for a reply; the `book` per asset that follows is the
  evidence (and what a reader rebuilds from after ssmd's `connect` record).
- Each element of an array frame is published by itself, as its exact bytes in the frame,
  in order, on `{env}.{feed}.json.{event_type}.{market}`: both tokens of a market share
  a subject. Text `PING` is sent every `ping_interval`, at most every 5 s (the server
  closes a connection silent for about 10 s); the `PONG` is liveness only.
- With `[connector.discovery]` (polymarket_source.py) the session is dynamic
  (polymarket_changes.py): the planner's condition ids come and go as token-id
  `subscribe`/`unsubscribe` operations, and `new_market`/`market_resolved` events are
  handed to discovery (and archived like any event).
- There are no sequence numbers, so no gap can be detected here: every reconnect is
  recorded by the engine (`connect`/`disconnect`), and the fresh books follow it.
- A subscription is only evidenced by its `book`. An asset still without one after
  `BOOK_WAIT_KEEPALIVES` keepalives gets a `subscribe_error` record (so the archive says
  it is not being recorded) and is subscribed again after the usual retry backoff; the
  retry is a `resubscribe` record (reason `retry`) before the first frame after it, so
  the archive says a fresh book follows.
- Polymarket never confirms an unsubscribe (`confirms_stop = False`): the shutdown
  `disconnect` record says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ssmd.config import VENUE_CHANNELS
from ssmd.connector.publisher import Inbound
from ssmd.connector.records import ResubscribeRecord, SubscribeErrorRecord
from ssmd.connector.shards import SubscriptionPlan, plan_connections
from ssmd.feeds.base import Command, SessionContext, Venue, VenueLimits
from ssmd.feeds.gamma import GAMMA_URL, resolve_token_ids
from ssmd.feeds.jsonframes import split_array
from ssmd.feeds.polymarket_changes import LiveAssets
from ssmd.supervisor import StartupRefused

if TYPE_CHECKING:
    from ssmd.config import ConnectorConfig
    from ssmd.connector.auth import Credentials

log = logging.getLogger("ssmd.connector.polymarket")

POLYMARKET_URL = "wss://ws-subscriptions-clob.polymarket.com/ws/market"
CHANNELS = VENUE_CHANNELS["polymarket"] or frozenset()
PING = "PING"
PONG = b"PONG"
BOOK_WAIT_KEEPALIVES = 3
MAX_PING_INTERVAL_S = 5.0


class _Event(msgspec.Struct):
    event_type: Any = None
    market: Any = None
    asset_id: Any = None


_EVENT = msgspec.json.Decoder(_Event)
# What market discovery follows (custom features): handed to it, and archived as data.
LIVE_EVENTS = frozenset({"new_market", "market_resolved"})
# On every message: the subscribe/unsubscribe update lists the key too, and a server that
# reads a missing one as false would turn `new_market`/`market_resolved` off.
CUSTOM = {"custom_feature_enabled": True}


def _own_unit(market: str) -> tuple[str, ...]:
    return (market,)


def _flat(slot: dict[str, tuple[str, ...]]) -> list[str]:
    return [token for units in slot.values() for token in units]


class PolymarketSession(LiveAssets):
    # No unsubscribe is ever answered: a clean stop cannot show nothing was in flight.
    confirms_stop = False

    def __init__(self, context: SessionContext, plans: Sequence[SubscriptionPlan]) -> None:
        self._conn = context.conn
        self._stats = context.stats
        self._subjects = context.subjects
        self._plans = list(plans)
        # Discovery on: hand it the `new_market`/`market_resolved` events, and open even
        # a connection with no asset yet (custom features on, to hear of new markets).
        self._events = context.events
        self._unit_source = context.units or _own_unit
        self._slots = {}
        self._noted = []
        self.start()

    @property
    def assets(self) -> list[str]:
        """Every token id wanted on this connection: static plans, then planner slots."""
        return [t for plan in self._plans for t in plan.markets] + self.slot_assets()

    def start(self) -> list[Command]:
        commands = []
        self._keepalives = 0
        # Asset -> the keepalive count when it was (re)subscribed, until its book comes.
        self._awaiting = {}
        self._missing = []  # found without a book, not yet recorded
        self._refused = []  # recorded, waiting for the retry
        self._retried: list[str] = []  # subscribed again, not yet recorded
        chunks = [list(plan.markets) for plan in self._plans]
        chunks += [tokens for tokens in map(_flat, self._slots.values()) if tokens]
        if not chunks and self._events is not None:
            chunks = [[]]
        for n, tokens in enumerate(chunks):
            self._awaiting.update(dict.fromkeys(tokens, 0))
            message: dict[str, object] = {"assets_ids": tokens}
            if n == 0:
                message |= {"type": "market", "custom_feature_enabled": True}
            else:
                message |= {"operation": "subscribe", "custom_feature_enabled": True}
            commands.append(Command(json.dumps(message), None, f"subscribe {len(tokens)} assets"))
        log.debug("conn %d: subscribing %d assets", self._conn, len(self._awaiting))
        return commands

    def on_frame(self, payload: bytes, recv_ns: int, out: list[Inbound]) -> bool:
        queued = False
        if self._noted:
            self._record_changes(recv_ns, out)
        if self._missing:
            self._record_missing(recv_ns, out)
            queued = True
        if self._retried:
            self._record_retried(recv_ns, out)
        if payload.strip() == PONG:
            self._stats.control["pong"] += 1
            return queued
        stats = self._stats
        subjects = self._subjects
        events = self._events
        for element in split_array(payload):
            try:
                event = _EVENT.decode(element)
            except (msgspec.MsgspecError, RecursionError):
                event = None
            event_type = event.event_type if event is not None else None
            market = event.market if event is not None else None
            if event is not None and event_type == "book" and isinstance(event.asset_id, str):
                self._awaiting.pop(event.asset_id, None)
            elif events is not None and event_type in LIVE_EVENTS:
                events(element)
            kind = event_type if isinstance(event_type, str) and event_type else None
            subject = None
            if kind is not None and isinstance(market, str):
                subject = subjects.data(kind, market)
            stats.messages += 1
            stats.by_type[kind or "invalid"] += 1
            if subject is None:
                stats.unrouted += 1
                subject = subjects.unrouted(kind)
            if event_type in LIVE_EVENTS:
                # Every connection receives its own copy: one id for all, one stored.
                digest = hashlib.blake2b(element, digest_size=16).hexdigest()
                out.append(Inbound(subject, element, recv_ns, msg_id=f"{subject}:{digest}"))
            else:
                out.append(Inbound(subject, element, recv_ns))
        return queued

    def _record_missing(self, recv_ns: int, out: list[Inbound]) -> None:
        missing, self._missing = self._missing, []
        error = f"no book within {BOOK_WAIT_KEEPALIVES} keepalives"
        log.warning(
            "conn %d: %d assets got no book (%s); subscribing them again later",
            self._conn,
            len(missing),
            ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""),
        )
        self._stats.subscribe_errors += 1
        out.append(
            self._subjects.record(
                SubscribeErrorRecord(self._conn, "market", missing, error, recv_ns)
            )
        )
        self._refused += missing

    def _record_retried(self, recv_ns: int, out: list[Inbound]) -> None:
        """The retry went out before this frame: its fresh books follow the record."""
        retried, self._retried = self._retried, []
        self._stats.resubscribes += 1
        out.append(
            self._subjects.record(
                ResubscribeRecord(self._conn, "retry", "market", None, None, retried, recv_ns)
            )
        )

    def replied(self, token: Hashable) -> bool:
        return True  # Polymarket answers nothing; commands carry no reply token

    def take_commands(self) -> list[Command]:
        return []

    def retries_waiting(self) -> bool:
        return bool(self._refused)

    def take_retries(self) -> list[Command]:
        wanted = set(self.assets)
        assets = [a for a in self._refused if a in wanted]
        self._refused = []
        if not assets:
            return []
        self._awaiting.update(dict.fromkeys(assets, self._keepalives))
        self._retried += assets
        message = {"assets_ids": assets, "operation": "subscribe", **CUSTOM}
        return [Command(json.dumps(message), None, f"subscribe {len(assets)} assets again")]

    def keepalive(self, count: int) -> str | None:
        """`PING`; and, as the keepalives count time, find assets whose book is overdue
        (recorded with the next frame)."""
        self._keepalives = count
        overdue = [
            a for a, since in self._awaiting.items() if count - since >= BOOK_WAIT_KEEPALIVES
        ]
        for asset in overdue:
            del self._awaiting[asset]
        self._missing += overdue
        return PING

    def stop(self) -> list[Command]:
        if not self.assets:
            return []
        message = {"assets_ids": self.assets, "operation": "unsubscribe", **CUSTOM}
        return [Command(json.dumps(message), None, f"unsubscribe {len(self.assets)} assets")]

    def stop_confirmed(self) -> bool:
        return True  # never confirmed by the exchange


class PolymarketVenue:
    kind = "polymarket"
    needs_credentials = False
    limits = VenueLimits(markets_per_subscription=200, markets_per_connection=200)
    # The server closes a connection that sent no PING for about 10 s: `ping_interval`
    # (10 s by default, like every venue's) is lowered to this.
    max_ping_interval = MAX_PING_INTERVAL_S

    def default_url(self, environ: Mapping[str, str]) -> str:
        return POLYMARKET_URL

    def handshake_headers(self, url: str, credentials: Credentials | None) -> list[tuple[str, str]]:
        return []

    async def subscription_markets(self, config: ConnectorConfig) -> list[str]:
        if not config.markets:
            raise StartupRefused(
                f"connector {config.feed!r} (polymarket): connector.markets must list condition "
                "ids (0x...), or [connector.discovery] follow the active markets"
            )
        return await resolve_token_ids(config.rest_url or GAMMA_URL, config.markets)

    def plan(self, config: ConnectorConfig, markets: Sequence[str]) -> list[list[SubscriptionPlan]]:
        unknown = sorted(set(config.channels) - CHANNELS)
        if unknown:
            raise StartupRefused(
                f"connector {config.feed!r} (polymarket): unknown channel(s) "
                f"{', '.join(unknown)}; the only channel is 'market'"
            )
        if not markets:
            raise StartupRefused(
                f"connector {config.feed!r} (polymarket): no token ids to subscribe"
            )
        per_connection = config.markets_per_connection or self.limits.markets_per_connection
        per_subscription = config.markets_per_subscription or per_connection
        return plan_connections(["market"], list(markets), per_subscription, per_connection)

    def session(
        self, context: SessionContext, plans: Sequence[SubscriptionPlan]
    ) -> PolymarketSession:
        return PolymarketSession(context, plans)


VENUE: Venue = PolymarketVenue()
