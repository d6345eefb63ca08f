"""Kraken Spot WebSocket v2 (public): req_id acks per symbol, books checked by checksum,
trades checked by trade_id, routing by channel and symbol (see kraken-ws.md).

- Subjects: `{env}.{feed}.json.{channel}.{symbol}` (`BTC/USD` is a legal token);
  `status` frames, which name no symbol, go to `{env}.{feed}.json.status.system`.
- Control, never archived: any frame with a string `method` (subscribe/unsubscribe
  acks, `pong`) and `heartbeat` (liveness only). Everything else is data, published as
  received.
- Continuity: each subscribed symbol's book is kept at the subscribed depth
  (`connector.depth`, default 10) and every book message's CRC32 is checked. A mismatch
  is a `gap` record (reason `checksum`, expected = ours, got = Kraken's), then that
  symbol's book is unsubscribed and subscribed again; the ack of the new subscription
  gives a `resubscribe` record just before the fresh snapshot. A jump in a symbol's
  `trade_id` is a `gap` record (reason `trade_id`) and nothing else: a resubscribe would
  not bring missed trades back. The last trade id survives reconnects, so the first trade
  after one measures exactly what was missed meanwhile.
- A symbol the exchange refused (a `subscribe_error` record) is retried; the ack that
  finally subscribes it, on this socket or a later one, is an `ssmd.subscription` record
  (`added` the symbol, reason `retry`) placed before its data: its capture begins there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import msgspec

from ssmd.config import VENUE_CHANNELS
from ssmd.connector.publisher import Inbound
from ssmd.connector.records import ResubscribeRecord, SubscribeErrorRecord, SubscriptionRecord
from ssmd.connector.shards import SubscriptionPlan, plan_connections
from ssmd.feeds.base import Command, SessionContext, Venue, VenueLimits
from ssmd.feeds.kraken_book import KrakenBook
from ssmd.feeds.kraken_continuity import Item, KrakenContinuity, int_or_none
from ssmd.message_types import KRAKEN, OTHER
from ssmd.supervisor import StartupRefused

if TYPE_CHECKING:
    from ssmd.config import ConnectorConfig
    from ssmd.connector.auth import Credentials

log = logging.getLogger("ssmd.connector.kraken")

KRAKEN_URL = "wss://ws.kraken.com/v2"
CHANNELS = VENUE_CHANNELS["kraken"] or frozenset()
DEFAULT_DEPTH = 10
STATUS_KEY = "system"
# Metric labels come from the venue's own strings (`method`, `channel`), so only these
# are kept as they are and anything else counts as `other`: whatever a venue (or
# garbage) sends, `ssmd_control_messages{kind}` and `ssmd_received_messages{type}` keep
# a bounded set of label values.
CONTROL_KINDS = frozenset({"subscribe", "unsubscribe", "pong", "heartbeat"})
MESSAGE_TYPES = KRAKEN | {"invalid"}


def _label(value: str, known: frozenset[str]) -> str:
    return value if value in known else OTHER


class _Frame(msgspec.Struct):
    """The few fields routing and continuity read; the rest is skipped unparsed."""

    channel: Any = None
    type: Any = None
    method: Any = None
    req_id: Any = None
    symbol: Any = None  # the refused symbol of an error ack
    success: Any = None
    error: Any = None
    result: Any = None
    data: list[Item] | None = None


_FRAME = msgspec.json.Decoder(_Frame)
_ANY = msgspec.json.Decoder()


@attrs.define
class _Request:
    """A subscribe or unsubscribe in flight: done once every symbol is acked or refused.

    Kraken answers each symbol on its own; an error naming a symbol refuses that symbol
    only, an error naming none refuses every symbol not yet answered."""

    method: str
    channel: str
    symbols: tuple[str, ...]
    acked: set[str] = attrs.Factory(set)
    refused: set[str] = attrs.Factory(set)
    repair: bool = False  # the subscribe of a checksum repair

    @property
    def done(self) -> bool:
        return self.acked | self.refused >= set(self.symbols)

    def unanswered(self) -> list[str]:
        return [s for s in self.symbols if s not in self.acked and s not in self.refused]


class KrakenSession:
    def __init__(self, context: SessionContext, plans: Sequence[SubscriptionPlan]) -> None:
        self._conn = context.conn
        self._stats = context.stats
        self._subjects = context.subjects
        self._depth = context.config.depth or DEFAULT_DEPTH
        self._plans = list(plans)
        self._continuity = KrakenContinuity(self._conn, self._stats, self._subjects, self._depth)
        # Survives reconnects: the symbols per channel whose subscribe the exchange
        # refused and that no subscribe has captured since.
        self._uncaptured: dict[str, set[str]] = {}
        self._next_req_id = 0
        self.start()

    # Commands.
    def start(self) -> list[Command]:
        self._requests: dict[int, _Request] = {}
        self._done: set[int] = set()
        self.subscribed: dict[str, set[str]] = {}
        self._continuity.reset()
        self._refused: dict[str, set[str]] = {}
        self._stopping: set[int] = set()
        return [self._subscribe(plan.channel, plan.markets) for plan in self._plans]

    @property
    def books(self) -> dict[str, KrakenBook]:
        return self._continuity.books

    @property
    def last_trade_id(self) -> dict[str, int]:
        return self._continuity.last_trade_id

    def _request(self, method: str, channel: str, symbols: Sequence[str], repair: bool) -> Command:
        self._next_req_id += 1
        req_id = self._next_req_id
        params: dict[str, object] = {"channel": channel, "symbol": list(symbols)}
        if channel == "book" and method == "subscribe":
            params["depth"] = self._depth
        text = json.dumps({"method": method, "params": params, "req_id": req_id})
        self._requests[req_id] = _Request(method, channel, tuple(symbols), repair=repair)
        what = f"{method} {channel} ({len(symbols)} symbols, req_id {req_id})"
        return Command(text, req_id, what)

    def _subscribe(self, channel: str, symbols: Sequence[str], repair: bool = False) -> Command:
        return self._request("subscribe", channel, symbols, repair)

    def replied(self, token: Hashable) -> bool:
        return token in self._done

    def take_commands(self) -> list[Command]:
        """One book repair at a time: unsubscribe the symbol, subscribe it again."""
        repairs = self._continuity.repairs
        while repairs:
            symbol = next(iter(repairs))
            del repairs[symbol]
            if symbol not in self.subscribed.get("book", set()):
                continue
            self._continuity.repairing.add(symbol)
            return [
                self._request("unsubscribe", "book", [symbol], repair=False),
                self._subscribe("book", [symbol], repair=True),
            ]
        return []

    def retries_waiting(self) -> bool:
        return any(self._refused.values())

    def take_retries(self) -> list[Command]:
        commands = []
        for channel, symbols in self._refused.items():
            waiting = sorted(symbols - self.subscribed.get(channel, set()))
            if waiting:
                commands.append(self._subscribe(channel, waiting))
        self._refused = {}
        return commands

    def keepalive(self, count: int) -> str | None:
        self._next_req_id += 1
        return json.dumps({"method": "ping", "req_id": self._next_req_id})

    def stop(self) -> list[Command]:
        commands = [
            self._request("unsubscribe", channel, sorted(symbols), repair=False)
            for channel, symbols in self.subscribed.items()
            if symbols
        ]
        self._stopping = {int(c.reply) for c in commands if isinstance(c.reply, int)}
        return commands

    def stop_confirmed(self) -> bool:
        return self._stopping <= self._done

    # Frames.
    def on_frame(self, payload: bytes, recv_ns: int, out: list[Inbound]) -> bool:
        try:
            frame = _FRAME.decode(payload)
        except msgspec.ValidationError:
            return self._unrouted(payload, recv_ns, out, self._type_of(payload), "unexpected shape")
        except (msgspec.DecodeError, RecursionError):
            return self._unrouted(payload, recv_ns, out, None, "not JSON")
        if isinstance(frame.method, str):
            return self._on_reply(frame, recv_ns, out)
        channel = frame.channel
        if channel == "heartbeat":
            self._stats.control["heartbeat"] += 1
            return False
        if not isinstance(channel, str) or not channel:
            return self._unrouted(payload, recv_ns, out, None, "no channel")
        items = frame.data or []
        symbol = items[0].symbol if items else None
        if channel == "status":
            symbol = STATUS_KEY
        if not isinstance(symbol, str) or not symbol:
            return self._unrouted(payload, recv_ns, out, channel, "no symbol")
        subject = self._subjects.data(channel, symbol)
        if subject is None:
            return self._unrouted(payload, recv_ns, out, channel, "unusable channel or symbol")
        queued = False
        if channel == "book":
            queued = self._continuity.check_book(
                payload, recv_ns, out, self.subscribed.get("book", set())
            )
        elif channel == "trade" and frame.type == "update":
            self._continuity.check_trades(items, recv_ns, out)
        elif channel == "trade":
            for item in items:  # a snapshot of recent trades: no gap check
                self._continuity.note_trade(item)
        self._stats.messages += 1
        self._stats.by_type[_label(channel, MESSAGE_TYPES)] += 1
        out.append(Inbound(subject, payload, recv_ns))
        return queued

    def _type_of(self, payload: bytes) -> str | None:
        try:
            value = _ANY.decode(payload)
        except (msgspec.MsgspecError, RecursionError):
            return None
        channel = value.get("channel") if isinstance(value, dict) else None
        return channel if isinstance(channel, str) and channel else None

    def _unrouted(
        self, payload: bytes, recv_ns: int, out: list[Inbound], kind: str | None, why: str
    ) -> bool:
        self._stats.messages += 1
        self._stats.unrouted += 1
        self._stats.by_type[_label(kind or "invalid", MESSAGE_TYPES)] += 1
        log.debug("conn %d: unrouted message (%s)", self._conn, why)
        out.append(Inbound(self._subjects.unrouted(kind), payload, recv_ns))
        return False

    def _on_reply(self, frame: _Frame, recv_ns: int, out: list[Inbound]) -> bool:
        method = frame.method
        self._stats.control[_label(method, CONTROL_KINDS)] += 1
        if method == "pong":
            return False
        req_id = int_or_none(frame.req_id)
        request = self._requests.get(req_id) if req_id is not None else None
        result = frame.result if isinstance(frame.result, dict) else {}
        if request is None:
            channel, symbol = result.get("channel"), result.get("symbol")
            if frame.success is False:
                log.warning("conn %d: exchange error: %s", self._conn, frame.error)
            elif (
                method in ("subscribe", "unsubscribe")
                and isinstance(channel, str)
                and isinstance(symbol, str)
            ):
                # A late ack of a request already done (an error came first): still true.
                self._on_ack(_Request(method, channel, (symbol,)), symbol, recv_ns, out)
            return True
        if frame.success is True:
            symbol = result.get("symbol")
            if isinstance(symbol, str) and symbol in request.symbols:
                request.acked.add(symbol)
                request.refused.discard(symbol)
                self._on_ack(request, symbol, recv_ns, out)
        else:
            refused = frame.symbol
            if isinstance(refused, str) and refused in request.symbols:
                symbols = [refused] if refused not in request.acked else []
            else:
                symbols = request.unanswered()
            request.refused.update(symbols)
            if symbols:
                self._on_error(request, symbols, frame.error, recv_ns, out)
        if request.done:
            assert req_id is not None
            self._done.add(req_id)
            del self._requests[req_id]
        return True

    def _on_ack(self, request: _Request, symbol: str, recv_ns: int, out: list[Inbound]) -> None:
        symbols = self.subscribed.setdefault(request.channel, set())
        if request.method == "unsubscribe":
            symbols.discard(symbol)
            if request.channel == "book":
                self._continuity.books.pop(symbol, None)
            return
        symbols.add(symbol)
        uncaptured = self._uncaptured.get(request.channel, set())
        if symbol in uncaptured:
            # Refused before (a subscribe_error record): its capture begins here.
            uncaptured.discard(symbol)
            captured = SubscriptionRecord(
                self._conn, None, request.channel, [symbol], [], "retry", recv_ns
            )
            out.append(self._subjects.record(captured))
            log.info(
                "conn %d: subscribed %s %s after a refusal", self._conn, request.channel, symbol
            )
        if request.repair:
            self._continuity.repairing.discard(symbol)
            # Before the fresh snapshot that follows the ack.
            record = ResubscribeRecord(
                self._conn, "checksum", request.channel, None, None, [symbol], recv_ns
            )
            out.append(self._subjects.record(record))
            self._stats.resubscribes += 1
            log.info("conn %d: resubscribed book %s for a fresh snapshot", self._conn, symbol)
        else:
            log.info("conn %d: subscribed %s %s", self._conn, request.channel, symbol)

    def _on_error(
        self,
        request: _Request,
        symbols: list[str],
        error: object,
        recv_ns: int,
        out: list[Inbound],
    ) -> None:
        text = error if isinstance(error, str) else json.dumps(error)
        if request.repair:
            self._continuity.repairing.difference_update(symbols)
        if request.method != "subscribe":
            log.warning(
                "conn %d: %s %s %s refused: %s",
                self._conn,
                request.method,
                request.channel,
                ",".join(symbols),
                text,
            )
            return
        self._stats.subscribe_errors += 1
        log.error(
            "conn %d: subscribe %s %s refused: %s; will retry",
            self._conn,
            request.channel,
            ",".join(symbols),
            text,
        )
        self._refused.setdefault(request.channel, set()).update(symbols)
        self._uncaptured.setdefault(request.channel, set()).update(symbols)
        record = SubscribeErrorRecord(self._conn, request.channel, symbols, text, recv_ns)
        out.append(self._subjects.record(record))


class KrakenVenue:
    kind = "kraken"
    needs_credentials = False
    limits = VenueLimits(markets_per_subscription=50, markets_per_connection=200)

    def default_url(self, environ: Mapping[str, str]) -> str:
        return KRAKEN_URL

    def handshake_headers(self, url: str, credentials: Credentials | None) -> list[tuple[str, str]]:
        return []

    async def subscription_markets(self, config: ConnectorConfig) -> list[str]:
        return list(config.markets)

    def plan(self, config: ConnectorConfig, markets: Sequence[str]) -> list[list[SubscriptionPlan]]:
        if not markets:
            raise StartupRefused(
                f"connector {config.feed!r} (kraken): connector.markets must list symbols, "
                'e.g. ["BTC/USD", "ETH/USD"]'
            )
        unknown = sorted(set(config.channels) - CHANNELS)
        if unknown:
            raise StartupRefused(
                f"connector {config.feed!r} (kraken): unknown channel(s) {', '.join(unknown)}; "
                f"expected some of {', '.join(sorted(CHANNELS))}"
            )
        return plan_connections(
            list(config.channels),
            list(markets),
            config.markets_per_subscription or self.limits.markets_per_subscription,
            config.markets_per_connection or self.limits.markets_per_connection,
        )

    def session(self, context: SessionContext, plans: Sequence[SubscriptionPlan]) -> KrakenSession:
        return KrakenSession(context, plans)


VENUE: Venue = KrakenVenue()
