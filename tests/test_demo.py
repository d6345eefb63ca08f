"""`ssmd run --demo` (what `make demo` runs): simulated exchange -> real connector ->
embedded nats-server -> real archiver, producing an archive that verifies and continues."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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


def test_demo_records_three_simulated_venues_and_a_second_run_continues(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    first = run("run", "--demo", "--duration", "6", "--data-dir", str(tmp_path))
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
