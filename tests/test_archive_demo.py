"""Books from what the real connector recorded off the simulated exchange (`ssmd run
--demo`: ssmd/simulators/kalshi/, integer-cent form, 12 markets per orderbook subscription,
one deliberate `seq` gap): the gap's subscription and only it goes invalid, each of its
markets until its own fresh snapshot, and no book ever contradicts the exchange's deltas."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import ssmd.archive


def test_demo_gap_invalidates_exactly_its_subscription_until_each_snapshot(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "ssmd", "run", "--demo", "--duration", "5", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    archive = ssmd.archive.open(tmp_path / "archive")
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
