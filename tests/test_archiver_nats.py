"""The archiver against a real nats-server, as the `ssmd` process operators run."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest
import trio

from ssmd.archiver.lines import strip_meta
from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from tests.procs import (
    SsmdProcess,
    archived_records,
    check_manifests,
    expected_line_value,
    http_get,
    metric,
    publish_range,
    stream_spec,
    wait_for_ack_floor,
    write_config,
)

pytestmark = pytest.mark.trio

# The stop must end within `service.shutdown_timeout`; the process then still has to
# exit (interpreter teardown, on a machine the other test worker keeps busy). An
# unbounded shield (the bridge call's 10 s) would overrun both.
SHUTDOWN_TIMEOUT_S = 5.0
EXIT_SLACK_S = 2.0


async def test_archives_exactly_n_mixed_messages(tmp_path: Path, nats_server: NatsServer) -> None:
    n = 3000
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.kalshi.json.>"]))
        await publish_range(bridge, 1, n)
        config = write_config(tmp_path / "ssmd.toml", nats_server.url, tmp_path / "archive")
        proc = SsmdProcess(config).start()
        await wait_for_ack_floor(bridge, n)
        code, _ = proc.terminate()
    assert code == 0
    feed_dir = tmp_path / "archive" / "kalshi"
    records = archived_records(feed_dir)
    assert [r["_seq"] for r in records] == list(range(1, n + 1))
    for i, record in enumerate(records, start=1):
        assert strip_meta(record) == expected_line_value(i)
        assert record["_recv_ns"] > 0
    totals = check_manifests(feed_dir)
    assert totals["records"] == n and totals["gaps"] == []
    manifest = (
        feed_dir / next(p.name for p in feed_dir.iterdir() if p.is_dir()) / "manifest.json"
    ).read_text()
    assert "KXBTCD-26MAR1213-T69499.99" in manifest  # tickers are decoded


async def test_kill9_mid_stream_loses_nothing_and_doubles_nothing(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    n = 20_000
    rng = random.Random(7)
    config = write_config(
        tmp_path / "ssmd.toml", nats_server.url, tmp_path / "archive", batch_size=200
    )
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.kalshi.json.>"]))
        proc = SsmdProcess(config).start()

        async def publisher() -> None:
            for first in range(1, n + 1, 1000):
                await publish_range(bridge, first, first + 999)
                await trio.sleep(0.2)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher)
            for _ in range(5):
                # Up and archiving, so each kill lands mid-file.
                await trio.to_thread.run_sync(proc.wait_ready)
                await trio.sleep(rng.uniform(0.2, 0.8))
                proc.kill9()
                proc = SsmdProcess(config).start()
        await wait_for_ack_floor(bridge, n, timeout=90)
        proc.wait_ready()
        code, _ = proc.terminate()
    assert code == 0
    feed_dir = tmp_path / "archive" / "kalshi"
    seqs = [r["_seq"] for r in archived_records(feed_dir)]
    assert len(seqs) == len(set(seqs)), "a message was archived twice"
    assert sorted(seqs) == list(range(1, n + 1)), "a message was lost"
    totals = check_manifests(feed_dir)
    assert totals["records"] == n and totals["gaps"] == []
    # The kills really landed mid-file: leftover partial files were salvaged.
    assert (tmp_path / "ssmd.log").read_text().count("salvaged") >= 3


async def test_sigterm_under_load_exits_0_with_finished_files(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    config = write_config(
        tmp_path / "ssmd.toml",
        nats_server.url,
        tmp_path / "archive",
        shutdown_timeout=f"{SHUTDOWN_TIMEOUT_S:g}s",
    )
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.kalshi.json.>"]))
        await publish_range(bridge, 1, 2000)
        proc = SsmdProcess(config).start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_range, bridge, 2001, 40_000)
            await wait_for_ack_floor(bridge, 2000)
            code, elapsed = proc.terminate()
            nursery.cancel_scope.cancel()
    assert code == 0
    assert elapsed < SHUTDOWN_TIMEOUT_S + EXIT_SLACK_S
    feed_dir = tmp_path / "archive" / "kalshi"
    totals = check_manifests(feed_dir)  # no partial files, every file listed
    seqs = [r["_seq"] for r in archived_records(feed_dir)]
    assert seqs == list(range(1, len(seqs) + 1)) and totals["records"] == len(seqs) >= 2000


async def test_filter_that_cannot_match_the_stream_is_refused(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.kalshi.json.>"]))
    config = write_config(
        tmp_path / "ssmd.toml", nats_server.url, tmp_path / "archive", filter="dev.kalshi.json.>"
    )
    proc = SsmdProcess(config).start()
    assert proc.proc is not None
    assert proc.proc.wait(timeout=30) == 2
    output = proc.log.read_text()
    assert "archiver.filter 'dev.kalshi.json.>' cannot match" in output
    assert "Traceback" not in output
    assert not (tmp_path / "archive" / "kalshi").exists() or not any(
        (tmp_path / "archive" / "kalshi").glob("*/*.jsonl.gz*")
    )


async def test_missing_stream_is_refused(tmp_path: Path, nats_server: NatsServer) -> None:
    config = write_config(tmp_path / "ssmd.toml", nats_server.url, tmp_path / "archive")
    proc = SsmdProcess(config).start()
    assert proc.proc is not None
    assert proc.proc.wait(timeout=30) == 2
    output = proc.log.read_text()
    assert "stream 'MARKETDATA' does not exist" in output and "Traceback" not in output


async def test_messages_expired_while_down_are_a_gap_with_their_count(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    config = write_config(tmp_path / "ssmd.toml", nats_server.url, tmp_path / "archive")
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.kalshi.json.>"], max_msgs=200))
        await publish_range(bridge, 1, 100)
        proc = SsmdProcess(config).start()
        await wait_for_ack_floor(bridge, 100)
        assert proc.terminate()[0] == 0
        # While the archiver is down 300 more arrive; the stream keeps the newest 200,
        # so seqs 101..200 expire unarchived.
        await publish_range(bridge, 101, 400)
        proc = SsmdProcess(config).start()
        await wait_for_ack_floor(bridge, 400)
        assert proc.terminate()[0] == 0
    feed_dir = tmp_path / "archive" / "kalshi"
    totals = check_manifests(feed_dir)
    assert [(g["after_seq"], g["missing_count"], g["exact"]) for g in totals["gaps"]] == [
        (100, 100, True)
    ]
    seqs = [r["_seq"] for r in archived_records(feed_dir)]
    assert seqs == [*range(1, 101), *range(201, 401)]


async def test_filtered_consumer_on_a_two_feed_stream_reports_no_gaps(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    config = write_config(tmp_path / "ssmd.toml", nats_server.url, tmp_path / "archive")
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.>"]))
        for first in range(1, 2001, 100):
            await publish_range(bridge, first, first + 99, feed="kalshi")
            await publish_range(bridge, first, first + 99, feed="polymarket")
        proc = SsmdProcess(config).start()
        await wait_for_ack_floor(bridge, 3900)  # the last kalshi message's stream seq
        code, _ = proc.terminate()
    assert code == 0
    feed_dir = tmp_path / "archive" / "kalshi"
    totals = check_manifests(feed_dir)
    assert totals["gaps"] == []
    records = archived_records(feed_dir)
    assert len(records) == 2000
    assert all(r["_subject"].startswith("prod.kalshi.") for r in records)


async def test_nats_server_restart_mid_stream_loses_and_doubles_nothing(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    n = 30_000
    config = write_config(
        tmp_path / "ssmd.toml", nats_server.url, tmp_path / "archive", batch_size=200
    )
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.kalshi.json.>"]))
        await publish_range(bridge, 1, n)
    proc = SsmdProcess(config).start()
    async with open_bridge([nats_server.url]) as bridge:
        await wait_for_ack_floor(bridge, 2000)
        floor = await bridge.consumer_ack_floor("MARKETDATA", "archiver-kalshi")
    # The outage falls mid-stream.
    assert floor is not None and floor < n, floor
    nats_server.stop(kill=True)
    await trio.sleep(1.5)
    nats_server.start()
    async with open_bridge([nats_server.url]) as bridge:
        await wait_for_ack_floor(bridge, n, timeout=90)
    _, metrics = http_get(proc.health_port, "/metrics")
    code, _ = proc.terminate()
    assert code == 0
    feed_dir = tmp_path / "archive" / "kalshi"
    seqs = [r["_seq"] for r in archived_records(feed_dir)]
    assert seqs == list(range(1, n + 1))
    assert check_manifests(feed_dir)["gaps"] == []
    # The connection was lost and re-established, and the consumer repositioned at the
    # archive after it (its first positioning is at start-up).
    assert metric(metrics, "ssmd_nats_reconnects_total") >= 1, metrics
    assert metric(metrics, "ssmd_archive_consumer_resets_total") >= 2, metrics


async def test_a_consumer_deleted_under_the_archiver_is_recreated(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    config = write_config(tmp_path / "ssmd.toml", nats_server.url, tmp_path / "archive")
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.kalshi.json.>"]))
        await publish_range(bridge, 1, 100)
        proc = SsmdProcess(config).start()
        await wait_for_ack_floor(bridge, 100)
        assert await bridge.delete_consumer("MARKETDATA", "archiver-kalshi")
        await publish_range(bridge, 101, 300)
        await wait_for_ack_floor(bridge, 300, timeout=30)
        code, _ = proc.terminate()
    assert code == 0
    feed_dir = tmp_path / "archive" / "kalshi"
    assert [r["_seq"] for r in archived_records(feed_dir)] == list(range(1, 301))
    assert "pull consumer lost" in (tmp_path / "ssmd.log").read_text()


async def test_sigterm_while_nats_hangs_still_finishes_within_the_deadline(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    config = write_config(
        tmp_path / "ssmd.toml",
        nats_server.url,
        tmp_path / "archive",
        shutdown_timeout=f"{SHUTDOWN_TIMEOUT_S:g}s",
    )
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(stream_spec(["prod.kalshi.json.>"]))
        await publish_range(bridge, 1, 500)
        proc = SsmdProcess(config).start()
        await wait_for_ack_floor(bridge, 500)
    assert nats_server.process is not None
    nats_server.process.send_signal(signal.SIGSTOP)  # a hung server: sockets open, no answers
    try:
        await trio.sleep(0.5)
        code, elapsed = proc.terminate()
    finally:
        nats_server.process.send_signal(signal.SIGCONT)
    assert code == 0 and elapsed < SHUTDOWN_TIMEOUT_S + EXIT_SLACK_S
    feed_dir = tmp_path / "archive" / "kalshi"
    assert check_manifests(feed_dir)["records"] == 500
