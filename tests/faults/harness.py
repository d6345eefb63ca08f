"""What every fault scenario shares: the paced exchange process, ssmd configs, and the
independent comparison of the archive with what the exchange sent.

A scenario runs the real `ssmd` process (tests.procs.SsmdProcess) against real
nats-server processes and `ssmd.simulators.kalshi.paced`, breaks something, and ends with
`finish_and_compare`: drain the stream into the archive, run `ssmd data verify`, then
check the archive line by line against the exchange's log of sent frames.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import tomllib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import IO, Any

import attrs
import msgspec
import trio
from cryptography.hazmat.primitives import serialization

from ssmd.archiver.lines import strip_meta
from ssmd.archiver.manifest import load_manifest
from ssmd.nats.bridge import open_bridge
from ssmd.reader import days, iter_lines
from ssmd.simulators.kalshi.paced import CHANNELS, MARKETS
from tests import configs
from tests.keys import API_KEY, pem, private_key
from tests.procs import SsmdProcess, check_manifests, http_get, metric, wait_until

ROOT = Path(__file__).resolve().parents[2]
FEED = "kalshi"
STREAM = "MARKETDATA"
CONSUMER = "archiver-kalshi"
# The reason of a disconnect record after a stop that confirmed every unsubscribe.
CLEAN_STOP = "shutdown: unsubscribed"
STOP = "clean stop"  # such a disconnect, as `compare` counts it


class Exchange:
    """The paced exchange as a child process, driven over its stdin."""

    def __init__(self, workdir: Path, total: int, rate: float) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.key_file = workdir / "exchange-public.pem"
        self.key_file.write_bytes(
            private_key()
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self.sent_log = workdir / "sent.jsonl"
        self.total = total
        self._stderr = open(workdir / "exchange.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "ssmd.simulators.kalshi.paced"),
                *(str(self.key_file), str(self.sent_log), str(total), str(rate)),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.url: str = self._reply()["url"]

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the exchange process died"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def command(self, line: str) -> dict[str, Any]:
        stdin: IO[bytes] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(line.encode() + b"\n")
        stdin.flush()
        return self._reply()

    def status(self) -> dict[str, Any]:
        return self.command("status")

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.status()):
                return
            time.sleep(0.02)
        raise TimeoutError(f"exchange still {self.status()} after {timeout}s")

    def wait_sent(self, count: int, timeout: float = 60) -> None:
        self.wait(lambda s: s["sent"] >= count, timeout)

    def wait_connected(self, timeout: float = 30) -> None:
        self.wait(lambda s: s["connected"], timeout)

    def end_after(self, count: int, timeout: float = 60) -> int:
        """Once `count` more frames went out (to whichever connection is streaming),
        end the stream there: the exchange is done and sends nothing more. A scenario
        whose faults are over needs no more data than that, however much TOTAL allowed.
        Returns how many frames were sent in all."""
        self.wait_sent(self.status()["sent"] + count, timeout)
        self.command("end")
        # A frame being written as the stream ended still counts: wait until the
        # stream has let go of its connection.
        self.wait(lambda s: s["done"] and not s["connected"], timeout)
        sent: int = self.status()["sent"]
        return sent

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self._stderr):
            if stream is not None:
                stream.close()


def ssmd_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALSHI_")}
    env["KALSHI_API_KEY"] = API_KEY
    env["KALSHI_PRIVATE_KEY"] = pem(private_key())
    return env


def write_config(
    path: Path,
    nats_urls: list[str],
    ws_url: str,
    archive: Path,
    *,
    connector: dict[str, Any] | None = None,
    archiver: dict[str, Any] | None = None,
    service: dict[str, Any] | None = None,
    rotation: str = "15m",
) -> Path:
    """A production-shaped config with the short timeouts a test can afford."""
    connector_settings: dict[str, Any] = {
        "url": ws_url,
        "channels": list(CHANNELS),
        "markets": MARKETS,
        "liveness_timeout": "2s",
        "ping_interval": "500ms",
        "command_timeout": "2s",
        "backoff_initial": "50ms",
        "backoff_max": "500ms",
        "publish_timeout": "1s",
        **(connector or {}),
    }
    archiver_settings: dict[str, Any] = {
        "consumer": CONSUMER,
        "filter": f"prod.{FEED}.json.>",
        "batch_size": 1000,
        **(archiver or {}),
    }
    return configs.write_config(
        path,
        {
            "env": "prod",
            "nats": {"url": nats_urls, "stream": STREAM},
            "connector": connector_settings,
            "archiver": archiver_settings,
            "storage": {"path": str(archive)},
            "rotation": {"interval": rotation},
            "service": service,
        },
    )


def scenario(
    tmp_path: Path, nats_urls: list[str], total: int, rate: float, **settings: Any
) -> tuple[Exchange, Path, Path]:
    """The paced exchange, and a config (with `settings`) pointing ssmd at it and NATS:
    (exchange, config path, archive root)."""
    exchange = Exchange(tmp_path / "exchange", total, rate)
    archive = tmp_path / "archive"
    config = write_config(tmp_path / "ssmd.toml", nats_urls, exchange.url, archive, **settings)
    return exchange, config, archive


def ssmd(
    config: Path, roles: Iterable[str], log: Path | None = None, module: str = "ssmd"
) -> SsmdProcess:
    """`python -m MODULE run -c CONFIG --role ...`: ssmd, or a fault-injecting launcher."""
    process = SsmdProcess(config, tuple(roles), log, module)
    process.env = ssmd_env()
    return process


@contextmanager
def reaped(*processes: SsmdProcess) -> Iterator[None]:
    """Kill whatever is still running when the block ends, passed or failed."""
    try:
        yield
    finally:
        for process in processes:
            if process.proc is not None and process.proc.poll() is None:
                process.kill9()


def stop_when_sent(exchange: Exchange, *processes: SsmdProcess) -> None:
    """Once the exchange has sent everything and each connector has it acknowledged by
    JetStream (its publish buffer empty, from /metrics), SIGTERM each process in turn;
    each must exit 0."""
    exchange.wait(lambda s: s["done"], timeout=120)
    for connector in (p for p in processes if "connector" in p.roles):
        wait_until(partial(is_published, connector), 60, "all published")
    for process in processes:
        code, _ = process.terminate()
        assert code == 0, process.log.read_text()[-3000:]


def is_published(connector: SsmdProcess) -> bool:
    """Whether the connector's publish buffer is empty, from its /metrics."""
    try:
        _, text = http_get(connector.health_port, "/metrics")
    except OSError:
        return False
    buffered = "# TYPE ssmd_publish_buffer_messages " in text
    return buffered and metric(text, "ssmd_publish_buffer_messages") == 0


def drain_archive(config: Path, log: Path | None = None, timeout: float = 60) -> None:
    """Run the archiver alone until it has acknowledged the stream's last message (so
    that message is fsynced), then stop it.

    A clean stop of a combined process archives everything itself
    (test_shutdown.py); after a kill -9, or with separate processes, what the last run
    left in the stream is archived here, as a production deployment's next start would.
    """
    archiver = ssmd(config, ["archiver"], log).start()
    archiver.wait_ready()
    settings = tomllib.loads(config.read_text())
    urls = settings["nats"]["url"]
    archive = Path(settings["storage"]["path"])
    trio.run(_wait_archived, [urls] if isinstance(urls, str) else urls, archive, timeout)
    code, _ = archiver.terminate()
    assert code == 0, archiver.log.read_text()[-3000:]


def archived_through(archive: Path) -> int:
    """The highest stream sequence in a finished file of the feed (0: none)."""
    end = 0
    for manifest in (archive / FEED).glob("*/manifest.json"):
        for entry in json.loads(manifest.read_text())["files"]:
            end = max(end, entry["nats_end_seq"])
    return end


async def _wait_archived(urls: list[str], archive: Path, timeout: float) -> None:
    """Until the stream's last message is acknowledged, or was already archived (a
    fresh consumer that has nothing to deliver acknowledges nothing)."""
    async with open_bridge(urls) as bridge:
        with trio.fail_after(timeout):
            while True:
                state = await bridge.stream_state(STREAM)
                floor = await bridge.consumer_ack_floor(STREAM, CONSUMER)
                if state is not None and max(floor or 0, archived_through(archive)) >= (
                    state.last_seq
                ):
                    return
                await trio.sleep(0.1)


@attrs.frozen
class Comparison:
    sent: int
    archived: int
    archived_by_session: dict[int, int]
    lost_by_session: dict[int, int]
    discontinuities: dict[str, int]
    garbage_archived: int

    @property
    def lost(self) -> int:
        return sum(self.lost_by_session.values())


def sent_frames(sent_log: Path) -> Iterator[tuple[int, Any]]:
    """(session, canonical key) for every frame the exchange wrote to a socket."""
    with open(sent_log, "rb") as f:
        for line in f:
            entry = msgspec.json.decode(line)
            if "b" in entry:
                yield entry["s"], canonical_frame(base64.b64decode(entry["b"]))
            else:
                yield entry["s"], canonical_frame(entry["f"].encode())


# The comparison's JSON codec: msgspec, as the standard library's is several times slower
# over the hundreds of thousands of frames a scenario compares. Both sides of the
# comparison go through it, so what is equal does not depend on which codec it is.
def canonical_json(value: Any) -> bytes:
    """One spelling per JSON value: keys sorted, no spaces."""
    return msgspec.json.encode(value, order="sorted")


def canonical_frame(frame: bytes) -> tuple[str, Any]:
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes", frame
    try:
        return "json", canonical_json(msgspec.json.decode(frame))
    except ValueError:  # msgspec.DecodeError is one
        return "text", text


def canonical_record(record: dict[str, Any]) -> tuple[str, Any]:
    value = strip_meta(record)
    if isinstance(value, bytes):
        return "bytes", value
    if "_raw" in record and isinstance(value, str):
        return "text", value
    return "json", canonical_json(value)


def archive_records(archive: Path) -> list[dict[str, Any]]:
    """Every archived line of the feed, in stream order, read with ssmd's own reader."""
    records: list[dict[str, Any]] = []
    for day in days(archive, FEED):
        manifest = load_manifest(archive / FEED / day)
        assert manifest is not None, f"{day} has no manifest"
        records.extend(
            msgspec.json.decode(line) for line in iter_lines(archive / FEED / day, manifest)
        )
    return records


def run_verify(archive: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ssmd", "data", "verify", "--path", str(archive)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def compare(archive: Path, sent_log: Path) -> Comparison:
    """The archive against the exchange's log, independently of ssmd's own checks.

    - stream sequences are 1..N with no hole and no repeat, and the manifests agree
      with the files (so nothing acknowledged by the archiver went missing);
    - then `compare_records`.
    """
    totals = check_manifests(archive / FEED)
    assert totals["gaps"] == [], totals["gaps"]
    records = archive_records(archive)
    seqs = [r["_seq"] for r in records]
    assert seqs == list(range(1, len(seqs) + 1)), "stream sequences have holes or repeats"
    return compare_records(records, list(sent_frames(sent_log)))


def compare_records(
    records: list[dict[str, Any]], sent: list[tuple[int, tuple[str, Any]]]
) -> Comparison:
    """Archived records (in stream order) against the frames sent, as (session, key):

    - every archived data frame was sent, and none is archived twice;
    - sessions are archived one after another, each started by a connect or disconnect
      record;
    - on every connection, what was archived is a prefix of what was sent, in order;
    - every connection that lost frames, its tail or all of them, is marked on its own:
      between its last archived frame (or, when none was archived, the last frame of an
      earlier connection) and the first frame of a later connection there is a connect
      or disconnect record, and no record there claims its clean stop.
    """
    where: dict[tuple[str, Any], tuple[int, int]] = {}
    sent_by_session: Counter[int] = Counter()
    for session, key in sent:
        assert key not in where, f"the exchange sent {key} twice"
        where[key] = (session, sent_by_session[session])
        sent_by_session[session] += 1

    seen: set[tuple[str, Any]] = set()
    archived_by_session: dict[int, list[int]] = defaultdict(list)
    # The archive as a line of events: a data frame's session, or a discontinuity kind.
    events: list[tuple[int | None, str | None]] = []
    discontinuities: Counter[str] = Counter()
    garbage = 0
    previous: int | None = None  # the session of the last data frame
    previous_at = -1  # its place in `events`
    first_at: dict[int, int] = {}  # each session's first and last data frame in `events`
    last_at: dict[int, int] = {}
    for record in records:
        subject: str = record["_subject"]
        if f".{FEED}.json.ssmd." in subject:
            kind = str(record.get("type", "")).removeprefix("ssmd_")
            discontinuities[kind] += 1
            if kind == "disconnect" and str(record.get("reason")).startswith(CLEAN_STOP):
                discontinuities[STOP] += 1
                kind = STOP
            events.append((None, kind))
            continue
        key = canonical_record(record)
        assert key in where, f"archived a frame the exchange never sent: {record}"
        assert key not in seen, f"archived twice: {record}"
        seen.add(key)
        session, index = where[key]
        archived_by_session[session].append(index)
        if key[0] != "json":
            garbage += 1
        since = _kinds(events, previous_at + 1, len(events))
        if previous == session:
            assert "connect" not in since, f"a connect record inside session {session}'s data"
        else:
            assert previous is None or previous < session, "sessions archived out of order"
            assert previous is None or since & {"connect", "disconnect"}, (
                f"session {session} follows session {previous} with no connect record"
            )
        first_at.setdefault(session, len(events))
        last_at[session] = previous_at = len(events)
        events.append((session, None))
        previous = session

    lost: dict[int, int] = {}
    for session, sent_count in sorted(sent_by_session.items()):
        indices = archived_by_session.get(session, [])
        assert indices == list(range(len(indices))), (
            f"session {session}: archived is not a prefix of what was sent"
        )
        if len(indices) == sent_count:
            continue
        lost[session] = sent_count - len(indices)
        # The window that must mark this session's loss: from its own last frame (or
        # the last frame of an earlier session) to the first frame of a later one.
        after = max((i for s, i in last_at.items() if s <= session), default=-1)
        until = min((i for s, i in first_at.items() if s > session), default=len(events))
        marks = [k for _, k in events[after + 1 : until] if k in ("connect", "disconnect", STOP)]
        what = f"session {session} lost {lost[session]} of {sent_count} frames"
        assert {"connect", "disconnect"} & set(marks), f"{what} with no discontinuity record"
        if indices:
            assert STOP not in marks, f"{what} but claims a clean stop"
        else:  # a clean stop before its connect may be an earlier session's
            mine = marks[marks.index("connect") :] if "connect" in marks else marks
            assert STOP not in mine, f"{what} but a clean stop follows it"
    return Comparison(
        sent=sum(sent_by_session.values()),
        archived=len(seen),
        archived_by_session={s: len(i) for s, i in archived_by_session.items()},
        lost_by_session=lost,
        discontinuities=dict(discontinuities),
        garbage_archived=garbage,
    )


def _kinds(events: list[tuple[int | None, str | None]], start: int, end: int) -> set[str]:
    return {kind for _, kind in events[start:end] if kind is not None}


def finish_and_compare(
    exchange: Exchange, config: Path, archive: Path, log: Path | None = None
) -> Comparison:
    exchange.close()
    drain_archive(config, log)
    run_verify(archive)
    return compare(archive, exchange.sent_log)
