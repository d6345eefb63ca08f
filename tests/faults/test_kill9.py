"""kill -9 of ssmd at random moments during a paced run.

Whatever the connector had read but not yet published when it died is lost: the
exchange has no replay. The comparison checks that such a loss is only ever the tail of
a connection and is followed by a discontinuity record, and that nothing the archiver
acknowledged is lost or doubled.

What each kill hit is recorded when it lands, from evidence outside ssmd's log: the
`.partial` slot files on disk (the archiver was writing) and the exchange's session
(the connector was streaming). After the run the archive confirms it: every partial
seen at a kill is a finished, listed file, and recovery salvaged it (its log says so: a
slot deleted and fetched again would also end finished and listed), and every session seen
at a kill delivered frames into the archive. Most kills wait until the victim is ready
(`/ready`) and working, then land at a random moment; every third lands early, while it
starts up.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import attrs

from ssmd.archiver.manifest import load_manifest
from ssmd.nats.server import NatsServer
from ssmd.reader import days
from tests.faults.harness import (
    FEED,
    Comparison,
    Exchange,
    finish_and_compare,
    reaped,
    scenario,
    ssmd,
    stop_when_sent,
)
from tests.procs import SsmdProcess, wait_until

KILLS = 10
# More than the exchange can send before the last kill lands (it sends only while a
# connector is connected), so it is still streaming then; after it, half a second more
# reaches the restarted run and the exchange ends its stream there (`end_after`).
ONE_PROCESS_TOTAL, ONE_PROCESS_RATE = 1_000_000, 10_000
SEPARATE_TOTAL, SEPARATE_RATE = 1_000_000, 2_500
# What a kill may lose: its connection's tail, what waited in the socket for the next
# read (up to `connector.read_interval`, 100 ms by default) and what was read and not
# yet published (a few hundred frames). Seen: 5,581 of 42,928 in one process (10 kills
# at 10k/s; 1,754 of 42,407 before read_interval), 154 of 15,384 in separate ones.
READ_INTERVAL_S = 0.1


def max_lost(kills: int, rate: int) -> int:
    return kills * (int(rate * READ_INTERVAL_S) + 500)


WORKING_TIMEOUT_S = 60


@attrs.frozen
class Kill:
    victim: str
    working: bool  # waited until the victim was ready and working
    partials: frozenset[str]  # `day/final name` of each slot file being written
    session: int | None  # the exchange session streaming to this connector run
    log: Path  # the victim's log, where its next start reports what it salvaged


# What recovery logs for each leftover `.partial` it keeps (ssmd/archiver/recovery.py).
SALVAGED = re.compile(r"salvaged (\S+/\S+): \d+ complete records kept")


def partials(archive: Path) -> frozenset[str]:
    """The slot files being written that already hold data: a `.partial` opened a moment
    ago and still empty is removed by recovery, not salvaged, and proves nothing."""
    found: set[str] = set()
    for path in (archive / FEED).glob("*/*.jsonl.gz.partial"):
        try:
            if path.stat().st_size == 0:
                continue
        except FileNotFoundError:  # finished (renamed) since the glob
            continue
        found.add(f"{path.parent.name}/{path.name.removesuffix('.partial')}")
    return frozenset(found)


def finished_files(archive: Path) -> set[str]:
    listed: set[str] = set()
    for day in days(archive, FEED):
        manifest = load_manifest(archive / FEED / day)
        assert manifest is not None
        listed.update(f"{day}/{entry.name}" for entry in manifest.files if entry.records)
    return listed


class Killer:
    """Kills a process at a random moment and records what the kill landed on."""

    def __init__(self, exchange: Exchange, archive: Path, rng: random.Random) -> None:
        self.exchange = exchange
        self.archive = archive
        self.rng = rng
        self.kills: list[Kill] = []
        self._sessions_before: dict[int, int] = {}

    def start(self, process: SsmdProcess) -> None:
        self._sessions_before[id(process)] = self.exchange.status()["sessions"]
        process.start()

    def _streaming_session(self, process: SsmdProcess) -> int | None:
        status = self.exchange.status()
        newer = status["sessions"] > self._sessions_before[id(process)]
        return int(status["sessions"]) if status["connected"] and newer else None

    def kill(self, name: str, process: SsmdProcess, working: bool) -> None:
        if working:
            process.wait_ready(timeout=WORKING_TIMEOUT_S)
            if "archiver" in process.roles:
                wait_until(lambda: bool(partials(self.archive)), WORKING_TIMEOUT_S, "writing")
            if "connector" in process.roles:
                wait_until(
                    lambda: self._streaming_session(process) is not None,
                    WORKING_TIMEOUT_S,
                    "streaming",
                )
            time.sleep(self.rng.uniform(0.05, 0.8))
        else:
            time.sleep(self.rng.uniform(0.05, 0.5))
        on_disk = partials(self.archive) if "archiver" in process.roles else frozenset()
        session = self._streaming_session(process) if "connector" in process.roles else None
        process.kill9()
        self.kills.append(Kill(name, working, on_disk, session, process.log))
        self.start(process)

    def check(self, result: Comparison) -> dict[str, int]:
        """Each working kill landed mid-file and mid-stream, as the archive confirms;
        returns how many kills of each victim did."""
        finished = finished_files(self.archive)
        salvaged = {
            name
            for log in {kill.log for kill in self.kills}
            for name in SALVAGED.findall(log.read_text())
        }
        landed: dict[str, int] = {}
        for kill in self.kills:
            mid_file = bool(kill.partials & finished & salvaged)
            mid_stream = (
                kill.session is not None and result.archived_by_session.get(kill.session, 0) > 0
            )
            expect_file = "archiver" in kill.victim
            expect_stream = "connector" in kill.victim
            if kill.working:
                assert mid_file or not expect_file, f"{kill}: no salvaged slot file"
                assert mid_stream or not expect_stream, f"{kill}: no archived session"
            landed[kill.victim] = landed.get(kill.victim, 0) + (
                (mid_file or not expect_file) and (mid_stream or not expect_stream)
            )
        return landed


def test_kill9_connector_and_archiver_in_one_process(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    rng = random.Random(1)
    exchange, config, archive = scenario(
        tmp_path, [nats_server.url], ONE_PROCESS_TOTAL, ONE_PROCESS_RATE
    )
    process = ssmd(config, ["connector", "archiver"])
    killer = Killer(exchange, archive, rng)
    killer.start(process)
    with reaped(process):
        for i in range(KILLS):
            killer.kill("connector+archiver", process, working=i % 3 != 2)
        sent = exchange.end_after(ONE_PROCESS_RATE // 2)
        stop_when_sent(exchange, process)
    result = finish_and_compare(exchange, config, archive)
    assert result.sent == sent
    assert result.lost < max_lost(KILLS, ONE_PROCESS_RATE), result
    landed = killer.check(result)
    working = sum(kill.working for kill in killer.kills)
    assert landed["connector+archiver"] >= working == 7, (landed, killer.kills)
    assert result.discontinuities.get("connect", 0) > working, result
    print(landed, result)


def test_kill9_connector_and_archiver_as_separate_processes(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    rng = random.Random(2)
    exchange, config, archive = scenario(tmp_path, [nats_server.url], SEPARATE_TOTAL, SEPARATE_RATE)
    processes = {
        "connector": ssmd(config, ["connector"], tmp_path / "connector.log"),
        "archiver": ssmd(config, ["archiver"], tmp_path / "archiver.log"),
    }
    killer = Killer(exchange, archive, rng)
    with reaped(*processes.values()):
        killer.start(processes["connector"])
        processes["connector"].wait_ready()  # it creates the stream the archiver needs
        killer.start(processes["archiver"])
        victims = ["connector", "archiver"] * (KILLS // 2)
        rng.shuffle(victims)
        for i, name in enumerate(victims):
            killer.kill(name, processes[name], working=i % 3 != 2)
        sent = exchange.end_after(SEPARATE_RATE // 2)
        stop_when_sent(exchange, *processes.values())
    result = finish_and_compare(exchange, config, archive)
    assert result.sent == sent
    assert result.lost < max_lost(KILLS, SEPARATE_RATE), result
    landed = killer.check(result)
    for name in processes:
        working = sum(kill.working for kill in killer.kills if kill.victim == name)
        assert landed.get(name, 0) >= working >= 2, (name, landed, killer.kills)
    print(landed, result)
