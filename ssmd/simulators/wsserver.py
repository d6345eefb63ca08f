"""What every simulated venue shares: a loopback WebSocket server whose connections can be
dropped, black-holed or fed garbage, and a record of every frame each one sent.

A venue simulator subclasses `SimServer` and implements `serve_session`. Tests compare
what the recorder stored with `SimServer.sent` byte for byte: each `SentFrame` says which
connection sent it and whether it was data (to be archived), control (a reply to a
command), keepalive (liveness only) or garbage (a deliberate fault).
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer

log = logging.getLogger("ssmd.simulators")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
OUTBOX_FRAMES = 10_000


class FrameKind(enum.Enum):
    DATA = "data"
    CONTROL = "control"
    KEEPALIVE = "keepalive"
    GARBAGE = "garbage"


@attrs.frozen(slots=True)
class SentFrame:
    session: int  # 1 for the first connection, 2 for the next, ...
    data: bytes
    kind: FrameKind
    binary: bool = False


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


class SimSession:
    """One accepted connection, with its fault switches."""

    def __init__(self, server: SimServer, index: int, ws: WebSocketConnection) -> None:
        self.server = server
        self.index = index
        self.ws = ws
        gate = ws._stream  # trio-websocket keeps the transport it was given here
        assert isinstance(gate, GatedStream)
        self.gate = gate
        self.closed = trio.Event()
        self.received: list[str | bytes] = []
        self.last_sent = trio.current_time()
        # Frames queued by the exchange's stream and by command replies, in order.
        self._outbox_in, self._outbox = trio.open_memory_channel[tuple[str | bytes, FrameKind]](
            OUTBOX_FRAMES
        )
        self.overloaded = False
        self.queued = 0  # posted, not yet sent

    @property
    def silent(self) -> bool:
        return self.gate.silent

    async def send(
        self, frame: str | bytes, kind: FrameKind = FrameKind.DATA, *, binary: bool = False
    ) -> None:
        """Send one frame, a text frame unless `binary`, and record it unless black-holed."""
        data = frame.encode() if isinstance(frame, str) else frame
        await self.ws.send_message(data if binary else data.decode())
        if not self.gate.silent:
            self.server.sent.append(SentFrame(self.index, data, kind, binary))
            self.server.touch()
        self.last_sent = trio.current_time()

    def post(self, frame: str | bytes, kind: FrameKind = FrameKind.DATA) -> None:
        """Queue a frame for `pump` to send; a client too slow to keep up is cut off,
        as an exchange would."""
        try:
            self._outbox_in.send_nowait((frame, kind))
            self.queued += 1
        except trio.WouldBlock:
            self.overloaded = True
            self._outbox_in.close()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def pump(self) -> None:
        """Send the queued frames, in order, until the connection ends."""
        async for frame, kind in self._outbox:
            await self.send(frame, kind)
            self.queued -= 1
            self.server.touch()
        if self.overloaded:
            log.warning("simulator: connection %d could not keep up; closing it", self.index)
            await self.gate.inner.aclose()

    async def drop(self) -> None:
        """Close the TCP connection without a WebSocket close handshake."""
        self.server.drops += 1
        await self.gate.inner.aclose()

    def go_silent(self) -> None:
        """Stop all traffic both ways without closing: a half-open, black-holed socket."""
        self.gate.silent = True

    async def send_garbage(self, count: int = 1, rng: random.Random | None = None) -> None:
        """`count` frames that are not JSON: text and binary, alternating."""
        rng = rng or random.Random(count)
        for n in range(count):
            junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 40)))
            if n % 2:
                await self.send(junk, FrameKind.GARBAGE, binary=True)
            else:
                await self.send("garbage {" + junk.hex(), FrameKind.GARBAGE)


class SimServer:
    """Run with `await nursery.start(server.run)`; then `url` is where to connect."""

    path = "/"

    def __init__(self) -> None:
        self.sent: list[SentFrame] = []
        self.sessions: list[SimSession] = []
        self.drops = 0
        self.paused = False  # True: the exchange's own stream stops (connections stay)
        self._listener: GatedListener | None = None
        self._changed = trio.Event()

    @property
    def url(self) -> str:
        assert self._listener is not None, "run() first"
        return f"ws://127.0.0.1:{self._listener.port}{self.path}"

    def touch(self) -> None:
        """Wake whoever waits in `wait_until`."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    async def session(self, index: int, timeout: float = 10.0) -> SimSession:
        """The `index`-th connection (0-based), once it has been accepted."""
        await self.wait_until(lambda: len(self.sessions) > index, timeout)
        return self.sessions[index]

    def data_frames(self, session: int | None = None) -> list[bytes]:
        return [
            f.data
            for f in self.sent
            if f.kind is FrameKind.DATA and (session is None or f.session == session)
        ]

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self._listener = GatedListener(listener)
        # WebSocketServer accepts any trio Listener; its annotation names only two.
        listeners: list[Any] = [self._listener]
        server = WebSocketServer(self._handle, listeners, max_message_size=MAX_MESSAGE_BYTES)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            nursery.start_soon(self.stream)
            task_status.started()

    async def stream(self) -> None:
        """The exchange's own activity (market data), beside the connections."""
        await trio.sleep_forever()

    async def _handle(self, request: WebSocketRequest) -> None:
        if request.path.split("?", 1)[0] != self.path:
            await request.reject(404, body=b"no such path\n")
            return
        ws = await request.accept()
        session = SimSession(self, len(self.sessions) + 1, ws)
        self.sessions.append(session)
        self.touch()
        try:
            await self.serve_session(session)
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            session.closed.set()
            self.touch()

    async def serve_session(self, session: SimSession) -> None:
        raise NotImplementedError
