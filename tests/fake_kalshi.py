"""A fake Kalshi WebSocket exchange for tests and benchmarks (trio-websocket server).

It checks the signed handshake like Kalshi (401 on a bad key, a bad signature or a
timestamp more than 5 s off), answers subscribe/unsubscribe/update_subscription, and
lets a test script the rest: send data with per-sid `seq`, skip `seq`, send garbage,
drop the TCP connection, or go silent (a black-holed, half-open socket).
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer

WS_PATH = "/trade-api/ws/v2"
API_KEY = "0d5c8a4e-1111-4222-8333-944455556666"


@functools.cache
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def other_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey, pkcs1: bool = False) -> str:
    fmt = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if pkcs1
        else serialization.PrivateFormat.PKCS8
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


class GatedStream(trio.abc.Stream):
    """A server-side TCP stream that can be black-holed: nothing in, nothing out."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.silent = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.silent:
            await trio.lowlevel.checkpoint()
            return
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.silent:
            await trio.sleep_forever()
        data = await self.inner.receive_some(max_bytes)
        if self.silent:
            await trio.sleep_forever()
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


class GatedListener(trio.abc.Listener[GatedStream]):
    def __init__(self, inner: trio.SocketListener) -> None:
        self.inner = inner

    @property
    def port(self) -> int:
        return int(self.inner.socket.getsockname()[1])

    async def accept(self) -> GatedStream:
        return GatedStream(await self.inner.accept())

    async def aclose(self) -> None:
        await self.inner.aclose()


@attrs.define
class Subscription:
    sid: int
    channel: str
    markets: list[str]
    active: bool = True


class FakeSession:
    """One accepted client connection."""

    def __init__(self, exchange: FakeKalshi, ws: WebSocketConnection, gate: GatedStream) -> None:
        self.exchange = exchange
        self.ws = ws
        self.gate = gate
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
        await self.ws.send_message(frame)
        self.exchange.sent.append(frame.encode() if isinstance(frame, str) else frame)

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

    def skip_seq(self, sid: int, count: int = 1) -> None:
        self.seq[sid] = self.seq.get(sid, 0) + count

    def sub_for(self, channel: str, active: bool = True) -> Subscription:
        for sub in self.subscriptions.values():
            if sub.channel == channel and sub.active == active:
                return sub
        raise KeyError(channel)

    async def drop(self) -> None:
        """Close the TCP connection without a WebSocket close handshake."""
        await self.gate.inner.aclose()

    def go_silent(self) -> None:
        """Stop all traffic both ways without closing: pings go unanswered."""
        self.gate.silent = True

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self.changed.wait()

    async def _serve(self) -> None:
        try:
            while True:
                text = await self.ws.get_message()
                command = json.loads(text)
                if not self.commands:
                    self.exchange.sessions.append(self)
                self.commands.append(command)
                await self.exchange._answer(self, command)
                self._touch()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            self._touch()


OnSubscribe = Callable[[FakeSession, Subscription], Awaitable[None]]


class FakeKalshi:
    def __init__(
        self,
        public_key: rsa.RSAPublicKey | None = None,
        api_key: str = API_KEY,
        *,
        max_skew_ms: int = 5000,
    ) -> None:
        self.public_key = public_key or private_key().public_key()
        self.api_key = api_key
        self.max_skew_ms = max_skew_ms
        # Sessions that sent a command (a bare credential check does not count).
        self.sessions: list[FakeSession] = []
        self.accepted = 0
        self.rejections: list[str] = []
        self.sent: list[bytes] = []
        self.refuse_channels: set[str] = set()
        self.mute_commands = False
        self.on_subscribe: OnSubscribe | None = None
        self._sids = itertools.count(1)
        self._listener: GatedListener | None = None
        self._changed = trio.Event()

    @property
    def url(self) -> str:
        assert self._listener is not None
        return f"ws://127.0.0.1:{self._listener.port}{WS_PATH}"

    def _touch(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    async def session(self, index: int, timeout: float = 5.0) -> FakeSession:
        await self.wait_until(lambda: len(self.sessions) > index, timeout)
        return self.sessions[index]

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self._listener = GatedListener(listeners[0])
        # WebSocketServer accepts any trio Listener; its annotation names only two.
        gated: list[Any] = [self._listener]
        server = WebSocketServer(self._handle, gated, max_message_size=16 * 1024 * 1024)
        await server.run(task_status=task_status)

    def _check_auth(self, request: WebSocketRequest) -> str | None:
        """None when the handshake is properly signed, else why not."""
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        if headers.get("kalshi-access-key") != self.api_key:
            return "unknown API key"
        ts = headers.get("kalshi-access-timestamp", "")
        if not ts.isdigit():
            return "missing timestamp"
        if abs(int(ts) - int(time.time() * 1000)) > self.max_skew_ms:
            return "stale timestamp"
        try:
            signature = base64.b64decode(headers.get("kalshi-access-signature", ""), validate=True)
            path = request.path.split("?", 1)[0]
            self.public_key.verify(
                signature,
                f"{ts}GET{path}".encode(),
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                hashes.SHA256(),
            )
        except (InvalidSignature, ValueError):
            return "invalid signature"
        return None

    async def _handle(self, request: WebSocketRequest) -> None:
        problem = self._check_auth(request)
        if problem is not None:
            self.rejections.append(problem)
            self._touch()
            await request.reject(401, body=problem.encode())
            return
        ws = await request.accept()
        gate = ws._stream
        assert isinstance(gate, GatedStream)
        session = FakeSession(self, ws, gate)
        self.accepted += 1
        self._touch()
        await session._serve()

    async def _answer(self, session: FakeSession, command: dict[str, Any]) -> None:
        if self.mute_commands:
            return
        cid = command.get("id")
        cmd = command.get("cmd")
        params = command.get("params", {})
        if cmd == "subscribe":
            channel = params["channels"][0]
            if channel in self.refuse_channels:
                await session.ws.send_message(
                    json.dumps(
                        {"type": "error", "id": cid, "msg": {"code": 8, "msg": "Unknown channel"}}
                    )
                )
                return
            sid = next(self._sids)
            sub = Subscription(sid, channel, list(params.get("market_tickers", [])))
            session.subscriptions[sid] = sub
            await session.ws.send_message(
                json.dumps(
                    {"type": "subscribed", "id": cid, "msg": {"channel": channel, "sid": sid}}
                )
            )
            if self.on_subscribe is not None:
                await self.on_subscribe(session, sub)
        elif cmd == "unsubscribe":
            for sid in params.get("sids", []):
                if sid in session.subscriptions:
                    session.subscriptions[sid].active = False
                await session.ws.send_message(
                    json.dumps(
                        {
                            "type": "unsubscribed",
                            "id": cid,
                            "sid": sid,
                            "seq": session.seq.get(sid, 0),
                        }
                    )
                )
        elif cmd == "update_subscription":
            await session.ws.send_message(
                json.dumps({"type": "ok", "id": cid, "sid": params["sids"][0]})
            )
        else:
            await session.ws.send_message(
                json.dumps(
                    {"type": "error", "id": cid, "msg": {"code": 5, "msg": "Unknown command"}}
                )
            )


def trade_msg(ticker: str, n: int) -> dict[str, Any]:
    return {
        "trade_id": f"t-{n:08d}",
        "market_ticker": ticker,
        "yes_price": 40 + n % 50,
        "no_price": 60 - n % 50,
        "yes_price_dollars": "0.4500",
        "no_price_dollars": "0.5500",
        "count": 1 + n % 7,
        "count_fp": f"{1 + n % 7}.00",
        "taker_side": "yes" if n % 2 else "no",
        "ts": 1773331880 + n,
    }


def ticker_msg(ticker: str, n: int) -> dict[str, Any]:
    return {
        "market_id": f"2ee2-{n}",
        "market_ticker": ticker,
        "price": 12,
        "yes_bid": 11,
        "yes_ask": 12,
        "price_dollars": "0.1200",
        "volume": 351970 + n,
        "open_interest": 182646,
        "ts": 1732579880 + n,
        "Clock": 6598272994 + n,
    }
