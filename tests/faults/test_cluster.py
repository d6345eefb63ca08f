"""A 3-node JetStream cluster on loopback whose leaders are killed while ssmd runs.

The stream has three replicas; one `ssmd run --role connector --role archiver` process
knows all three URLs. The stream's leader is killed with SIGKILL while messages flow
and restarted a few seconds later; once every replica has caught up, the new leader is
killed too. A leader change loses nothing: the connector keeps what JetStream has not
acknowledged and retries it with the same Nats-Msg-Id, and the archiver, whose pull
requests died with the consumer's leader, recreates its consumer. So the archive must
hold every frame the exchange sent, once and in order, and the archiver must have
caught up before ssmd is stopped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio

from ssmd.nats.bridge import open_bridge
from ssmd.nats.pull import HEARTBEAT_S, SILENCE_HEARTBEATS
from ssmd.nats.server import NatsCluster
from ssmd.nats.types import ConsumerLost
from tests.faults.harness import (
    CONSUMER,
    STREAM,
    Exchange,
    finish_and_compare,
    scenario,
    ssmd,
)
from tests.procs import publish_range, stream_spec, wait_until

# More than the exchange can send before the last kill is over; after it, half a second
# more and the exchange ends its stream (`end_after`).
TOTAL = 1_000_000
RATE = 3_000
FIRST_KILL_AFTER = 6_000
LEADER_KILLS = 2
DOWN_S = 3.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nodes = NatsCluster(tmp_path / "cluster", 3)
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


def stream_last_seq(cluster: NatsCluster) -> int:
    """The stream's last sequence, by the most advanced running node."""
    return max(
        [0]
        + [
            int(cluster.stream_detail(node, STREAM).get("state", {}).get("last_seq", 0))
            for node in cluster.running()
        ]
    )


def archiver_ack_floor(cluster: NatsCluster) -> int:
    """The highest stream sequence the archiver's consumer has acknowledged, by any node."""
    floors = [0]
    for node in cluster.running():
        detail = cluster.stream_detail(node, STREAM, consumers=True)
        for consumer in detail.get("consumer_detail") or []:
            if consumer.get("name") == CONSUMER:
                floors.append(int(consumer.get("ack_floor", {}).get("stream_seq", 0)))
    return max(floors)


@attrs.frozen
class LeaderKill:
    leader: str
    sent_before: int
    election_s: float
    publishing_resumed_s: float
    archiving_resumed_s: float


def kill_stream_leader(cluster: NatsCluster, exchange: Exchange) -> LeaderKill:
    """SIGKILL the stream's leader, restart it after DOWN_S (or once a new leader is
    elected, if later), and time how long the election and the pipeline took."""
    wait_until(lambda: cluster.stream_replicas_current(STREAM), 30, "all replicas current")
    leader = cluster.wait_stream_leader(STREAM)
    victim = cluster.node_named(leader)
    # Messages flowing at the kill, however long the catch-up took (the exchange was
    # paused meanwhile, so it cannot have run out).
    exchange.command("resume")
    exchange.wait_sent(exchange.status()["sent"] + RATE // 2)
    stored, archived = stream_last_seq(cluster), archiver_ack_floor(cluster)
    sent_before = exchange.status()["sent"]
    victim.stop(kill=True)
    killed_at = time.monotonic()
    cluster.wait_stream_leader(STREAM)
    election_s = time.monotonic() - killed_at
    time.sleep(max(0.0, killed_at + DOWN_S - time.monotonic()))
    victim.start()
    wait_until(lambda: stream_last_seq(cluster) > stored, 30, "publishing again")
    publishing_s = time.monotonic() - killed_at
    wait_until(lambda: archiver_ack_floor(cluster) > archived, 30, "archiving again")
    return LeaderKill(leader, sent_before, election_s, publishing_s, time.monotonic() - killed_at)


def test_stream_leader_killed_twice_loses_nothing(tmp_path: Path, cluster: NatsCluster) -> None:
    exchange, config, archive = scenario(tmp_path, cluster.urls, TOTAL, RATE)
    config.write_text(config.read_text() + "[nats.stream_limits]\nreplicas = 3\n")
    process = ssmd(config, ["connector", "archiver"]).start()
    kills: list[LeaderKill] = []
    try:
        process.wait_ready()
        leader = cluster.wait_stream_leader(STREAM)
        replicas = cluster.stream_detail(cluster.node_named(leader), STREAM)["cluster"]["replicas"]
        assert len(replicas) == 2, "the connector did not create the stream with 3 replicas"
        exchange.wait_sent(FIRST_KILL_AFTER)
        for _ in range(LEADER_KILLS):
            kills.append(kill_stream_leader(cluster, exchange))
            exchange.command("pause")
            print(kills[-1])
        exchange.command("resume")
        sent = exchange.end_after(RATE // 2)
        # The same process archives everything, connect record included, before it stops.
        wait_until(lambda: archiver_ack_floor(cluster) >= sent + 1, 30, "all archived")
        code, _ = process.terminate()
        assert code == 0, process.log.read_text()[-3000:]
    finally:
        if process.proc is not None and process.proc.poll() is None:
            process.kill9()
    assert all(kill.sent_before < sent for kill in kills), "a leader was killed after the run"
    result = finish_and_compare(exchange, config, archive)
    print(result)
    assert result.sent == sent
    assert result.lost == 0, result
    assert result.archived == sent, result


async def test_a_pull_consumer_whose_leader_dies_is_reported_lost(cluster: NatsCluster) -> None:
    """Pull requests wait on the consumer's leader only; when it dies they vanish without
    an answer. The missing idle heartbeats must give that away within seconds."""
    client_node = cluster.nodes[0]
    async with open_bridge([client_node.url]) as bridge:
        await bridge.ensure_stream(attrs.evolve(stream_spec(["prod.kalshi.json.>"]), replicas=3))
        await publish_range(bridge, 1, 100)
        # Recreate the consumer until its leader is not the server the client talks to,
        # so the client's own connection stays up.
        for _ in range(20):
            consumer = await bridge.reset_consumer(
                STREAM, CONSUMER, "prod.kalshi.json.>", None, 30.0, 1000
            )
            with trio.fail_after(10):
                while (leader := cluster.consumer_leader(STREAM, CONSUMER)) is None:
                    await trio.sleep(0.05)
            if cluster.node_named(leader) is not client_node:
                break
            await consumer.close()
        else:
            pytest.fail("the consumer's leader was always the client's server")
        fetched = 0
        with trio.fail_after(10):
            while fetched < 100:
                fetched += len(await consumer.fetch(100, 1.0))
        cluster.node_named(leader).stop(kill=True)
        killed_at = trio.current_time()
        with pytest.raises(ConsumerLost), trio.fail_after(10):
            while True:
                assert await consumer.fetch(100, 0.5) == []
        # Silence is noticed after SILENCE_HEARTBEATS idle heartbeats, at the next fetch
        # (0.5 s here); the rest is slack for a busy machine.
        assert trio.current_time() - killed_at < SILENCE_HEARTBEATS * HEARTBEAT_S + 2.5
        assert bridge.disconnects == 0
