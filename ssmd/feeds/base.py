"""The venue interface: everything one exchange does differently, as logic without I/O.

The generic engine (`ssmd.connector.connection.Connection`) owns the socket, liveness,
reconnect backoff, sharding, the batch handoff to the publisher and the connect and
disconnect records. A venue module (`ssmd.feeds.{kind}`) exposes one `VENUE` object
that satisfies `Venue`; per connection slot it makes a `Session`, the venue's pure state
machine, which the engine drives:

    engine                                   Session (venue logic, no I/O, no clock)
    ------                                   ---------------------------------------
    connect(url, venue.handshake_headers())
    connect record
    for cmd in session.start(): ─────────────> fresh protocol state; subscribe commands
        send cmd.text; wait until session.replied(cmd.reply) (None: do not wait)
    ready (`up`)
    every frame: session.on_frame(bytes, recv_ns, out) -> appends Inbound to `out`:
        data messages (exact bytes, subject) and discontinuity records, in wire order
    every ping_interval: text = session.keepalive(n); send it, or ws ping if None
    after any on_frame() that returned True: send session.take_commands()
    while session.retries_waiting(): after the retry backoff, send session.take_retries()
    clean stop: send session.stop(); read frames until session.stop_confirmed()
    disconnect record (its reason: see `confirms_stop`); backoff; reconnect (start() again)

Contract every implementation keeps (the engine and the tests rely on it):
- `on_frame` never raises and never drops a frame silently: each frame becomes one or
  more `Inbound` data messages (the fallback subject `{env}.{feed}.json.unrouted.{type}`
  when it cannot be routed), or is counted in `stats.control` (replies, pongs,
  heartbeats: liveness and control are never archived). A data message's payload is the
  exact bytes received; a frame holding several messages (a JSON array) gives one
  `Inbound` per element whose payload is that element's exact byte span, in order.
- Records a venue emits (gap, resubscribe, subscribe_error, subscription) go into `out`
  at the position of the frame that caused them, so the archive shows the discontinuity
  in place.
- A market refused before (a `subscribe_error` record) and retried is marked where its
  capture begins, with reason `retry`, by one of two records:
  - a venue that confirms each subscribe (Kraken) puts a `subscription` record (`added`
    the market, `sid` null) into `out` when the ack arrives, before the market's data;
  - a venue that answers no subscribe (Polymarket) cannot know when a retry took: after
    `take_retries` gave commands, its session puts a `resubscribe` record (the retried
    markets in `markets`) before the first frame it classifies next (`ts_ns` is that
    frame's `recv_ns`), so the archive says a fresh snapshot follows.
  A reader looking for where a refused market's capture began reads either record.
- A session whose venue never confirms an unsubscribe says so with the class attribute
  `confirms_stop = False` (optional; default True): the shutdown `disconnect` record then
  says "shutdown: venue does not confirm unsubscribe" rather than claiming that nothing
  was in flight.
- Commands are sent one at a time, in the order returned; a command with a `reply`
  token is awaited (up to `connector.command_timeout`, else the connection is declared
  lost and reconnected) before the next is sent.
- A `Session` lives as long as its connection slot (across reconnects): `start()` resets
  the per-socket state (subscription ids, command ids, books) and may keep what must
  survive a reconnect (e.g. the last trade id seen, to measure what was missed).
- Nothing here does I/O or reads a clock: time comes in as `recv_ns`. The one I/O seam
  is `Venue.subscription_markets` (e.g. Polymarket's Gamma REST lookup), run once at
  startup by the service, outside the hot path; with `[connector.discovery]` the venue's
  `DiscoverySource` (`ssmd.feeds.discovery`) and the discovery task take its place.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs

from ssmd.connector.layout import Action
from ssmd.connector.publisher import Inbound, record_message
from ssmd.connector.records import DiscontinuityRecord
from ssmd.connector.shards import SubscriptionPlan
from ssmd.subjects import RESERVED_TYPES, encode_token, fallback_subject

if TYPE_CHECKING:
    from ssmd.config import ConnectorConfig
    from ssmd.connector.auth import Credentials
    from ssmd.feeds.kalshi_discovery import BackfillWindow, TradeLedger

__all__ = [
    "MAX_TOKEN_CHARS",
    "Change",
    "Command",
    "ConnectionStats",
    "DynamicSession",
    "Session",
    "SessionContext",
    "Subjects",
    "SubscriptionPlan",
    "Venue",
    "VenueLimits",
    "confirms_stop",
]

# NATS limits a protocol line to 4 KiB; a longer subject would be refused forever.
MAX_TOKEN_CHARS = 256
_TOKEN_CACHE_LIMIT = 100_000


@attrs.define
class ConnectionStats:
    """Counters of one connection slot, kept across reconnects; read by /metrics and logs.

    The engine counts connects, disconnects, lost and last_message_ns. The session counts
    the rest as it classifies frames:
    - `messages`: data messages handed on (one per JSON array element), `by_type[type]`
      beside it (the exchange's type, or "invalid" when there is none);
    - `unrouted`: those of them that went to the fallback subject;
    - `control[kind]`: frames that are not data: command replies, errors, pongs,
      heartbeats (e.g. control["heartbeat"], control["pong"], control["subscribed"]);
    - `gaps` (every gap record, counted with `gap(reason)`, which keeps `gap_reasons`
      beside it), `resubscribes` (every repair resubscription completed),
      `subscribe_errors` (every refused subscription).
    """

    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    messages: int = 0
    unrouted: int = 0
    gaps: int = 0
    resubscribes: int = 0
    subscribe_errors: int = 0
    lost: int = 0
    last_message_ns: int = 0
    by_type: collections.Counter[str] = attrs.field(factory=collections.Counter)
    control: collections.Counter[str] = attrs.field(factory=collections.Counter)
    gap_reasons: collections.Counter[str] = attrs.field(factory=collections.Counter)

    def gap(self, reason: str) -> None:
        """Count one gap record, by its `reason` (e.g. seq, checksum, trade_id)."""
        self.gaps += 1
        self.gap_reasons[reason] += 1

    # Live subscription changes (`DynamicSession`) by outcome: `ok`, `error:<code>`.
    changes: collections.Counter[str] = attrs.field(factory=collections.Counter)
    # Trades whose id repeats or precedes the symbol's last one (Kraken): no gap.
    trade_ids_behind: int = 0


@attrs.frozen(slots=True)
class Command:
    """One frame the client sends, and how to know it was answered.

    `text`: the exact text frame. `reply`: a hashable token that `Session.replied` reports
    once the exchange has answered (Kalshi: the command `id`; Kraken: the `req_id`, done
    once every symbol is acked or refused); None when the venue never answers (Polymarket),
    so the engine sends the next command at once. `what`: a short description for logs
    and the "no reply to ..." reason, e.g. "subscribe ticker (3 markets)".
    """

    text: str
    reply: Hashable | None = None
    what: str = ""


class Subjects:
    """Subject building for one `{env}.{feed}`, with encoded tokens cached.

    Data goes to `{env}.{feed}.json.{type}.{key}`; both tokens are percent-encoded with
    `ssmd.subjects.encode_token` (so `BTC/USD` stays `BTC/USD`, a `.` becomes `%2E`).
    """

    def __init__(self, env: str, feed: str) -> None:
        self.env = env
        self.feed = feed
        self.prefix = f"{env}.{feed}.json."
        self._tokens: dict[str, str] = {}

    def token(self, text: str) -> str:
        """`encode_token(text)`, cached. `text` must be non-empty."""
        token = self._tokens.get(text)
        if token is None:
            token = encode_token(text)
            if len(self._tokens) >= _TOKEN_CACHE_LIMIT:
                self._tokens.clear()
            self._tokens[text] = token
        return token

    def data(self, type_token: str, key: str) -> str | None:
        """The data subject for a type and a routing key, or None when they cannot make
        one (empty, longer than MAX_TOKEN_CHARS, or a type that is a reserved ssmd token):
        the caller then uses `unrouted`."""
        if (
            not type_token
            or not key
            or len(type_token) > MAX_TOKEN_CHARS
            or len(key) > MAX_TOKEN_CHARS
            or type_token in RESERVED_TYPES
        ):
            return None
        return self.prefix + self.token(type_token) + "." + self.token(key)

    def unrouted(self, message_type: str | None) -> str:
        """`{env}.{feed}.json.unrouted.{type}` (`invalid` for no or an over-long type)."""
        usable = message_type if message_type and len(message_type) <= MAX_TOKEN_CHARS else None
        return fallback_subject(self.env, self.feed, usable)

    def record(self, record: DiscontinuityRecord) -> Inbound:
        """A discontinuity record as a message for `out`."""
        return record_message(self.env, self.feed, record)


@attrs.frozen
class SessionContext:
    """What a session knows about where it runs. `conn` is the slot's index (the `conn`
    field of records); `config` is its whole `[connector]`/`[[connector]]` table, for
    venue keys (`depth`, `rest_url`, ...); `stats` is the slot's counters."""

    conn: int
    subjects: Subjects
    stats: ConnectionStats
    config: ConnectorConfig
    # Where a venue hands the messages market discovery follows (Kalshi:
    # `market_lifecycle_v2`), exact bytes; must not block (None: discovery is off).
    events: Callable[[bytes], None] | None = None
    # Trade backfill (Kalshi): the live trade ids, shared by every connection of the
    # feed, and where a loss on a `trade` subscription asks for the lost window (conn,
    # window). None: no backfill.
    trades: TradeLedger | None = None
    backfill: Callable[[int, BackfillWindow], None] | None = None
    # Market discovery: the subscription units of a market the planner placed (Polymarket:
    # a condition id's token ids). None: a market is its own unit.
    units: Callable[[str], tuple[str, ...]] | None = None


class Session(Protocol):
    """One connection slot's protocol state machine. See the module docstring."""

    def start(self) -> list[Command]:
        """A new socket is open: reset per-socket state and give the subscribe commands
        for this slot's plans, in order (Polymarket: the one initial `assets_ids` frame)."""
        ...

    def on_frame(self, payload: bytes, recv_ns: int, out: list[Inbound]) -> bool:
        """Classify one received frame (text frames arrive UTF-8 encoded, binary as is).

        Append its data messages and any records to `out`, count it in the context's
        stats. Return True when the frame may have answered a command or queued new
        commands: a reply, or data whose continuity check queued a repair (the engine
        then checks `replied` and `take_commands`); False otherwise (data, liveness).
        Never raises.
        """
        ...

    def replied(self, token: Hashable) -> bool:
        """Whether the command whose `reply` is `token` has been fully answered
        (success or error: an error is handled, and recorded, by the session)."""
        ...

    def take_commands(self) -> list[Command]:
        """Commands due now, e.g. the unsubscribe + subscribe that repair a gap (Kalshi
        snapshot channels; a Kraken symbol after a checksum mismatch). Taking them
        empties the queue; they are sent in order."""
        ...

    def retries_waiting(self) -> bool:
        """Whether subscriptions the exchange refused wait for a retry."""
        ...

    def take_retries(self) -> list[Command]:
        """The commands that retry refused subscriptions; the engine calls this after
        the subscribe-retry backoff (5 s doubling to 120 s) has passed."""
        ...

    def keepalive(self, count: int) -> str | None:
        """The keepalive to send every `ping_interval` (`count` = 1, 2, ...): a text frame
        (Polymarket `PING`; Kraken `{"method":"ping","req_id":n}`), whose answer is
        classified by `on_frame` as control; or None for a WebSocket ping whose pong the
        engine awaits (Kalshi)."""
        ...

    def stop(self) -> list[Command]:
        """Clean stop: the commands that end every subscription on this socket."""
        ...

    def stop_confirmed(self) -> bool:
        """True once every subscription ended by `stop()` is confirmed (at once for a
        venue that never confirms), so nothing more is in flight on this socket."""
        ...


def confirms_stop(session: Session) -> bool:
    """Whether the session's venue confirms an unsubscribe (`stop_confirmed` then means
    the exchange said so): the optional attribute `confirms_stop`, True when absent."""
    return bool(getattr(session, "confirms_stop", True))


@attrs.frozen
class Change:
    """One planner action (`ssmd.connector.layout`) for a live connection, and why
    (`discovery`, `lifecycle:<event_type>`, `reconcile`, `error:<code>`): the reason
    goes into the `ssmd.subscription` record that the reply produces."""

    action: Action
    reason: str


@runtime_checkable
class DynamicSession(Session, Protocol):
    """A session whose subscriptions change while it is connected (optional: the engine
    checks `isinstance(session, DynamicSession)`; other venues keep the plain protocol).

    The session keeps the wanted state of every planner slot, so a reconnect's `start()`
    subscribes what is wanted now. `apply` updates that state and gives the command that
    carries the change to the exchange (None when nothing is to be sent now, e.g. the
    slot's subscription is refused and waiting for its retry). The reply publishes an
    `ssmd.subscription` record in place; a market-limit refusal is handed back through
    `take_refused` so the planner can split the subscription.
    """

    def apply(self, change: Change) -> Command | None: ...

    def take_refused(self) -> list[tuple[int, tuple[str, ...], bool, int]]:
        """(slot, markets, dropped, op) the exchange refused as over its market limit, since
        last asked; `dropped` when a subscribe was refused, so the slot is gone from the
        session; `op` the planner's id of the add refused (its `AddMarkets.op`)."""
        ...

    def sid_markets(self) -> dict[int, tuple[str, int]]:
        """Each live subscription's channel and market count (0: all markets)."""
        ...


@runtime_checkable
class DropsMarkets(Protocol):
    """Optional beside `DynamicSession`: a session that drops markets the exchange will
    not take (Kalshi errors 14/16, or a market refused alone too often) hands them back,
    so the planner forgets them and a later reconciliation places them again."""

    def take_dropped(self) -> list[tuple[int, tuple[str, ...], str]]:
        """(slot, markets, reason) dropped from planner slots since last asked; `reason`
        goes into the `ssmd.subscription` records of the planner's follow-up changes."""
        ...


@attrs.frozen
class VenueLimits:
    """Sharding defaults, used when the config leaves `markets_per_subscription` /
    `markets_per_connection` unset."""

    markets_per_subscription: int
    markets_per_connection: int


class Venue(Protocol):
    """A venue module's `VENUE`: static facts and factories, no I/O except
    `subscription_markets`."""

    kind: str
    """The `kind` in the config, and the module's name: `ssmd.feeds.{kind}`."""

    needs_credentials: bool
    """Whether `handshake_headers` needs Kalshi credentials (loaded from the env)."""

    limits: VenueLimits

    def default_url(self, environ: Mapping[str, str]) -> str:
        """The WebSocket URL when `connector.url` is unset (Kalshi: KALSHI_USE_DEMO)."""
        ...

    def handshake_headers(self, url: str, credentials: Credentials | None) -> list[tuple[str, str]]:
        """Extra headers of the WebSocket upgrade to `url` (Kalshi: the signature);
        called at every connect. Venues without auth return []."""
        ...

    async def subscription_markets(self, config: ConnectorConfig) -> list[str]:
        """The subscription units for the configured `markets`: Kalshi tickers and
        Kraken symbols as given; Polymarket condition ids resolved to their token ids
        (Gamma REST at `config.rest_url`). May raise `StartupRefused` with one line
        (a definitive answer), or `StartupUnavailable` (a transient failure: the
        connector retries in the feed's own task while the other feeds run).
        Not called with `[connector.discovery]`: the venue's `DiscoverySource` then finds
        the markets (`ssmd.feeds.discovery`)."""
        ...

    def plan(self, config: ConnectorConfig, markets: Sequence[str]) -> list[list[SubscriptionPlan]]:
        """Split channels x markets into connections of subscriptions, honouring the
        venue's limits (`ssmd.connector.shards.plan_connections` does the usual split).
        Raise `StartupRefused` when nothing can be subscribed."""
        ...

    def session(self, context: SessionContext, plans: Sequence[SubscriptionPlan]) -> Session:
        """The protocol state machine for one connection slot and its plans."""
        ...
