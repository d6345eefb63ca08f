"""The archiver's Prometheus metrics, read from its status at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily

from ssmd.archiver.service import ArchiverStatus
from ssmd.message_types import type_labels
from ssmd.metrics import by_label, counter, gauge


def archiver_metrics(feed: str, status: ArchiverStatus) -> Iterator[object]:
    labels = {"feed": feed}
    w, f = status.writer, status.fetcher
    yield by_label(
        CounterMetricFamily,
        "ssmd_archived_messages",
        "Messages written and fsynced to the archive, by subject type.",
        labels,
        "type",
        type_labels(w.records_by_type),
    )
    yield counter("ssmd_archive_files_rotated", "Slot files finished.", labels, w.files)
    yield counter(
        "ssmd_archive_bytes_written",
        "Compressed bytes written (fsynced).",
        labels,
        w.compressed_bytes,
    )
    wire = status.wire_acks
    yield counter(
        "ssmd_archive_acks",
        "Acks sent to JetStream (AckAll: one covers every batch before it).",
        labels,
        w.acks if wire is None else wire.sent,
    )
    yield counter(
        "ssmd_archive_ack_failures",
        "Acks that failed to be handed over or sent (harmless: redelivery is skipped).",
        labels,
        w.ack_failures + (0 if wire is None else wire.failed),
    )
    yield counter(
        "ssmd_stream_gaps",
        "Gaps: messages that left the stream before they were archived.",
        labels,
        f.gaps,
    )
    yield counter(
        "ssmd_stream_missing_messages", "Messages counted in stream gaps.", labels, f.missing
    )
    yield counter(
        "ssmd_archive_consumer_resets",
        "Times the consumer was repositioned at the archive.",
        labels,
        f.consumer_resets,
    )
    yield counter(
        "ssmd_archive_nats_errors",
        "Fetches that failed because NATS was unavailable.",
        labels,
        f.nats_errors,
    )
    yield gauge(
        "ssmd_archive_pending_messages",
        "Messages of this feed the stream holds beyond the last one delivered to the "
        "archiver: its backlog (grows while the archiver is slower than the feed).",
        labels,
        float(f.pending),
    )
    yield counter(
        "ssmd_archive_disk_full_events",
        "Times the archiver paused because the disk was full.",
        labels,
        w.disk_full_events,
    )
    yield gauge(
        "ssmd_archive_disk_full",
        "1 while the archiver is paused by a full disk.",
        labels,
        float(w.disk_full.value),
    )
    yield gauge(
        "ssmd_archive_last_write_timestamp_seconds",
        "Wall time of the last archived batch.",
        labels,
        w.last_write_ns / 1e9,
    )
    yield w.fsync_seconds.family("ssmd_archive_fsync_seconds", "fsync time per batch.", labels)
