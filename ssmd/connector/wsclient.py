"""A small RFC 6455 client on Trio streams, built for the receive hot path.

trio-websocket hands over one message per scheduling round and parses frames with
wsproto in pure Python: about 40 us per message here, more than a JetStream publish.
This client parses every complete frame of a socket read in one pass and returns them
together, so a busy connection costs a few microseconds per message. It speaks only
what a market-data client needs: the upgrade handshake, unfragmented and fragmented
text/binary messages, ping/pong (a server ping is answered when its frame is read), and
close.
No extensions are negotiated. Text messages are returned as their raw UTF-8 bytes,
exactly as received.
"""

from __future__ import annotations

import base64
import hashlib
import os
import select
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from urllib.parse import urlsplit

import trio

from ssmd.connector.websocket import HandshakeRejected
from ssmd.deadline import shielded

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEADER_BYTES = 64 * 1024
_READ_SIZE = 256 * 1024
# How long a read after the first, of bytes already readable, may wait for the rest of
# a TLS record before the batch is returned without it.
_DRAIN_READ_TIMEOUT_S = 0.005

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


class WebSocketClosed(ConnectionError):
    def __init__(self, code: int | None, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"WebSocket closed ({code}{': ' + reason if reason else ''})")


class ProtocolError(ConnectionError):
    pass


def mask_payload(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One FIN frame; masked (as a client must) when `mask` is given."""
    n = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, mask_bit | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, mask_bit | 127, n)
    if mask is None:
        return header + payload
    return header + mask + mask_payload(payload, mask)


class FrameParser:
    """Incremental frame parser: feed bytes, take complete messages and control frames."""

    def __init__(self, max_message_bytes: int) -> None:
        self._buffer = bytearray()
        self._max = max_message_bytes
        self._fragments: list[bytes] = []
        self._fragment_bytes = 0
        self.error: ProtocolError | None = None

    def feed(self, data: bytes | bytearray) -> tuple[list[bytes], list[tuple[int, bytes]]]:
        """(complete data messages, control frames as (opcode, payload)), in order of arrival
        within each list.

        A protocol violation ends parsing but keeps what came before it: the messages
        are returned and `error` is set; the next call raises it.
        """
        if self.error is not None:
            raise self.error
        messages: list[bytes] = []
        controls: list[tuple[int, bytes]] = []
        try:
            self._parse(data, messages, controls)
        except ProtocolError as exc:
            self.error = exc
            self._buffer.clear()
            if not messages and not controls:
                raise
        return messages, controls

    def _parse(
        self, data: bytes | bytearray, messages: list[bytes], controls: list[tuple[int, bytes]]
    ) -> None:
        buf = self._buffer
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", buf, pos + 2)
                head = 10
            masked = b1 & 0x80
            if masked:
                head += 4
            if length > self._max:
                raise ProtocolError(f"frame of {length} bytes exceeds the {self._max}-byte limit")
            if end - pos < head + length:
                break
            if b0 & 0x70:
                raise ProtocolError("reserved bits set without a negotiated extension")
            start = pos + head
            payload = bytes(buf[start : start + length])
            if masked:
                payload = mask_payload(payload, bytes(buf[start - 4 : start]))
            pos = start + length
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode >= 0x8:
                if not fin or length > 125:
                    raise ProtocolError("invalid control frame")
                controls.append((opcode, payload))
            elif opcode == OP_CONTINUATION:
                if not self._fragments:
                    raise ProtocolError("continuation frame without a message")
                self._append_fragment(payload)
                if fin:
                    messages.append(b"".join(self._fragments))
                    self._fragments = []
                    self._fragment_bytes = 0
            elif opcode in (OP_TEXT, OP_BINARY):
                if self._fragments:
                    raise ProtocolError("new message before the previous one finished")
                if fin:
                    messages.append(payload)
                else:
                    self._append_fragment(payload)
            else:
                raise ProtocolError(f"unknown opcode {opcode:#x}")
        if pos:
            del buf[:pos]

    def _append_fragment(self, payload: bytes) -> None:
        self._fragment_bytes += len(payload)
        if self._fragment_bytes > self._max:
            raise ProtocolError(f"message exceeds the {self._max}-byte limit")
        self._fragments.append(payload)


def readable_now(stream: trio.abc.Stream) -> bool:
    """Whether `stream` has bytes to read without waiting: decrypted or still encrypted
    bytes a TLS stream holds (possibly part of a record), or data in a TCP socket's
    receive queue (one `poll` with no timeout). False for a closed socket or any other
    stream."""
    if isinstance(stream, trio.SSLStream):
        if stream.pending():
            return True
        # trio keeps bytes read from the socket and not yet decrypted in this BIO; no
        # public name reaches it (tests/test_wsclient.py checks it over real TLS).
        incoming = getattr(stream, "_incoming", None)
        if incoming is not None and incoming.pending:
            return True
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        fd = stream.socket.fileno()
        if fd < 0:
            return False
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return False


class FastWebSocket:
    """A connected client socket (see the module docstring)."""

    def __init__(self, stream: trio.abc.Stream, leftover: bytes, max_message_bytes: int) -> None:
        self._stream = stream
        self._parser = FrameParser(max_message_bytes)
        self._pending: list[bytes] = []
        self._leftover = leftover
        self._send_lock = trio.Lock()
        self._pongs: dict[bytes, trio.Event] = {}
        # Why the connection ended; raised only once every parsed message is handed over.
        self._failure: Exception | None = None
        self._close_sent = False
        self._last_read_full = False

    async def receive_batch(self, limit: int) -> list[bytes]:
        """Messages that have arrived, at least one unless only control frames did
        (then an empty list: the caller still learns that the peer is alive).

        Messages that arrived with a close frame, or before a broken connection or a
        protocol error, are all returned before that end is raised.
        """
        if self._leftover:
            leftover, self._leftover = self._leftover, b""
            await self._ingest(leftover)
        if not self._pending:
            if self._failure is not None:
                raise self._failure
            await self._receive_some()
            # Take everything that has arrived in one batch. Over TLS one read returns
            # at most one TLS record, however much is waiting.
            while len(self._pending) < limit and self._failure is None:
                if not readable_now(self._stream):
                    break
                data = None
                try:
                    # Bytes trio holds can end mid TLS record: what is parsed is not held
                    # for longer than this while the rest is waited for.
                    with trio.move_on_after(_DRAIN_READ_TIMEOUT_S):
                        data = await self._stream.receive_some(_READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    # Raised once what was parsed before it is taken.
                    self._failure = ConnectionError(f"connection broken: {exc!r}")
                if data is None:
                    break
                # An end is kept in self._failure, raised once what came before is taken.
                with suppress(WebSocketClosed):
                    await self._take(data)
        out, self._pending = self._pending[:limit], self._pending[limit:]
        return out

    async def _receive_some(self) -> None:
        await self._take(await self._stream.receive_some(_READ_SIZE))

    async def _take(self, data: bytes | bytearray) -> None:
        self._last_read_full = len(data) >= _READ_SIZE
        if not data:
            self._failure = WebSocketClosed(None, "connection closed without a close frame")
            raise self._failure
        await self._ingest(data)

    @property
    def backlogged(self) -> bool:
        """More has arrived than the last `receive_batch` returned: messages parsed and
        not yet taken, or bytes that can be read now without waiting."""
        return bool(self._pending) or self._last_read_full or self._more_now()

    def _more_now(self) -> bool:
        return self._failure is None and readable_now(self._stream)

    async def _ingest(self, data: bytes | bytearray) -> None:
        try:
            messages, controls = self._parser.feed(data)
        except ProtocolError as exc:
            self._failure = exc
            return
        self._pending.extend(messages)
        if self._parser.error is not None:
            self._failure = self._parser.error
        for opcode, payload in controls:
            if opcode == OP_PING:
                await self._reply(OP_PONG, payload)
            elif opcode == OP_PONG:
                waiter = self._pongs.pop(payload, None)
                if waiter is not None:
                    waiter.set()
            elif opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                reason = payload[2:].decode("utf-8", "replace")
                if not self._close_sent:
                    await self._reply(OP_CLOSE, payload[:2])
                self._failure = self._failure or WebSocketClosed(code, reason)

    async def _reply(self, opcode: int, payload: bytes) -> None:
        """Answer a ping or a close; a failure ends the connection after the data is out."""
        try:
            with trio.move_on_after(1):
                await self._send_frame(opcode, payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._failure = self._failure or ConnectionError(f"cannot answer the peer: {exc}")

    async def _send_frame(self, opcode: int, payload: bytes) -> None:
        frame = encode_frame(opcode, payload, os.urandom(4))
        async with self._send_lock:
            if opcode == OP_CLOSE:
                self._close_sent = True
            await self._stream.send_all(frame)

    async def send_message(self, message: str | bytes) -> None:
        if isinstance(message, str):
            await self._send_frame(OP_TEXT, message.encode("utf-8"))
        else:
            await self._send_frame(OP_BINARY, message)

    async def ping(self, payload: bytes | None = None) -> None:
        """Send a ping and return when its pong arrives (the reader task delivers it)."""
        payload = payload if payload is not None else os.urandom(8)
        event = trio.Event()
        self._pongs[payload] = event
        try:
            await self._send_frame(OP_PING, payload)
            await event.wait()
        finally:
            self._pongs.pop(payload, None)

    async def aclose(self) -> None:
        if not self._close_sent and self._failure is None:
            with trio.move_on_after(1):
                await self._send_frame(OP_CLOSE, struct.pack("!H", 1000))
        with trio.move_on_after(1):
            await self._stream.aclose()


def _enable_keepalive(stream: trio.SocketStream) -> None:
    """TCP keepalive, so a peer that vanished without a FIN is found even when idle."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        option = getattr(socket, name, None)
        if option is not None:
            stream.setsockopt(socket.IPPROTO_TCP, option, value)


async def _read_response_head(stream: trio.abc.Stream) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > _MAX_HEADER_BYTES:
            raise ProtocolError("handshake response headers too large")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise ProtocolError("connection closed during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


@asynccontextmanager
async def connect_fast(
    url: str,
    headers: list[tuple[str, str]],
    timeout: float,
    *,
    max_message_bytes: int = 16 * 1024 * 1024,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[FastWebSocket]:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    host = parts.hostname
    port = parts.port or (443 if secure else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    with trio.fail_after(timeout):
        tcp = await trio.open_tcp_stream(host, port)
        _enable_keepalive(tcp)
        stream: trio.abc.Stream = tcp
        try:
            if secure:
                tls = trio.SSLStream(
                    tcp, ssl_context or ssl.create_default_context(), server_hostname=host
                )
                await tls.do_handshake()
                stream = tls
            key = base64.b64encode(os.urandom(16)).decode()
            host_header = host if parts.port is None else f"{host}:{port}"
            lines = [
                f"GET {path} HTTP/1.1",
                f"Host: {host_header}",
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key}",
                "Sec-WebSocket-Version: 13",
                *(f"{name}: {value}" for name, value in headers),
            ]
            await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
            head, rest = await _read_response_head(stream)
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            fields = status_line.split(" ", 2)
            status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
            response = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                response[name.strip().lower()] = value.strip()
            if status != 101:
                body = rest
                wanted = int(response.get("content-length", "0") or 0)
                with trio.move_on_after(1):
                    while len(body) < min(wanted, 4096):
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            break
                        body += chunk
                raise HandshakeRejected(status, body[:200].decode("utf-8", "replace").strip())
            accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
            if response.get("sec-websocket-accept") != accept:
                raise ProtocolError("bad Sec-WebSocket-Accept in the handshake response")
        except BaseException:
            with trio.move_on_after(1):
                await stream.aclose()
            raise
    ws = FastWebSocket(stream, rest, max_message_bytes)
    try:
        yield ws
    finally:
        with shielded():
            await ws.aclose()
