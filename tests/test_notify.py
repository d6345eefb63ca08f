"""systemd notify: READY once roles are up, WATCHDOG only while healthy, STOPPING on stop."""

from __future__ import annotations

import os
import socket
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import trio
import trio.testing

from ssmd import notify
from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from ssmd.notify import Notifier
from ssmd.supervisor import Supervisor, supervise
from tests.procs import SsmdProcess, publish_range, stream_spec, wait_for_ack_floor, write_config


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    try:
        yield path, sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


async def test_ready_then_watchdog_only_while_healthy_then_stopping(
    autojump_clock: trio.testing.MockClock,
    notify_socket: tuple[str, socket.socket],
) -> None:
    path, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    assert notifier.watchdog_interval == 1.0
    healthy = [True]
    supervisor: list[Supervisor] = []

    async def start(sup: Supervisor) -> None:
        supervisor.append(sup)
        sup.add_health_check("test", lambda: None if healthy[0] else "stuck")
        sup.start_producer("forever", trio.sleep_forever)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: supervise(start, shutdown_timeout=5, handle_signals=False, notifier=notifier)
        )
        await trio.sleep(3.5)
        first = received(sock)
        assert first[0].startswith("READY=1")
        assert first[1:].count("WATCHDOG=1") >= 3
        healthy[0] = False
        await trio.sleep(3.5)
        assert "WATCHDOG=1" not in received(sock)
        supervisor[0].request_stop("test over")
    assert received(sock)[-1] == "STOPPING=1\nSTATUS=test over"


class RecordingSocket:
    """Stands in for `socket.socket` in ssmd.notify: records what would be sent."""

    sent: ClassVar[list[tuple[bytes, object]]] = []

    def __init__(self, family: int, kind: int) -> None:
        assert (family, kind) == (socket.AF_UNIX, socket.SOCK_DGRAM)

    def __enter__(self) -> RecordingSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def sendto(self, data: bytes, address: object) -> int:
        self.sent.append((data, address))
        return len(data)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, object]]:
    RecordingSocket.sent = []
    fake = types.SimpleNamespace(
        socket=RecordingSocket, AF_UNIX=socket.AF_UNIX, SOCK_DGRAM=socket.SOCK_DGRAM
    )
    monkeypatch.setattr(notify, "socket", fake)
    return RecordingSocket.sent


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative"}])
def test_without_a_usable_notify_socket_nothing_is_sent(
    recorded: list[tuple[bytes, object]], environ: dict[str, str]
) -> None:
    notifier = Notifier(environ)
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("up")
    notifier.watchdog()
    notifier.stopping("bye")
    assert recorded == []
    # The same calls with a socket configured are seen: the recorder is not blind.
    Notifier({"NOTIFY_SOCKET": "/run/notify"}).ready("up")
    assert recorded == [(b"READY=1\nSTATUS=up", "/run/notify")]


def test_abstract_socket_address_reaches_the_abstract_namespace() -> None:
    name = f"ssmd-test-{os.getpid()}-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(10)
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "0"})
        assert notifier.enabled and notifier.watchdog_interval is None
        notifier.ready("abstract")
        assert sock.recv(4096) == b"READY=1\nSTATUS=abstract"


def test_watchdog_belongs_to_the_pid_systemd_names() -> None:
    mine = Notifier(
        {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    )
    other = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"})
    assert mine.watchdog_interval == 2.0 and other.watchdog_interval is None


async def test_the_ssmd_process_notifies_systemd(
    tmp_path: Path, nats_server: NatsServer, notify_socket: tuple[str, socket.socket]
) -> None:
    path, sock = notify_socket
    config = write_config(tmp_path / "ssmd.toml", nats_server.url, tmp_path / "archive")
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.kalshi.json.>"]))
        await publish_range(bridge, 1, 100)
        proc = SsmdProcess(config)
        proc.env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
        proc.start()
        await wait_for_ack_floor(bridge, 100)
        messages: list[str] = []
        with trio.fail_after(30):  # the watchdog interval is 0.5 s
            while "WATCHDOG=1" not in messages:
                await trio.sleep(0.05)
                messages += received(sock)
        code, _ = proc.terminate()
    assert code == 0
    messages += received(sock)
    assert messages[0].startswith("READY=1")
    assert messages[-1].startswith("STOPPING=1")
