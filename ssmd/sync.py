"""Upload the finished archive to object storage: `gs://`, `s3://` or `file://`.

Only finished slot files (`*.jsonl.gz`) and each day's `manifest.json` leave the
machine; the `*.jsonl.gz.partial` being written and dot-named temp files never do.

A day's manifest is read before its directory is listed and uploaded after every file it
lists is at the destination, so a reader of the destination never finds a manifest that
names a missing file. (The archiver renames a file to its final name before it writes
the manifest that lists it, so the listing that follows finds every file the manifest
names.)

GCS and S3 show an object only once its upload has completed; a `file://` destination
gets the same by copying to a dot-named temp file and renaming it. What is already at
the destination with the size of the local file is not uploaded again; a manifest,
which is rewritten as files close, is compared by content (its MD5 where the store
exposes one).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import posixpath
import re
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
import fsspec
import trio
from fsspec.implementations.local import LocalFileSystem

from ssmd import reader
from ssmd.archiver.files import FINAL_SUFFIX, PARTIAL_SUFFIX
from ssmd.archiver.manifest import MANIFEST_NAME, Manifest, ManifestCorrupt
from ssmd.backoff import Backoff
from ssmd.config import SyncConfig

log = logging.getLogger("ssmd.sync")

_T = TypeVar("_T")
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")

FileSizes = dict[str, int]
DayFingerprint = tuple[frozenset[tuple[str, int]], str | None]
RemoteListing = dict[str, dict[str, Any]]


class SyncFailed(Exception):
    """The destination cannot be used at all (a bad URL, a missing filesystem package)."""


@attrs.define
class SyncReport:
    uploaded: int = 0
    skipped: int = 0
    bytes_uploaded: int = 0
    errors: list[str] = attrs.field(factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        text = (
            f"uploaded {self.uploaded} file(s), {self.bytes_uploaded} bytes; "
            f"{self.skipped} already there"
        )
        return f"{text}; {len(self.errors)} failed" if self.errors else text


def is_finished_file(name: str) -> bool:
    """A finished slot file: not the `.partial` being written, not a dot-named temp file."""
    return (
        name.endswith(FINAL_SUFFIX)
        and not name.endswith(PARTIAL_SUFFIX)
        and not name.startswith(".")
    )


@attrs.frozen
class LocalDay:
    """One day directory as it was read: manifest bytes first, then the finished files."""

    manifest: bytes | None
    files: FileSizes

    @property
    def fingerprint(self) -> DayFingerprint:
        manifest_md5 = None if self.manifest is None else _md5_hex(self.manifest)
        return frozenset(self.files.items()), manifest_md5


@attrs.define
class SyncState:
    """What a long-running sync already found complete at the destination.

    A day whose finished files and manifest have not changed since a round that synced
    it without error is not listed at the destination again.
    """

    settled: dict[Path, DayFingerprint] = attrs.field(factory=dict)

    def is_settled(self, day_dir: Path, day: LocalDay) -> bool:
        return self.settled.get(day_dir) == day.fingerprint

    def settle(self, day_dir: Path, day: LocalDay) -> None:
        self.settled[day_dir] = day.fingerprint


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def read_local_day(day_dir: Path) -> LocalDay:
    # The manifest before the listing: see the module docstring.
    try:
        manifest: bytes | None = (day_dir / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        manifest = None
    files: FileSizes = {}
    for path in day_dir.iterdir():
        if not is_finished_file(path.name):
            continue
        try:
            files[path.name] = path.stat().st_size
        except FileNotFoundError:
            continue
    return LocalDay(manifest, files)


def listed_files(manifest: bytes) -> set[str]:
    try:
        return {entry.name for entry in Manifest.from_json(json.loads(manifest)).files}
    except (ValueError, KeyError, TypeError, cattrs.BaseValidationError) as exc:
        raise ManifestCorrupt(f"unreadable manifest: {exc}") from exc


def open_destination(
    destination: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[Any, str]:
    """The fsspec filesystem for `destination` and the base path within it."""
    options = dict(storage_options or {})
    try:
        if destination.startswith("gs://"):
            # gcsfs's default class first asks each bucket's layout over gRPC (for zonal
            # buckets); uploads need only the JSON API, the one the emulator tests cover.
            from gcsfs.core import GCSFileSystem

            fs: Any = GCSFileSystem(**options)
            base = destination.removeprefix("gs://")
        else:
            fs, base = fsspec.core.url_to_fs(destination, **options)
    except Exception as exc:
        raise SyncFailed(f"cannot use destination {destination!r}: {exc}") from exc
    return fs, str(base).rstrip("/")


def remote_listing(fs: Any, remote_dir: str) -> RemoteListing:
    """Objects directly under `remote_dir`, by name; empty if there are none."""
    try:
        entries = fs.ls(remote_dir, detail=True, refresh=True)
    except FileNotFoundError:
        return {}
    return {
        posixpath.basename(str(entry["name"]).rstrip("/")): entry
        for entry in entries
        if entry.get("type") == "file"
    }


def _remote_size(info: Mapping[str, Any]) -> int | None:
    try:
        return int(info["size"])
    except (KeyError, TypeError, ValueError):
        return None


def remote_md5(info: Mapping[str, Any]) -> str | None:
    """The object's MD5 in hex, where the store lists one: GCS's `md5Hash`, S3's `ETag`."""
    gcs_md5 = info.get("md5Hash")
    if isinstance(gcs_md5, str):
        try:
            return base64.b64decode(gcs_md5, validate=True).hex()
        except binascii.Error:
            return None
    # An S3 ETag is the MD5 only for a single-part upload; a multipart one has a "-N".
    etag = info.get("ETag")
    if isinstance(etag, str) and _MD5_HEX.match(etag.strip('"')):
        return etag.strip('"')
    return None


def manifest_is_current(
    fs: Any, remote_path: str, info: Mapping[str, Any] | None, manifest: bytes
) -> bool:
    if info is None or _remote_size(info) != len(manifest):
        return False
    md5 = remote_md5(info)
    if md5 is not None:
        return md5 == _md5_hex(manifest)
    # No checksum listed (a local destination): a manifest is small, compare the bytes.
    current: bytes = fs.cat_file(remote_path)
    return current == manifest


def _temp_path(remote_path: str) -> str:
    directory, name = posixpath.split(remote_path)
    return posixpath.join(directory, f".{name}.sync-tmp")


def upload_file(fs: Any, local_path: Path, remote_path: str) -> None:
    if isinstance(fs, LocalFileSystem):
        temp = _temp_path(remote_path)
        fs.put_file(str(local_path), temp)
        fs.mv(temp, remote_path)
    else:
        fs.put_file(str(local_path), remote_path)


def upload_bytes(fs: Any, data: bytes, remote_path: str) -> None:
    if isinstance(fs, LocalFileSystem):
        temp = _temp_path(remote_path)
        fs.pipe_file(temp, data)
        fs.mv(temp, remote_path)
    else:
        fs.pipe_file(remote_path, data)


def prepare_remote_day(fs: Any, remote_dir: str) -> RemoteListing:
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(remote_dir, exist_ok=True)
    return remote_listing(fs, remote_dir)


async def _in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    # Abandoned on cancellation: the call finishes or fails in the background, and
    # either way nothing incomplete carries a final name at the destination.
    return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


async def _sync_day(
    fs: Any,
    remote_dir: str,
    day_dir: Path,
    report: SyncReport,
    state: SyncState | None,
) -> None:
    where = f"{day_dir.parent.name}/{day_dir.name}"
    errors_before = len(report.errors)
    try:
        local = await _in_thread(read_local_day, day_dir)
    except OSError as exc:
        report.errors.append(f"{where}: cannot read the local day: {exc}")
        return
    if state is not None and state.is_settled(day_dir, local):
        report.skipped += len(local.files) + (local.manifest is not None)
        return
    try:
        remote = await _in_thread(prepare_remote_day, fs, remote_dir)
    except Exception as exc:
        report.errors.append(f"{where}: cannot list the destination {remote_dir}: {exc}")
        return

    at_destination = {
        name for name, info in remote.items() if _remote_size(info) == local.files.get(name)
    }
    at_destination.update(name for name in remote if name not in local.files)
    for name, size in sorted(local.files.items()):
        if name in at_destination:
            report.skipped += 1
            continue
        try:
            await _in_thread(upload_file, fs, day_dir / name, f"{remote_dir}/{name}")
        except Exception as exc:
            report.errors.append(f"{where}/{name}: upload failed: {exc}")
            continue
        log.debug("uploaded %s/%s (%d bytes)", where, name, size)
        at_destination.add(name)
        report.uploaded += 1
        report.bytes_uploaded += size

    if local.manifest is not None:
        await _sync_manifest(fs, remote_dir, where, local.manifest, remote, at_destination, report)
    if state is not None and len(report.errors) == errors_before:
        state.settle(day_dir, local)


async def _sync_manifest(
    fs: Any,
    remote_dir: str,
    where: str,
    manifest: bytes,
    remote: RemoteListing,
    at_destination: set[str],
    report: SyncReport,
) -> None:
    try:
        missing = sorted(listed_files(manifest) - at_destination)
    except ManifestCorrupt as exc:
        report.errors.append(f"{where}/{MANIFEST_NAME}: {exc}")
        return
    if missing:
        report.errors.append(
            f"{where}/{MANIFEST_NAME}: held back: it lists {', '.join(missing)}, "
            "not at the destination"
        )
        return
    remote_path = f"{remote_dir}/{MANIFEST_NAME}"
    try:
        if await _in_thread(
            manifest_is_current, fs, remote_path, remote.get(MANIFEST_NAME), manifest
        ):
            report.skipped += 1
            return
        await _in_thread(upload_bytes, fs, manifest, remote_path)
    except Exception as exc:
        report.errors.append(f"{where}/{MANIFEST_NAME}: upload failed: {exc}")
        return
    log.debug("uploaded %s/%s", where, MANIFEST_NAME)
    report.uploaded += 1
    report.bytes_uploaded += len(manifest)


async def sync_once(
    root: Path,
    destination: str,
    *,
    feeds: list[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    state: SyncState | None = None,
) -> SyncReport:
    """Upload what is finished under `root` (`{feed}/{YYYY-MM-DD}/`) to `destination`.

    Per-file problems are collected in the report; only a destination that cannot be
    used at all raises `SyncFailed`.
    """
    fs, base = await _in_thread(open_destination, destination, storage_options)
    report = SyncReport()
    if not await _in_thread(root.is_dir):
        report.errors.append(f"{root}: the archive directory does not exist")
        return report
    for feed in await _in_thread(reader.feeds, root):
        if feeds and feed not in feeds:
            continue
        for day in await _in_thread(reader.days, root, feed):
            await _sync_day(fs, f"{base}/{feed}/{day}", root / feed / day, report, state)
    return report


# A pass that failed as a whole (destination unreachable) is retried sooner than the
# next interval, backing off up to it.
SYNC_RETRY_INITIAL_S = 10.0


def sync_retry(sync: SyncConfig) -> Backoff:
    interval = sync.interval.seconds
    return Backoff(initial=min(SYNC_RETRY_INITIAL_S, interval), maximum=interval, jitter=0.2)


async def run_sync_role(
    root: Path, sync: SyncConfig, *, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Sync every `sync.interval` until cancelled; whatever failed is retried next round.

    Even a destination that cannot be opened (credentials, network) is only logged: the
    archive stays on disk, and the archiver in the same process keeps running.
    """
    state = SyncState()
    retry = sync_retry(sync).retry()
    while True:
        delay = sync.interval.seconds
        try:
            report = await sync_once(
                root,
                sync.destination,
                feeds=sync.feeds or None,
                storage_options=storage_options,
                state=state,
            )
        except SyncFailed as exc:
            delay = retry.next_delay()
            log.error("sync: %s; retrying in %.0fs", exc, delay)
        else:
            retry.reset()
            for error in report.errors:
                log.warning("sync: %s", error)
            if report.uploaded or report.errors:
                log.info("sync to %s: %s", sync.destination, report.summary())
        await trio.sleep(delay)


async def run_sync_until_signalled(root: Path, sync: SyncConfig) -> None:
    """`run_sync_role` in the foreground, stopped by SIGINT or SIGTERM."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_sync_role, root, sync)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("stopping sync: received %s", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
