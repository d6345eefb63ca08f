"""A benchmark exchange that streams at a fixed message rate instead of as fast as it can.

Same wire behaviour as `bench_connector.exchange_process` (handshake, answer the
subscribe, pre-encoded frames over a raw socket), but message i is sent no earlier than
`i / rate` seconds after the subscription is answered. The sender wakes every ~0.2 ms
and writes every frame that is due, so at 10k msg/s frames go out in runs of 2-3.
"""

from __future__ import annotations

import multiprocessing
import socket
import time

from bench_connector import accept_subscriber, kalshi_messages, ws_frame


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
