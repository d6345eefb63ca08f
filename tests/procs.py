"""Helpers for tests that run the real `ssmd` process against a real nats-server."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import trio

from ssmd.nats.bridge import NatsBridge
from ssmd.nats.server import free_port
from ssmd.nats.types import OutgoingMessage, StreamSpec
from tests import configs


def write_config(
    path: Path, nats_url: str, archive: Path, shutdown_timeout: str | None = None, **archiver: Any
) -> Path:
    """An archiver-only config; `archiver` overrides its keys."""
    return configs.write_config(
        path,
        {
            "env": "prod",
            "service": {"shutdown_timeout": shutdown_timeout},
            "nats": {"url": nats_url, "stream": "MARKETDATA"},
            "archiver": {
                "consumer": "archiver-kalshi",
                "filter": "prod.kalshi.json.>",
                "batch_size": 500,
                **archiver,
            },
            "storage": {"path": str(archive)},
            "rotation": {"interval": "15m"},
        },
    )


def http_get(port: int, path: str, timeout: float = 5) -> tuple[int, str]:
    """(status, body) of `GET http://127.0.0.1:{port}{path}`; raises OSError if nothing
    answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(text: str, name: str) -> float:
    """The sum of every sample of `name` in a /metrics page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"not {what} within {timeout}s")


class SsmdProcess:
    """`python -m ssmd run` as a child process, with its health endpoint on a port of
    its own: the config's `service.health_port` if it sets one, else a free port written
    into a copy of the config (`*.run.toml` beside the log) at each start."""

    def __init__(
        self,
        config: Path,
        roles: Sequence[str] = ("archiver",),
        log: Path | None = None,
        module: str = "ssmd",
    ) -> None:
        self.config = config
        self.roles = roles
        # What `python -m` runs: ssmd itself, or a launcher that wraps its CLI.
        self.module = module
        self.log = log or config.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] | None = None
        self.health_port = 0

    def _run_config(self) -> Path:
        settings = tomllib.loads(self.config.read_text())
        service = settings.setdefault("service", {})
        if service.get("health_port"):
            self.health_port = service["health_port"]
            return self.config
        self.health_port = service["health_port"] = free_port()
        return configs.write_config(self.log.with_name(f"{self.log.stem}.run.toml"), settings)

    def start(self) -> SsmdProcess:
        args = [sys.executable, "-m", self.module, "run", "-c", str(self._run_config())]
        for role in self.roles:
            args += ["--role", role]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def ready(self) -> tuple[int, str]:
        """(200, "ready") once every role of this run is up and healthy: `/ready`."""
        try:
            return http_get(self.health_port, "/ready", timeout=2)
        except OSError as exc:  # not listening yet
            return 0, str(exc)

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until this run is ready (see `ready`)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        status, body = 0, ""
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            status, body = self.ready()
            if status == 200:
                return
            time.sleep(0.05)
        raise TimeoutError(f"ssmd not ready within {timeout}s: {status} {body.strip()}")

    def catches(self, signum: int) -> bool:
        """Whether the process has installed a handler for `signum` (from /proc: the
        earliest point at which ssmd can act on it)."""
        assert self.proc is not None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except FileNotFoundError:
            return False
        caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
        return bool(int(caught.split()[1], 16) >> (signum - 1) & 1)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 15) -> tuple[int, float]:
        assert self.proc is not None
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - start


def stream_spec(subjects: list[str], max_msgs: int = -1) -> StreamSpec:
    return StreamSpec(
        name="MARKETDATA",
        subjects=subjects,
        max_age_s=0,
        max_bytes=0,
        max_msgs=max_msgs,
        duplicate_window_s=120,
        replicas=1,
    )


KINDS = [
    ("trade", "KXBTCD-26MAR1213-T69499.99"),
    ("ticker", "KXRANKLISTGOOGLESEARCH-26JAN-BIA"),
    ("orderbook", "KXBTCD-26FEB14-T100000"),
    ("lifecycle", "KXBTCD-26JAN2310-T105000"),
]


def sample_payload(i: int) -> bytes:
    """Kalshi-shaped JSON, with an occasional non-object and non-JSON payload."""
    if i % 97 == 0:
        return b"not json \xff"
    if i % 89 == 0:
        return b"[1, 2, 3]"
    kind, ticker = KINDS[i % len(KINDS)]
    return json.dumps(
        {"type": kind, "sid": 1, "seq": i, "msg": {"market_ticker": ticker, "yes_price": i % 100}}
    ).encode()


def sample_subject(i: int, feed: str = "kalshi") -> str:
    kind, ticker = KINDS[i % len(KINDS)]
    return f"prod.{feed}.json.{kind}.{ticker.replace('.', '%2E')}"


async def publish_range(
    bridge: NatsBridge, first: int, last: int, feed: str = "kalshi", batch: int = 500
) -> None:
    for start in range(first, last + 1, batch):
        msgs = [
            OutgoingMessage(
                sample_subject(i, feed), sample_payload(i), f"{feed}-{i}", time.time_ns()
            )
            for i in range(start, min(start + batch, last + 1))
        ]
        outcomes = await bridge.publish_batch(msgs, 10)
        assert all(o.ok for o in outcomes), outcomes


async def wait_for_ack_floor(bridge: NatsBridge, seq: int, timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while True:
            floor = await bridge.consumer_ack_floor("MARKETDATA", "archiver-kalshi")
            if floor is not None and floor >= seq:
                return
            await trio.sleep(0.05)


def archived_records(feed_dir: Path) -> list[dict[str, Any]]:
    """Every line of every finished file, in manifest order, day by day."""
    out: list[dict[str, Any]] = []
    for day in sorted(p for p in feed_dir.iterdir() if p.is_dir()):
        manifest = json.loads((day / "manifest.json").read_text())
        for entry in manifest["files"]:
            with gzip.open(day / entry["name"]) as f:
                out.extend(json.loads(line) for line in f)
    return out


def check_manifests(feed_dir: Path) -> dict[str, Any]:
    """Manifest invariants; returns totals. Fails on any inconsistency."""
    totals: dict[str, Any] = {"records": 0, "gaps": []}
    for day in sorted(p for p in feed_dir.iterdir() if p.is_dir()):
        manifest = json.loads((day / "manifest.json").read_text())
        listed = [f["name"] for f in manifest["files"]]
        assert len(listed) == len(set(listed)), f"{day}: a file is listed twice"
        on_disk = sorted(p.name for p in day.iterdir() if not p.name.startswith("."))
        assert sorted([*listed, "manifest.json"]) == on_disk, (
            f"{day}: disk {on_disk} vs manifest {listed}"
        )
        for entry in manifest["files"]:
            with gzip.open(day / entry["name"]) as f:
                seqs = [msgspec.json.decode(line)["_seq"] for line in f]
            assert len(seqs) == entry["records"]
            assert seqs[0] == entry["nats_start_seq"] and seqs[-1] == entry["nats_end_seq"]
            assert entry["compressed_bytes"] == (day / entry["name"]).stat().st_size
            assert sum(entry["records_by_type"].values()) == entry["records"]
        totals["records"] += sum(f["records"] for f in manifest["files"])
        totals["gaps"] += manifest["gaps"]
    return totals


def expected_line_value(i: int) -> Any:
    payload = sample_payload(i)
    try:
        return json.loads(payload)
    except ValueError:
        pass
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload
