"""The Kalshi exchange for benchmarks: pre-encoded frames over a raw socket, so the
exchange is never the limit. It completes the WebSocket upgrade (no signature check),
answers the client's one subscribe (sid 1), then streams N trade messages with `seq`
1..N: as fast as it can (`exchange_process`) or at a fixed rate (`paced_exchange_process`,
message i no earlier than i / rate seconds after the subscribe is answered; the sender
wakes every ~0.2 ms and writes every frame that is due, so at 10k msg/s frames go out in
runs of 2-3).
"""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import socket
import struct
import time

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def kalshi_messages(count: int) -> list[bytes]:
    tickers = [f"KXBTCD-26MAR{1200 + i % 24:04d}-T{60000 + 250 * i}.99" for i in range(500)]
    out = []
    for n in range(count):
        ticker = tickers[n % len(tickers)]
        msg = {
            "type": "trade",
            "sid": 1,
            "seq": n + 1,
            "msg": {
                "trade_id": f"5d93{n:012x}-7a1f-4c1e-9f0e-0b7c",
                "market_ticker": ticker,
                "yes_price": 40 + n % 50,
                "no_price": 60 - n % 50,
                "yes_price_dollars": "0.4500",
                "no_price_dollars": "0.5500",
                "count": 1 + n % 7,
                "count_fp": f"{1 + n % 7}.00",
                "taker_side": "yes" if n % 2 else "no",
                "ts": 1773331880 + n // 100,
            },
        }
        out.append(json.dumps(msg, separators=(",", ":")).encode())
    return out


def ws_frame(payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


def read_client_frame(conn: socket.socket) -> bytes:
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("client closed")
            data += chunk
        return data

    _, second = exact(2)
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", exact(2))
    elif size == 127:
        (size,) = struct.unpack("!Q", exact(8))
    mask = exact(4)
    body = exact(size)
    return bytes(b ^ mask[i % 4] for i, b in enumerate(body))


def accept_subscriber(conn: socket.socket) -> None:
    """Complete the WebSocket upgrade and answer the client's subscribe (sid 1)."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += conn.recv(4096)
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    command = json.loads(read_client_frame(conn))
    reply = {"type": "subscribed", "id": command["id"], "msg": {"channel": "trade", "sid": 1}}
    conn.sendall(ws_frame(json.dumps(reply).encode()))


def exchange_process(count: int, ports: multiprocessing.Queue[int]) -> None:
    """Serve one connection: handshake, answer the subscribe, then stream everything."""
    frames = b"".join(ws_frame(m) for m in kalshi_messages(count))
    listener = socket.create_server(("127.0.0.1", 0))
    ports.put(listener.getsockname()[1])
    while True:
        conn, _ = listener.accept()
        accept_subscriber(conn)
        conn.sendall(frames)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        conn.close()


def paced_exchange_process(count: int, rate: float, ports: multiprocessing.Queue[int]) -> None:
    """Serve connections: handshake, answer the subscribe, then `count` frames at `rate`/s."""
    frames = [ws_frame(m) for m in kalshi_messages(count)]
    offsets = [0]
    for frame in frames:
        offsets.append(offsets[-1] + len(frame))
    blob = b"".join(frames)
    listener = socket.create_server(("127.0.0.1", 0))
    ports.put(listener.getsockname()[1])
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        accept_subscriber(conn)
        start = time.perf_counter()
        sent = 0
        try:
            while sent < count:
                due = min(count, int((time.perf_counter() - start) * rate) + 1)
                if due > sent:
                    conn.sendall(blob[offsets[sent] : offsets[due]])
                    sent = due
                else:
                    time.sleep(0.0002)
            while conn.recv(65536):
                pass
        except OSError:
            pass
        conn.close()
