"""The connector's WebSocket client: frame parsing, and talking to trio-websocket."""

from __future__ import annotations

import os
import ssl
import struct
from functools import partial
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_websocket import WebSocketRequest, serve_websocket

from ssmd.connector.websocket import HandshakeRejected
from ssmd.connector.wsclient import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    FrameParser,
    ProtocolError,
    WebSocketClosed,
    connect_fast,
    encode_frame,
)


def fragmented(payload: bytes, pieces: int, mask: bool) -> bytes:
    """`payload` as a text message split over `pieces` frames."""
    step = max(1, len(payload) // pieces)
    chunks = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
    out = b""
    for n, chunk in enumerate(chunks):
        opcode = OP_TEXT if n == 0 else OP_CONTINUATION
        fin = 0x80 if n == len(chunks) - 1 else 0
        frame = encode_frame(opcode, chunk, os.urandom(4) if mask else None)
        out += bytes([fin | opcode]) + frame[1:]
    return out


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=70_000), max_size=6),
    cuts=st.lists(st.integers(min_value=1, max_value=5000), max_size=40),
    pieces=st.integers(min_value=1, max_value=4),
    mask=st.booleans(),
    pings=st.booleans(),
)
def test_any_messages_split_anywhere_come_out_whole_and_in_order(
    messages: list[bytes], cuts: list[int], pieces: int, mask: bool, pings: bool
) -> None:
    wire = b""
    for m in messages:
        if pings:
            wire += encode_frame(OP_PING, b"hb")
        wire += fragmented(m, pieces, mask)
    parser = FrameParser(1 << 20)
    got: list[bytes] = []
    controls = 0
    pos = 0
    for cut in [*cuts, len(wire)]:
        chunk = wire[pos : pos + cut]
        pos += len(chunk)
        data, control = parser.feed(chunk)
        got.extend(data)
        controls += len(control)
        if pos >= len(wire):
            break
    data, control = parser.feed(wire[pos:])
    got.extend(data)
    controls += len(control)
    assert got == messages
    assert controls == (len(messages) if pings else 0)


def test_protocol_violations_are_errors() -> None:
    with pytest.raises(ProtocolError, match="limit"):
        FrameParser(100).feed(encode_frame(OP_BINARY, b"x" * 101))
    with pytest.raises(ProtocolError, match="reserved"):
        FrameParser(100).feed(b"\xc1\x01x")
    with pytest.raises(ProtocolError, match="continuation"):
        FrameParser(100).feed(encode_frame(OP_CONTINUATION, b"x"))
    with pytest.raises(ProtocolError, match="control"):
        FrameParser(1000).feed(encode_frame(OP_PING, b"x" * 126))
    with pytest.raises(ProtocolError, match="opcode"):
        FrameParser(100).feed(b"\x83\x00")


async def serve(handler: object, nursery: trio.Nursery) -> int:
    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    port: int = server.port
    return port


async def test_talks_to_trio_websocket_both_ways() -> None:
    received: list[str | bytes] = []
    headers_seen: dict[bytes, bytes] = {}

    async def handler(request: WebSocketRequest) -> None:
        headers_seen.update(dict(request.headers))
        ws = await request.accept()
        received.append(await ws.get_message())
        await ws.send_message('{"type":"ticker"}')
        await ws.send_message(b"\x00\x01binary")
        await ws.send_message("x" * 100_000)
        await ws.ping(b"server-ping")  # the client must answer it
        await ws.aclose(code=1000, reason="bye")

    async with trio.open_nursery() as nursery:
        port = await serve(handler, nursery)
        got: list[bytes] = []
        closed: list[WebSocketClosed] = []
        async with connect_fast(
            f"ws://127.0.0.1:{port}/trade-api/ws/v2", [("X-Test", "1")], 5
        ) as ws:

            async def reader() -> None:
                try:
                    while True:
                        got.extend(await ws.receive_batch(100))
                except WebSocketClosed as exc:
                    closed.append(exc)

            async with trio.open_nursery() as inner:
                inner.start_soon(reader)
                with trio.fail_after(5):
                    await ws.ping(b"client-ping")  # the reader delivers the pong
                await ws.send_message('{"id":1,"cmd":"subscribe"}')
        nursery.cancel_scope.cancel()
    assert received == ['{"id":1,"cmd":"subscribe"}']
    assert headers_seen[b"x-test"] == b"1"
    assert got == [b'{"type":"ticker"}', b"\x00\x01binary", b"x" * 100_000]
    assert closed[0].code == 1000 and closed[0].reason == "bye"


async def test_a_rejected_handshake_reports_the_status() -> None:
    async def handler(request: WebSocketRequest) -> None:
        await request.reject(401, body=b"bad signature")

    async with trio.open_nursery() as nursery:
        port = await serve(handler, nursery)
        with pytest.raises(HandshakeRejected) as rejected:
            async with connect_fast(f"ws://127.0.0.1:{port}/", [], 5):
                pass
        nursery.cancel_scope.cancel()
    assert rejected.value.status_code == 401 and "bad signature" in rejected.value.body


def test_frame_header_lengths() -> None:
    assert encode_frame(OP_TEXT, b"a" * 125)[:2] == b"\x81\x7d"
    assert encode_frame(OP_TEXT, b"a" * 126)[:4] == b"\x81\x7e" + struct.pack("!H", 126)
    assert encode_frame(OP_TEXT, b"a" * 70_000)[:10] == b"\x81\x7f" + struct.pack("!Q", 70_000)


@pytest.mark.parametrize(
    ("key", "age_ms", "problem"),
    [("other", 0, "invalid signature"), ("ours", 10_000, "stale timestamp"), ("ours", 0, None)],
)
async def test_the_fake_exchange_checks_signatures_like_kalshi(
    key: str, age_ms: int, problem: str | None
) -> None:
    import time

    from ssmd.connector.auth import Credentials
    from tests.keys import API_KEY, other_private_key, private_key
    from tests.test_connector_e2e import fake_exchange

    signer = Credentials(
        api_key=API_KEY, private_key=private_key() if key == "ours" else other_private_key()
    )
    async with fake_exchange() as exchange:
        headers = signer.handshake_headers(exchange.url, int(time.time() * 1000) - age_ms)
        if problem is None:
            async with connect_fast(exchange.url, headers, 5):
                pass
            return
        with pytest.raises(HandshakeRejected) as rejected:
            async with connect_fast(exchange.url, headers, 5):
                pass
    assert rejected.value.status_code == 401 and problem in rejected.value.body


@pytest.mark.parametrize("ending", ["close", "protocol error", "reset after ping"])
async def test_messages_before_the_end_of_a_connection_are_all_delivered(ending: str) -> None:
    from trio.testing import memory_stream_pair

    from ssmd.connector.wsclient import OP_CLOSE, FastWebSocket

    client, server = memory_stream_pair()
    wire = b"".join(encode_frame(OP_TEXT, b'{"n":%d}' % i) for i in range(50))
    if ending == "close":
        wire += encode_frame(OP_CLOSE, struct.pack("!H", 1001) + b"going away")
    elif ending == "protocol error":
        wire += b"\x83\x00"  # unknown opcode
    else:
        wire += encode_frame(OP_PING, b"hb")
    ws = FastWebSocket(client, b"", 1 << 20)
    await server.send_all(wire)
    if ending == "reset after ping":
        await server.aclose()  # the pong cannot be sent
    got: list[bytes] = []
    with pytest.raises(ConnectionError):
        while True:
            got.extend(await ws.receive_batch(1000))
    assert got == [b'{"n":%d}' % i for i in range(50)]


async def test_backlogged_says_when_more_arrived_than_a_read_returned() -> None:
    """What lets `connector.read_interval` read a flooded socket again at once."""
    from trio.testing import memory_stream_pair

    from ssmd.connector import wsclient
    from ssmd.connector.wsclient import FastWebSocket

    client, server = memory_stream_pair()
    ws = FastWebSocket(client, b"", 1 << 20)
    await server.send_all(b"".join(encode_frame(OP_TEXT, b'{"n":%d}' % i) for i in range(5)))
    assert len(await ws.receive_batch(3)) == 3
    assert ws.backlogged  # two parsed and not yet taken
    assert len(await ws.receive_batch(3)) == 2
    assert not ws.backlogged
    payload = b"x" * 1000
    frame = encode_frame(OP_TEXT, payload)
    await server.send_all(frame * (wsclient._READ_SIZE // len(frame) + 2))
    batch = await ws.receive_batch(10_000)
    assert batch and all(m == payload for m in batch)
    assert ws.backlogged  # the read filled the whole buffer: more may be waiting


def self_signed(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) TLS contexts for 127.0.0.1, from a fresh self-signed cert."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    return server, ssl.create_default_context(cafile=str(cert_path))


@pytest.mark.parametrize("tls", [False, True])
async def test_one_receive_takes_everything_that_has_arrived(tls: bool, tmp_path: Path) -> None:
    """Over TCP, and over TLS where one read returns at most one TLS record (here each
    message is its own record): one `receive_batch` takes every message that has
    arrived, up to its limit, and `backlogged` says when more are waiting. What lets
    `connector.read_interval` keep up with a busy `wss://` feed."""
    from ssmd.connector.wsclient import FastWebSocket

    server_tls, client_tls = self_signed(tmp_path)
    frames = [encode_frame(OP_TEXT, b'{"n":%d}' % i + b" " * 80) for i in range(300)]
    sent = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        out: trio.abc.Stream = stream
        if tls:
            out = trio.SSLStream(stream, server_tls, server_side=True)
        async with stream:
            for frame in frames:
                await out.send_all(frame)
            sent.set()
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
        if tls:
            stream = trio.SSLStream(stream, client_tls, server_hostname="localhost")
            await stream.do_handshake()
        ws = FastWebSocket(stream, b"", 1 << 20)
        with trio.fail_after(30):
            await sent.wait()
            await trio.sleep(0.2)  # sent is not yet arrived: let the loopback deliver
            got = [await ws.receive_batch(100)]
            assert len(got[0]) == 100 and ws.backlogged
            while ws.backlogged:
                got.append(await ws.receive_batch(100))
        assert [len(batch) for batch in got] == [100, 100, 100]
        await trio.aclose_forcefully(stream)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("tls", [False, True])
async def test_messages_read_before_an_end_found_while_draining_come_first(
    tls: bool, tmp_path: Path
) -> None:
    """Over a real socket the end (no close frame, no close_notify) is found by a read
    after the first; everything read before it is returned before it is raised."""
    from ssmd.connector.wsclient import FastWebSocket

    server_tls, client_tls = self_signed(tmp_path)
    done = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        out: trio.abc.Stream = stream
        if tls:
            out = trio.SSLStream(stream, server_tls, server_side=True)
            await out.do_handshake()
        for i in range(50):
            await out.send_all(encode_frame(OP_TEXT, b'{"n":%d}' % i))
        await trio.aclose_forcefully(stream)
        done.set()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        stream: trio.abc.Stream = await trio.open_tcp_stream(
            "127.0.0.1", listeners[0].socket.getsockname()[1]
        )
        if tls:
            stream = trio.SSLStream(stream, client_tls, server_hostname="localhost")
            await stream.do_handshake()
        ws = FastWebSocket(stream, b"", 1 << 20)
        got: list[bytes] = []
        with trio.fail_after(30):
            await done.wait()
            await trio.sleep(0.2)
            with pytest.raises(ConnectionError):
                while True:
                    got.extend(await ws.receive_batch(1000))
        assert got == [b'{"n":%d}' % i for i in range(50)]
        await trio.aclose_forcefully(stream)
        nursery.cancel_scope.cancel()


class HalfRecord(trio.abc.Stream):
    """A server transport that, once armed, sends only the first half of its 11th write
    (one TLS record) and never the rest."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.writes: int | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.writes is not None:
            self.writes += 1
            if self.writes == 11:
                await self.inner.send_all(bytes(data)[: len(data) // 2])
                await trio.sleep_forever()
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_messages_are_not_held_for_the_rest_of_a_tls_record(tmp_path: Path) -> None:
    """Ten one-record messages, then half of an eleventh record whose rest never comes:
    the ten are returned within a few milliseconds, not held while the read waits for
    the rest."""
    from ssmd.connector.wsclient import FastWebSocket

    server_tls, client_tls = self_signed(tmp_path)
    server_tls.num_tickets = 0

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            transport = HalfRecord(stream)
            tls = trio.SSLStream(transport, server_tls, server_side=True)
            await tls.do_handshake()
            transport.writes = 0
            for i in range(11):
                await tls.send_all(encode_frame(OP_TEXT, b'{"n":%d}' % i + b" " * 100))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        tcp = await trio.open_tcp_stream("127.0.0.1", listeners[0].socket.getsockname()[1])
        stream = trio.SSLStream(tcp, client_tls, server_hostname="localhost")
        await stream.do_handshake()
        ws = FastWebSocket(stream, b"", 1 << 20)
        await trio.sleep(0.3)
        with trio.fail_after(1):
            got = await ws.receive_batch(1000)
        assert [m.rstrip() for m in got] == [b'{"n":%d}' % i for i in range(10)]
        await trio.aclose_forcefully(stream)
        nursery.cancel_scope.cancel()


async def test_a_closed_socket_is_not_backlogged() -> None:
    from ssmd.connector.wsclient import FastWebSocket

    a, b = trio.socket.socketpair()
    ws = FastWebSocket(trio.SocketStream(a), b"", 1 << 20)
    await ws.aclose()
    assert not ws.backlogged
    b.close()
