"""What `ssmd run --demo` shows: the live status line, per feed, and the end summary."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import trio

from ssmd.archiver.manifest import load_manifest
from ssmd.archiver.recovery import day_dirs
from ssmd.archiver.service import ArchiverStatus
from ssmd.connector.connection import Connection
from ssmd.connector.service import ConnectorTasks, FeedTasks


class ProgressLine:
    """One live status line on a terminal; log lines clear it before they print."""

    def __init__(self) -> None:
        self._stream = sys.stderr
        self._tty = sys.stderr.isatty()
        self._shown = False
        self._last_plain = 0.0

    def write(self, text: str) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._shown = False
        self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def show(self, line: str, now: float) -> None:
        if self._tty:
            self._stream.write("\r\x1b[K" + line)
            self._shown = True
        elif now - self._last_plain >= 5:
            self._stream.write(line + "\n")
            self._last_plain = now
        self._stream.flush()

    def end(self) -> None:
        if self._shown:
            self._stream.write("\n")
            self._shown = False


def connection_state(connections: list[Connection]) -> str:
    """`connected`, or `reconnecting`/`connecting` with how many of the connections are up."""
    up = sum(1 for c in connections if c.stats.connects > c.stats.disconnects)
    if up == len(connections):
        return "connected"
    ever = any(c.stats.connects or c.stats.connect_failures for c in connections)
    state = "reconnecting" if ever else "connecting"
    return f"{state} ({up}/{len(connections)} up)" if len(connections) > 1 else state


def _received(feed: FeedTasks) -> int:
    return sum(c.stats.messages for c in feed.connections)


def feed_status(feed: FeedTasks, archiver: ArchiverStatus | None, rate: float) -> str:
    """`kalshi 301/s, 1234 archived, gaps 1+0, connected` (exchange + stream gaps)."""
    exchange_gaps = sum(c.stats.gaps for c in feed.connections)
    state = connection_state(feed.connections)
    archived, stream_gaps = "-", 0
    if archiver is not None:
        archived = str(archiver.writer.records)
        stream_gaps = archiver.fetcher.gaps
        if archiver.writer.disk_full.value:
            state += ", disk full"
    return (
        f"{feed.feed} {rate:3.0f}/s, {archived} archived, "
        f"gaps {exchange_gaps}+{stream_gaps}, {state}"
    )


async def show_progress(
    connector: ConnectorTasks,
    archivers: Mapping[str, ArchiverStatus],
    stop_at: float,
    display: ProgressLine,
) -> None:
    """Every second: each feed's receive rate, what is archived, gaps and connection."""
    last = {feed.feed: _received(feed) for feed in connector.feeds}
    last_t = trio.current_time()
    while True:
        await trio.sleep(1)
        now = trio.current_time()
        parts = []
        for feed in connector.feeds:
            received = _received(feed)
            rate = (received - last[feed.feed]) / (now - last_t)
            last[feed.feed] = received
            parts.append(feed_status(feed, archivers.get(feed.feed), rate))
        last_t = now
        parts.append(f"{max(0.0, stop_at - now):3.0f}s left")
        display.show(" | ".join(parts), now)


def summarize(feed_dir: Path) -> str:
    """One row per archived day of one feed, from its manifests."""
    rows = [
        f"{'day':<12}{'files':>6}{'records':>10}{'tickers':>9}{'bytes':>12}{'gaps':>6}"
        "  discontinuity records"
    ]
    for day in day_dirs(feed_dir):
        manifest = load_manifest(day)
        if manifest is None:
            continue
        discontinuities: dict[str, int] = {}
        for entry in manifest.files:
            for kind, n in entry.discontinuities.items():
                discontinuities[kind] = discontinuities.get(kind, 0) + n
        rows.append(
            f"{day.name:<12}{len(manifest.files):>6}{sum(f.records for f in manifest.files):>10}"
            f"{len(manifest.tickers):>9}{sum(f.compressed_bytes for f in manifest.files):>12}"
            f"{len(manifest.gaps):>6}  "
            + (", ".join(f"{k} {n}" for k, n in sorted(discontinuities.items())) or "-")
        )
    return "\n".join(rows)


def recorder_report(
    connector: ConnectorTasks | None, archivers: Mapping[str, ArchiverStatus] | None
) -> list[str]:
    """Per feed: what the connector received and JetStream acknowledged, and what the
    archiver archived (after a clean stop, archived == acknowledged)."""
    lines = []
    feeds = connector.feeds if connector is not None else []
    for feed in feeds:
        connections = feed.connections
        lines.append(
            f"{feed.feed} connector: received {_received(feed)}, "
            f"acknowledged {feed.publisher.stats.acked}, "
            f"exchange gaps {sum(c.stats.gaps for c in connections)}, "
            f"resubscribes {sum(c.stats.resubscribes for c in connections)}, "
            f"disconnects {sum(c.stats.disconnects for c in connections)}"
        )
    for name, status in (archivers or {}).items():
        lines.append(
            f"{name} archiver: archived {status.writer.records} in {status.writer.files} "
            f"file(s), stream gaps {status.fetcher.gaps}"
        )
    return lines
