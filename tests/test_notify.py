"""systemd notify: READY once roles are up, WATCHDOG only while healthy, STOPPING on stop."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from ssmd.notify import Notifier
from ssmd.supervisor import Supervisor, supervise
from tests.procs import SsmdProcess, publish_range, stream_spec, wait_for_ack_floor, write_config


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


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
    mock_clock: trio.testing.MockClock,
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


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready()  # a no-op, not an error


def test_abstract_socket_address() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "@ssmd-test", "WATCHDOG_USEC": "0"})
    assert notifier.enabled and notifier.watchdog_interval is None


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
        await trio.sleep(1.2)
        code, _ = proc.terminate()
    assert code == 0
    messages = received(sock)
    assert messages[0].startswith("READY=1")
    assert "WATCHDOG=1" in messages
    assert messages[-1].startswith("STOPPING=1")
