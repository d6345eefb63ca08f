"""kill -9 of ssmd at random moments during a 100k-message run.

Whatever the connector had read but not yet published when it died is lost: the
exchange has no replay. The comparison checks that such a loss is only ever the tail of
a connection and is followed by a discontinuity record, and that nothing the archiver
acknowledged is lost or doubled.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from ssmd.nats.server import NatsServer
from tests.faults.harness import (
    finish_and_compare,
    reaped,
    scenario,
    ssmd,
    stop_when_sent,
)

TOTAL = 100_000
RATE = 10_000
KILLS = 10


def test_kill9_connector_and_archiver_in_one_process(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    rng = random.Random(1)
    exchange, config, archive = scenario(tmp_path, [nats_server.url], TOTAL, RATE)
    process = ssmd(config, ["connector", "archiver"]).start()
    with reaped(process):
        for _ in range(KILLS):
            # Anywhere from mid-startup to well into streaming.
            time.sleep(rng.uniform(0.1, 2.0))
            process.kill9()
            process.start()
        stop_when_sent(exchange, process)
    result = finish_and_compare(exchange, config, archive)
    assert result.sent == TOTAL
    assert result.lost < TOTAL // 10, result
    assert result.discontinuities.get("connect", 0) >= 2, result
    # Some kills landed mid-file, so recovery really salvaged partial files.
    assert process.log.read_text().count("salvaged") >= 1
    print(result)


def test_kill9_connector_and_archiver_as_separate_processes(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    rng = random.Random(2)
    exchange, config, archive = scenario(tmp_path, [nats_server.url], TOTAL, RATE)
    connector = ssmd(config, ["connector"], tmp_path / "connector.log").start()
    archiver = ssmd(config, ["archiver"], tmp_path / "archiver.log").start()
    kills = {"connector": 0, "archiver": 0}
    with reaped(connector, archiver):
        victims = ["connector", "archiver"] * (KILLS // 2 + 1)
        rng.shuffle(victims)
        for name in victims:
            time.sleep(rng.uniform(0.1, 1.5))
            victim = connector if name == "connector" else archiver
            victim.kill9()
            victim.start()
            kills[name] += 1
        stop_when_sent(exchange, connector, archiver)
    result = finish_and_compare(exchange, config, archive)
    assert min(kills.values()) >= KILLS // 2
    assert result.sent == TOTAL
    assert result.lost < TOTAL // 10, result
    print(kills, result)
