"""`ssmd run --demo` (what `make demo` runs): simulated exchange -> real connector ->
embedded nats-server -> real archiver, producing an archive that verifies and continues,
and whose books the archive readers rebuild (`check_books_from_the_gap`, on the first
run's archive: one demo run serves both)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ssmd.archive
from ssmd.cli.main import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ssmd", *args], capture_output=True, text=True, timeout=120
    )


FEEDS = ("kalshi", "polymarket", "kraken")


def discontinuities(archive: Path, feed: str = "kalshi") -> dict[str, int]:
    """Discontinuity records per kind over every day's manifest of one feed."""
    totals: dict[str, int] = {}
    for manifest in archive.glob(f"{feed}/*/manifest.json"):
        for kind, n in json.loads(manifest.read_text())["discontinuities"].items():
            totals[kind] = totals.get(kind, 0) + n
    return totals


def ssmd_records(archive: Path, feed: str = "kalshi") -> list[dict[str, Any]]:
    records = []
    for day in sorted(p.name for p in (archive / feed).iterdir() if p.is_dir()):
        cat = run("data", "cat", feed, day, "--path", str(archive), "--type", "ssmd")
        assert cat.returncode == 0, cat.stderr
        records += [json.loads(line) for line in cat.stdout.splitlines()]
    return records


def acknowledged_and_archived(stderr: str, feed: str) -> tuple[int, int]:
    acknowledged = re.search(rf"^{feed} connector: .*acknowledged (\d+)", stderr, re.M)
    archived = re.search(rf"^{feed} archiver: archived (\d+)", stderr, re.M)
    assert acknowledged and archived, stderr[-3000:]
    return int(acknowledged.group(1)), int(archived.group(1))


def verify(archive: Path) -> None:
    """`ssmd data verify` passes on every feed, each with a non-empty archive (one
    process for all three: each start of the CLI costs about half a second)."""
    result = run("data", "verify", "--path", str(archive))
    assert result.returncode == 0, result.stdout + result.stderr
    for feed in FEEDS:
        assert f"ok   {feed} " in result.stdout, result.stdout


def records_of(archive: Path, feed: str) -> int:
    return sum(
        json.loads(m.read_text())["records"] for m in archive.glob(f"{feed}/*/manifest.json")
    )


def check_books_from_the_gap(archive_root: Path) -> None:
    """Books from what the real connector recorded off the simulated Kalshi exchange
    (integer-cent form, 12 markets per orderbook subscription, one deliberate `seq` gap):
    the gap's subscription and only it goes invalid, each of its markets until its own
    fresh snapshot, and no book ever contradicts the exchange's deltas."""
    archive = ssmd.archive.open(archive_root)
    # Usually one day; a run that crosses 00:00 UTC writes two.
    days = archive.days("kalshi")
    assert days
    gaps = [r for day in days for r in archive.records("kalshi", day, type="ssmd")]
    gap = next(r for r in gaps if r.subject.endswith(".gap"))
    body: dict[str, Any] = gap.payload()
    assert body.get("channel") == "orderbook_delta"  # the simulator gaps only orderbook sids
    gapped = set(body["markets"])
    assert gap.recv_ns is not None
    books = [r for day in days for r in archive.records("kalshi", day, type="orderbook")]
    snapshotted_before: set[str] = {
        r.market for r in books if r.market is not None and r.recv_ns is not None and r.recv_ns < gap.recv_ns and b"orderbook_snapshot" in r.line
    }  # fmt: skip
    others = snapshotted_before - gapped
    assert gapped and others, (gapped, others)
    for market in sorted(snapshotted_before):
        view = archive.book("kalshi", market, at=gap.recv_ns)
        if market in gapped:
            assert not view.valid and "exchange gap" in (view.reason or ""), view
        else:
            assert view.valid, view
    # Each gapped market is valid again from its own fresh snapshot after the gap.
    refreshed = 0
    for market in sorted(gapped):
        fresh = [
            r
            for r in books
            if r.market == market and r.seq > gap.seq and b"orderbook_snapshot" in r.line
        ]
        if not fresh:
            continue
        at = fresh[0].recv_ns
        assert at is not None
        before = archive.book("kalshi", market, at=at - 1)
        after = archive.book("kalshi", market, at=at)
        assert not before.valid and after.valid, (market, before.reason)
        refreshed += 1
    assert refreshed > 0  # the connector resubscribed: fresh snapshots followed
    # Rebuilt from the exchange's own deltas, no level ever goes below zero.
    last = max(r.recv_ns or 0 for r in books)
    for market in {r.market for r in books if r.market}:
        view = archive.book("kalshi", market, at=last)
        assert "below zero" not in (view.reason or ""), view
    covered = [archive.coverage("kalshi", day, by_market=True) for day in days]
    rows = [r for coverage in covered for r in coverage["markets"]]
    degraded = {r["market"] for r in rows if any(x["kind"] == "gap" for x in r["reasons"])}
    assert degraded == gapped & {r["market"] for r in rows}
    json.dumps(covered)


def test_demo_records_three_simulated_venues_and_a_second_run_continues(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    first = run("run", "--demo", "--duration", "5", "--data-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopped cleanly" in first.stderr
    # The recorder stops before its exchange, and the archiver takes all the connector
    # had acknowledged, the final disconnect record included: a quiet, complete stop.
    shutdown = first.stderr[first.stderr.index("stopping: --duration") :]
    assert " WARNING " not in shutdown and " ERROR " not in shutdown, shutdown
    verify(archive)
    # The ssmd records of each feed after the first run, through `ssmd data cat`.
    first_records = {feed: ssmd_records(archive, feed) for feed in FEEDS}
    for feed in FEEDS:
        # Each archiver drains its own filter after the connectors have stopped.
        acknowledged, archived = acknowledged_and_archived(first.stderr, feed)
        assert archived == acknowledged > 0, feed
        assert records_of(archive, feed) == archived
        assert first_records[feed][-1]["type"] == "ssmd_disconnect", feed
    assert "day" in first.stdout and "connect 1" in first.stdout
    # The faults each simulator injected are in place in its archive.
    polymarket = discontinuities(archive, "polymarket")
    assert polymarket.get("connect", 0) >= 2 and polymarket.get("disconnect", 0) >= 2, polymarket
    # Nobody listed a Polymarket market: discovery subscribed them, and their books came.
    discovered = [
        r
        for r in first_records["polymarket"]
        if r["type"] == "ssmd_subscription" and r["reason"] == "discovery"
    ]
    assert sum(len(r["added"]) for r in discovered) >= 6, discovered
    kraken = first_records["kraken"]
    reasons = {r["reason"] for r in kraken if r["type"] == "ssmd_gap"}
    assert "checksum" in reasons, kraken
    assert any(r["type"] == "ssmd_resubscribe" and r["reason"] == "checksum" for r in kraken)

    found = discontinuities(archive)
    assert found.get("connect", 0) >= 1
    assert found.get("gap", 0) >= 1, found
    records = first_records["kalshi"]
    gaps = [r for r in records if r["type"] == "ssmd_gap"]
    assert gaps and gaps[0]["channel"] == "orderbook_delta"
    assert gaps[0]["got"] > gaps[0]["expected"]
    assert any("ws://127.0.0.1:" in r.get("url", "") for r in records)

    assert records[-1]["type"] == "ssmd_disconnect", records[-1]
    check_books_from_the_gap(archive)

    second = run("demo", "--duration", "3", "--data-dir", str(tmp_path))
    assert second.returncode == 0, second.stderr[-3000:]
    for feed in FEEDS:
        acknowledged, archived = acknowledged_and_archived(second.stderr, feed)
        assert archived == acknowledged > 0, feed
    verify(archive)
    assert discontinuities(archive)["connect"] >= found["connect"] + 1
    listing = json.loads(run("data", "ls", "--path", str(archive), "--json").stdout)
    assert sum(row["files"] for row in listing) >= 2
    assert sum(row["records"] for row in listing) > 1000
    tickers = set()
    for manifest in archive.glob("kalshi/*/manifest.json"):
        tickers |= set(json.loads(manifest.read_text())["tickers"])
    assert "KXBTCD-26MAR1213-T68499.99" in tickers


def test_run_needs_a_config_or_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 2
    assert "-c CONFIG" in capsys.readouterr().err
    assert main(["run", "--demo", "-c", "ssmd.toml"]) == 2
    assert "--demo" in capsys.readouterr().err
    assert main(["run", "-c", "ssmd.toml", "--duration", "3"]) == 2
    assert "--demo" in capsys.readouterr().err
