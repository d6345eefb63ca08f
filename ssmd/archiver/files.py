"""Slot files on disk: durable appends, finishing, reading back and salvage.

A file being written is `HHMM.jsonl.gz.partial`; only a finished, complete gzip file
carries the final `HHMM.jsonl.gz` name. Each batch is compressed as one block that ends
with a zlib sync flush, written at a known offset and fsynced, so everything acknowledged
can be decompressed from the partial file after a crash.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import attrs

from ssmd.archiver.lines import format_line, read_prefix
from ssmd.subjects import DISCONTINUITY_TYPE, split_subject

log = logging.getLogger("ssmd.archiver.files")

FINAL_SUFFIX = ".jsonl.gz"
PARTIAL_SUFFIX = ".jsonl.gz.partial"
SALVAGE_SUFFIX = ".salvage"
_READ_CHUNK = 1 << 20
_NAME = re.compile(r"^(\d{4}|\d{6})(?:\.(\d+))?\.jsonl\.gz$")


class DiskFull(Exception):
    """The disk (or quota) is full; the same write can be retried once space returns."""


class ArchivedMessage(Protocol):
    """What the writer needs of a message (a FetchedMessage satisfies it)."""

    @property
    def subject(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def stream_seq(self) -> int: ...
    @property
    def recv_ns(self) -> int | None: ...


class FileOps:
    """The file-system calls the archiver makes. Tests subclass it to inject faults."""

    def create(self, path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, src: Path, dst: Path) -> None:
        os.rename(src, dst)

    def unlink(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def fsync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_atomic(self, path: Path, data: bytes) -> None:
        """Temp file, fsync, rename over `path`, fsync the directory."""
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            self.unlink(tmp)
            fd = self.create(tmp)
        except OSError as exc:
            raise _classify(exc) from exc
        try:
            self.pwrite(fd, data, 0)
            self.fsync(fd)
        except OSError as exc:
            self.close(fd)
            self.unlink(tmp)
            raise _classify(exc) from exc
        self.close(fd)
        try:
            self.rename(tmp, path)
            self.fsync_dir(path.parent)
        except OSError as exc:
            raise _classify(exc) from exc


def _classify(exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"{exc.strerror} ({exc.filename or 'archive'})")
    return exc


def make_dir(directory: Path, ops: FileOps) -> None:
    """Create `directory` if missing (a new day) and make its entry durable.

    Raises DiskFull, like every other step, when there is no room for it.
    """
    try:
        if not directory.exists():
            directory.mkdir(parents=True, exist_ok=True)
            ops.fsync_dir(directory.parent)
    except OSError as exc:
        raise _classify(exc) from exc


@attrs.define
class FileStats:
    """What a file holds. Counting per subject keeps the per-message cost to one
    increment; types, tickers and discontinuities are derived from the subjects."""

    records: int = 0
    bytes: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    subjects: Counter[str] = attrs.field(factory=Counter)

    def add(self, seq: int, subject: str, size: int) -> None:
        self.records += 1
        self.bytes += size
        if self.first_seq is None:
            self.first_seq = seq
        self.last_seq = seq
        self.subjects[subject] += 1

    def merge(self, other: FileStats) -> None:
        if other.records == 0:
            return
        self.records += other.records
        self.bytes += other.bytes
        if self.first_seq is None:
            self.first_seq = other.first_seq
        self.last_seq = other.last_seq
        self.subjects.update(other.subjects)

    @property
    def records_by_type(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for subject, n in self.subjects.items():
            out[split_subject(subject)[0]] += n
        return out

    @property
    def discontinuities(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for subject, n in self.subjects.items():
            if split_subject(subject)[0] == DISCONTINUITY_TYPE:
                out[subject.rsplit(".", 1)[-1]] += n
        return out

    @property
    def tickers(self) -> set[str]:
        return {t for t in (split_subject(s)[1] for s in self.subjects) if t is not None}


def final_name(label: str, n: int) -> str:
    return f"{label}{FINAL_SUFFIX}" if n == 0 else f"{label}.{n}{FINAL_SUFFIX}"


def parse_final_name(name: str) -> str | None:
    """The slot label of a finished file name, or None if it is not one."""
    match = _NAME.match(name)
    return match.group(1) if match else None


def choose_name(directory: Path, label: str) -> str:
    """The first `label[.N].jsonl.gz` that exists neither finished nor partial."""
    n = 0
    while True:
        name = final_name(label, n)
        if not (directory / name).exists() and not (directory / (name + ".partial")).exists():
            return name
        n += 1


class SlotFile:
    """The open gzip file of one slot, written as `<name>.partial` until finished."""

    def __init__(
        self, directory: Path, label: str, start_ns: int, end_ns: int, level: int, ops: FileOps
    ) -> None:
        make_dir(directory, ops)
        self.directory = directory
        self.name = choose_name(directory, label)
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.stats = FileStats()
        self._ops = ops
        self._partial = directory / (self.name + ".partial")
        try:
            self._fd = ops.create(self._partial)
            ops.fsync_dir(directory)
        except OSError as exc:
            raise _classify(exc) from exc
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
        self._offset = 0
        self._pending: bytes | None = None
        self._pending_stats: FileStats | None = None
        self._finished = False
        self.last_fsync_s = 0.0

    @property
    def compressed_bytes(self) -> int:
        return self._offset

    @property
    def partial_path(self) -> Path:
        return self._partial

    def append(self, messages: Sequence[ArchivedMessage]) -> FileStats:
        """Compress `messages` as one block, write it and fsync it.

        Raises DiskFull with nothing half-done: calling `append` again with the same
        messages retries the very same block at the same offset.
        """
        if self._pending is None:
            lines: list[bytes] = []
            stats = FileStats()
            for m in messages:
                line = format_line(
                    m.stream_seq,
                    m.subject,
                    m.data,
                    m.recv_ns,
                    backfilled=getattr(m, "backfilled", False),
                )
                lines.append(line)
                stats.add(m.stream_seq, m.subject, len(line))
            data = b"".join(lines)
            self._pending = self._compressor.compress(data) + self._compressor.flush(
                zlib.Z_SYNC_FLUSH
            )
            self._pending_stats = stats
        self._write_pending()
        added = self._pending_stats or FileStats()
        self._pending_stats = None
        self.stats.merge(added)
        return added

    def _write_pending(self) -> None:
        assert self._pending is not None
        try:
            self._ops.pwrite(self._fd, self._pending, self._offset)
            started = time.perf_counter()
            self._ops.fsync(self._fd)
            self.last_fsync_s = time.perf_counter() - started
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._ops.truncate(self._fd, self._offset)
            raise _classify(exc) from exc
        self._offset += len(self._pending)
        self._pending = None

    def finish(self) -> Path:
        """Write the gzip trailer, fsync, rename to the final name.

        Retryable after DiskFull: each step is done once, whichever step failed.
        """
        if self._pending is not None and not self._finished:
            self.append(())
        if not self._finished:
            self._pending = self._compressor.flush(zlib.Z_FINISH)
            self._finished = True
        if self._pending is not None:
            self._write_pending()
        final = self.directory / self.name
        try:
            if self._fd >= 0:
                self._ops.close(self._fd)
                self._fd = -1
            if self._partial.exists():
                self._ops.rename(self._partial, final)
            self._ops.fsync_dir(self.directory)
        except OSError as exc:
            raise _classify(exc) from exc
        return final


class GzipLines:
    """Complete lines of a gzip file, stopping quietly at truncation or corruption.

    After iterating, `complete` says whether the file ended cleanly, and `error`
    describes what stopped it otherwise.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.complete = False
        self.error = ""

    def __iter__(self) -> Iterator[bytes]:
        decomp = zlib.decompressobj(31)
        members = 0
        fed = False
        tail = b""
        with open(self.path, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                while chunk:
                    fed = True
                    try:
                        out = decomp.decompress(chunk)
                    except zlib.error as exc:
                        self.error = f"corrupt gzip data: {exc}"
                        return
                    if out:
                        lines = (tail + out).split(b"\n")
                        tail = lines.pop()
                        for line in lines:
                            yield line + b"\n"
                    chunk = b""
                    if decomp.eof:
                        members += 1
                        chunk = decomp.unused_data
                        decomp = zlib.decompressobj(31)
                        fed = False
        if tail:
            self.error = "ends in the middle of a line"
        elif fed or members == 0:
            self.error = "truncated gzip stream"
        else:
            self.complete = True


def line_identity(line: bytes) -> tuple[int, str] | None:
    """(`_seq`, `_subject`) of an archive line, read from its fixed prefix."""
    prefix = read_prefix(line)
    return None if prefix is None else (prefix[0], prefix[1])


def scan_stats(path: Path) -> tuple[FileStats, GzipLines]:
    stats = FileStats()
    reader = GzipLines(path)
    for line in reader:
        ident = line_identity(line)
        if ident is not None:
            stats.add(ident[0], ident[1], len(line))
    return stats, reader


def salvage(partial: Path, level: int, ops: FileOps) -> tuple[Path, FileStats] | None:
    """Turn a leftover `.partial` into a finished file holding all its complete lines.

    Idempotent: a crash at any point leaves either the partial (redo) or the finished
    file (done). Returns None, deleting the partial, when it held no complete line.
    """
    final = partial.with_name(partial.name.removesuffix(".partial"))
    tmp = partial.with_name(f".{final.name}{SALVAGE_SUFFIX}")
    ops.unlink(tmp)
    stats = FileStats()
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    fd = ops.create(tmp)
    offset = 0
    unreadable = 0
    try:
        batch: list[bytes] = []
        size = 0
        for line in GzipLines(partial):
            ident = line_identity(line)
            if ident is None:
                unreadable += 1
                continue
            stats.add(ident[0], ident[1], len(line))
            batch.append(line)
            size += len(line)
            if size >= _READ_CHUNK:
                block = compressor.compress(b"".join(batch))
                ops.pwrite(fd, block, offset)
                offset += len(block)
                batch, size = [], 0
        block = compressor.compress(b"".join(batch)) + compressor.flush(zlib.Z_FINISH)
        ops.pwrite(fd, block, offset)
        ops.fsync(fd)
    except OSError as exc:
        ops.close(fd)
        ops.unlink(tmp)
        raise _classify(exc) from exc
    ops.close(fd)
    if unreadable:
        log.error("%s: %d line(s) without an ssmd prefix could not be kept", partial, unreadable)
    if stats.records == 0:
        ops.unlink(tmp)
        ops.unlink(partial)
        ops.fsync_dir(partial.parent)
        return None
    ops.rename(tmp, final)
    ops.fsync_dir(partial.parent)
    ops.unlink(partial)
    ops.fsync_dir(partial.parent)
    return final, stats
