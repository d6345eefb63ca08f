"""A Kalshi WebSocket exchange on a local port, speaking the protocol in kalshi-ws.md.

It checks the signed handshake (HTTP 401 on a wrong key, a bad signature or a stale
timestamp), answers `subscribe`, `unsubscribe` and `update_subscription` with ids and
sids, numbers data with `seq` per sid, and has the fault switches a test needs:
`ExchangeSession.skip_seq` (a seq break), `send` of any frame (garbage), `drop` (TCP
closed without a close handshake), `go_silent` (a black-holed, half-open socket),
`refuse_channels`, `mute_commands`, and for live changes `market_limit` (26),
`throttle_updates` (27) and `unknown_markets` (16). What it streams is left to a subclass
(`MarketExchange`, the demo's market) or to the caller (tests script `send_data`; the
paced fault-suite exchange sends numbered messages).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio
from cryptography.hazmat.primitives.asymmetric import rsa
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer

from ssmd.simulators.kalshi.rest import MAX_CLOCK_SKEW_MS, KalshiMarkets, check_signature
from ssmd.simulators.wsserver import GatedListener, GatedStream

log = logging.getLogger("ssmd.simulators.kalshi")

WS_PATH = "/trade-api/ws/v2"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
PING_PAYLOAD = b"heartbeat"
# Channels the exchange knows; others are refused with ERROR_UNKNOWN_CHANNEL.
KNOWN_CHANNELS = frozenset(
    {"ticker", "ticker_v2", "trade", "orderbook_delta", "market_lifecycle_v2", "fill"}
)
ERROR_UNPROCESSABLE = (1, "Unable to process message")
ERROR_PARAMS_REQUIRED = (2, "Params required")
ERROR_UNKNOWN_COMMAND = (5, "Unknown command")
ERROR_UNKNOWN_SID = (7, "Subscription not found")
ERROR_UNKNOWN_CHANNEL = (8, "Unknown channel name")
ERROR_MARKET_NOT_FOUND = (16, "Market not found")
ERROR_BUFFER_OVERFLOW = (25, "Subscription buffer overflow")
ERROR_MARKET_LIMIT = (26, "Subscription market limit exceeded")
ERROR_TOO_MANY_REQUESTS = (27, "Too many requests")


def check_handshake(
    request: WebSocketRequest,
    public_key: rsa.RSAPublicKey,
    api_key: str,
    max_skew_ms: int = MAX_CLOCK_SKEW_MS,
) -> str | None:
    """None when the upgrade request is signed like Kalshi wants, else why it is not."""
    headers = {name.decode().lower(): value.decode() for name, value in request.headers}
    path = request.path.split("?", 1)[0]
    return check_signature(headers, path, public_key, api_key, max_skew_ms)


@attrs.define
class Subscription:
    sid: int
    channel: str
    markets: list[str]
    active: bool = True


@attrs.define
class ExchangeStats:
    connections: int = 0
    rejected: int = 0
    messages: int = 0
    drops: int = 0


class LostClient(Exception):
    """The client stopped answering pings."""


class ExchangeSession:
    """One accepted client connection: its commands, subscriptions and `seq` per sid."""

    def __init__(
        self,
        exchange: KalshiExchange,
        ws: WebSocketConnection,
        gate: GatedStream,
        rng: random.Random,
    ) -> None:
        self.exchange = exchange
        self.ws = ws
        self.gate = gate
        self.rng = rng
        self.commands: list[dict[str, Any]] = []
        self.subscriptions: dict[int, Subscription] = {}
        self.seq: dict[int, int] = {}
        self.closed = trio.Event()
        self.changed = trio.Event()

    def _touch(self) -> None:
        self.changed.set()
        self.changed = trio.Event()
        self.exchange._touch()

    async def send(self, frame: str | bytes) -> None:
        """Send any frame as data (garbage included); `on_send` sees it."""
        await self.ws.send_message(frame)
        self.exchange.stats.messages += 1
        if self.exchange.on_send is not None:
            self.exchange.on_send(self, frame)

    async def send_data(
        self, message_type: str, sid: int, msg: dict[str, Any], *, with_seq: bool = True
    ) -> bytes:
        """Send a data message on `sid`, with the next `seq` of that sid when asked."""
        envelope: dict[str, Any] = {"type": message_type, "sid": sid}
        if with_seq:
            self.seq[sid] = self.seq.get(sid, 0) + 1
            envelope["seq"] = self.seq[sid]
        envelope["msg"] = msg
        text = json.dumps(envelope, separators=(",", ":"))
        await self.send(text)
        return text.encode()

    def next_seq(self, sid: int) -> int:
        self.seq[sid] = self.seq.get(sid, 0) + 1
        return self.seq[sid]

    def skip_seq(self, sid: int, count: int = 1) -> None:
        """A seq break: the next message on `sid` skips `count` numbers."""
        self.seq[sid] = self.seq.get(sid, 0) + count

    def sub_for(self, channel: str, active: bool = True) -> Subscription:
        for sub in self.subscriptions.values():
            if sub.channel == channel and sub.active == active:
                return sub
        raise KeyError(channel)

    async def drop(self) -> None:
        """Close the TCP connection without a WebSocket close handshake."""
        self.exchange.stats.drops += 1
        await self.gate.inner.aclose()

    def go_silent(self) -> None:
        """Stop all traffic both ways without closing: pings go unanswered."""
        self.gate.silent = True

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self.changed.wait()

    async def reply(self, envelope: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(envelope, separators=(",", ":")))

    async def reply_error(self, command_id: object, error: tuple[int, str]) -> None:
        code, text = error
        await self.reply({"type": "error", "id": command_id, "msg": {"code": code, "msg": text}})

    async def serve_commands(self) -> None:
        try:
            while True:
                text = await self.ws.get_message()
                try:
                    command = json.loads(text)
                except ValueError:
                    command = None
                if not self.commands:
                    self.exchange.sessions.append(self)
                if not isinstance(command, dict):
                    await self.reply_error(None, ERROR_UNPROCESSABLE)
                    continue
                self.commands.append(command)
                try:
                    await self._answer(command)
                except (TypeError, ValueError, KeyError, AttributeError):
                    await self.reply_error(command.get("id"), ERROR_UNPROCESSABLE)
                self._touch()
        finally:
            self.closed.set()
            self._touch()

    async def _answer(self, command: dict[str, Any]) -> None:
        if self.exchange.mute_commands:
            return
        command_id = command.get("id")
        params = command.get("params")
        if not isinstance(params, dict):
            params = {}
        match command.get("cmd"):
            case "subscribe":
                await self._subscribe(command_id, params)
            case "unsubscribe":
                for sid in params.get("sids") or []:
                    sub = self.subscriptions.get(sid) if isinstance(sid, int) else None
                    if sub is None or not sub.active:
                        await self.reply_error(command_id, ERROR_UNKNOWN_SID)
                        continue
                    sub.active = False
                    await self.reply(
                        {
                            "type": "unsubscribed",
                            "id": command_id,
                            "sid": sid,
                            "seq": self.seq.get(sid, 0),
                        }
                    )
                    await self.exchange.unsubscribed(self, sub)
            case "update_subscription":
                await self._update(command_id, params)
            case _:
                await self.reply_error(command_id, ERROR_UNKNOWN_COMMAND)

    async def _subscribe(self, command_id: object, params: dict[str, Any]) -> None:
        channels = params.get("channels") or []
        markets = params.get("market_tickers") or (
            [params["market_ticker"]] if params.get("market_ticker") else []
        )
        markets = [m for m in dict.fromkeys(markets) if self.exchange.knows_market(m)]
        if await self._refuse_unknown(command_id, markets):
            return
        for channel in channels:
            if channel in self.exchange.refuse_channels or channel not in KNOWN_CHANNELS:
                await self.reply_error(command_id, ERROR_UNKNOWN_CHANNEL)
                continue
            if channel == "orderbook_delta" and not markets:
                await self.reply_error(command_id, ERROR_PARAMS_REQUIRED)
                continue
            limit = self.exchange.market_limit
            if limit is not None and len(markets) > limit:
                await self.reply_error(command_id, ERROR_MARKET_LIMIT)
                continue
            sub = Subscription(next(self.exchange.sids), channel, list(markets))
            self.subscriptions[sub.sid] = sub
            await self.reply(
                {
                    "type": "subscribed",
                    "id": command_id,
                    "msg": {"channel": channel, "sid": sub.sid},
                }
            )
            await self.exchange.subscribed(self, sub)

    async def _update(self, command_id: object, params: dict[str, Any]) -> None:
        sids = params.get("sids") or []
        sub = self.subscriptions.get(sids[0]) if sids and isinstance(sids[0], int) else None
        if sub is None or not sub.active:
            await self.reply_error(command_id, ERROR_UNKNOWN_SID)
            return
        markets = [m for m in params.get("market_tickers") or [] if self.exchange.knows_market(m)]
        added: list[str] = []
        if params.get("action") != "delete_markets":
            added = [m for m in dict.fromkeys(markets) if m not in sub.markets]
            if await self._refuse_unknown(command_id, added):
                return
        limit = self.exchange.market_limit
        if limit is not None and len(sub.markets) + len(added) > limit:
            await self.reply_error(command_id, ERROR_MARKET_LIMIT)
            return
        if self.exchange.throttle_updates > 0:
            self.exchange.throttle_updates -= 1
            await self.reply_error(command_id, ERROR_TOO_MANY_REQUESTS)
            return
        if params.get("action") == "delete_markets":
            sub.markets = [m for m in sub.markets if m not in markets]
        else:
            sub.markets.extend(added)
        await self.exchange.updated(self, sub, added)
        # The sid's full market list after the change, and its position: the reply
        # takes a seq of its own, so a client that ignores it sees a false gap.
        await self.reply(
            {
                "type": "ok",
                "id": command_id,
                "sid": sub.sid,
                "seq": self.next_seq(sub.sid),
                "msg": {"market_tickers": list(sub.markets)},
            }
        )

    async def _refuse_unknown(self, command_id: object, markets: list[str]) -> bool:
        """Error 16 naming the first market of `unknown_markets` in a subscribe or add."""
        unknown = next((m for m in markets if m in self.exchange.unknown_markets), None)
        if unknown is None:
            return False
        code, text = ERROR_MARKET_NOT_FOUND
        body = {"code": code, "msg": text, "market_ticker": unknown}
        await self.reply({"type": "error", "id": command_id, "msg": body})
        return True

    async def drop_subscription(self, sid: int, *, named: bool = True) -> None:
        """Error 25: the exchange ends a subscription whose reader fell behind (`named`:
        the error says which sid; it may not)."""
        self.subscriptions[sid].active = False
        code, text = ERROR_BUFFER_OVERFLOW
        error: dict[str, Any] = {"type": "error", "msg": {"code": code, "msg": text}}
        if named:
            error["sid"] = sid
        await self.reply(error)
        await self.exchange.unsubscribed(self, self.subscriptions[sid])

    async def ping(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            with trio.move_on_after(interval):
                await self.ws.ping(PING_PAYLOAD)
                continue
            raise LostClient(f"no pong within {interval:g}s")


OnSubscribe = Callable[[ExchangeSession, Subscription], Awaitable[None]]
OnSend = Callable[[ExchangeSession, str | bytes], None]


class KalshiExchange:
    """Serve with `await nursery.start(exchange.serve)` (or `listen()` first, to know the
    `url` before serving); sessions appear in `sessions` once they send a command."""

    def __init__(
        self,
        public_key: rsa.RSAPublicKey,
        api_key: str,
        *,
        markets: Sequence[str] | None = None,
        ping_interval: float | None = None,
        max_skew_ms: int = MAX_CLOCK_SKEW_MS,
        seed: int = 0,
        catalogue: KalshiMarkets | None = None,
    ) -> None:
        self.public_key = public_key
        # The market set the REST side (`KalshiRest`) serves too; with it, the markets
        # open and settle while the exchange runs (`open_markets`, `settle_markets`).
        self.catalogue = catalogue
        self.api_key = api_key
        self.ping_interval = ping_interval
        self.max_skew_ms = max_skew_ms
        self.rng = random.Random(seed)
        self.stats = ExchangeStats()
        self.sids = itertools.count(1)
        self.sessions: list[ExchangeSession] = []
        self.rejections: list[str] = []
        self.refuse_channels: set[str] = set()
        self.mute_commands = False
        # Fault switches of live subscription changes: a market limit per subscription
        # (error 26), and the next update commands refused as too many (error 27).
        self.market_limit: int | None = None
        self.throttle_updates = 0
        # Markets a subscribe or add is refused for with error 16 (market not found),
        # though REST lists them.
        self.unknown_markets: set[str] = set()
        self.on_subscribe: OnSubscribe | None = None
        self.on_send: OnSend | None = None
        # None: every market ticker is known.
        self._known: frozenset[str] | None = frozenset(markets) if markets is not None else None
        self._listener: GatedListener | None = None
        self._changed = trio.Event()

    @property
    def accepted(self) -> int:
        return self.stats.connections

    @property
    def url(self) -> str:
        assert self._listener is not None, "listen() or serve() first"
        return f"ws://127.0.0.1:{self._listener.port}{WS_PATH}"

    def knows_market(self, market: object) -> bool:
        if not isinstance(market, str):
            return False
        if self.catalogue is not None:
            return market in self.catalogue.markets
        return self._known is None or market in self._known

    async def open_markets(self, tickers: Sequence[str]) -> None:
        """New markets open: in the catalogue (REST) and as `created` lifecycle events."""
        assert self.catalogue is not None, "open_markets needs a catalogue"
        self.catalogue.open(tickers)
        self.markets_changed(list(tickers), [])
        for ticker in tickers:
            event = ticker.rsplit("-", 1)[0]
            await self.lifecycle(
                {
                    "event_type": "created",
                    "market_ticker": ticker,
                    "open_ts": int(time.time()),
                    "close_ts": int(time.time()) + 3600,
                    "additional_metadata": {"event_ticker": event, "title": ticker},
                }
            )

    async def settle_markets(self, tickers: Sequence[str], *, announce: bool = True) -> None:
        """Markets finish: `determined` in the catalogue and, when `announce`d, as a
        lifecycle event (Kalshi sends none for a market closing at its close time)."""
        assert self.catalogue is not None, "settle_markets needs a catalogue"
        for ticker in tickers:
            self.catalogue.set_status(ticker, "determined")
        self.markets_changed([], list(tickers))
        if announce:
            for ticker in tickers:
                await self.lifecycle(
                    {
                        "event_type": "determined",
                        "market_ticker": ticker,
                        "result": "yes",
                        "determination_ts": int(time.time()),
                    }
                )

    async def lifecycle(self, msg: dict[str, Any]) -> None:
        """One `market_lifecycle_v2` message to every lifecycle subscription."""
        for session in list(self.sessions):
            for sub in list(session.subscriptions.values()):
                if sub.active and sub.channel == "market_lifecycle_v2":
                    with trio.move_on_after(5.0):
                        with contextlib.suppress(
                            ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError
                        ):
                            await session.send_data("market_lifecycle_v2", sub.sid, msg)

    def markets_changed(self, opened: list[str], finished: list[str]) -> None:
        """Hook: markets opened or finished (the market stream follows them)."""

    def _touch(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    async def session(self, index: int, timeout: float = 5.0) -> ExchangeSession:
        await self.wait_until(lambda: len(self.sessions) > index, timeout)
        return self.sessions[index]

    async def listen(self) -> str:
        """Bind a free loopback port; connections wait in the backlog until `serve`."""
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self._listener = GatedListener(listener)
        return self.url

    async def serve(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        if self._listener is None:
            await self.listen()
        # WebSocketServer accepts any trio Listener; its annotation names only two.
        listeners: list[Any] = [self._listener]
        server = WebSocketServer(self._handle, listeners, max_message_size=MAX_MESSAGE_BYTES)
        await self.started()
        await server.run(task_status=task_status)

    run = serve

    async def _handle(self, request: WebSocketRequest) -> None:
        problem = check_handshake(request, self.public_key, self.api_key, self.max_skew_ms)
        if problem is not None:
            self.stats.rejected += 1
            self.rejections.append(problem)
            self._touch()
            log.warning("simulator: handshake rejected (401): %s", problem)
            await request.reject(401, body=problem.encode())
            return
        ws = await request.accept()
        gate = ws._stream
        assert isinstance(gate, GatedStream)
        session = ExchangeSession(self, ws, gate, random.Random(self.rng.getrandbits(64)))
        self.stats.connections += 1
        self._touch()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.serve_commands)
                if self.ping_interval is not None:
                    nursery.start_soon(session.ping, self.ping_interval)
                await self.accepted_session(session, nursery)
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except* LostClient as group:
            log.warning("simulator: %s", group.exceptions[0])

    # Hooks for what an exchange streams; the defaults stream nothing.

    async def started(self) -> None:
        """Called once when serving starts."""

    async def accepted_session(self, session: ExchangeSession, nursery: trio.Nursery) -> None:
        """A connection was accepted: start its streaming tasks in `nursery`."""

    async def subscribed(self, session: ExchangeSession, sub: Subscription) -> None:
        """After the `subscribed` reply: e.g. send snapshots."""
        if self.on_subscribe is not None:
            await self.on_subscribe(session, sub)

    async def unsubscribed(self, session: ExchangeSession, sub: Subscription) -> None:
        """After the `unsubscribed` reply."""

    async def updated(self, session: ExchangeSession, sub: Subscription, added: list[str]) -> None:
        """Markets were added to (or removed from) `sub`, before the `ok` reply."""
