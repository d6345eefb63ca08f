"""`ssmd sync`: finished files and manifests to file:// and to a local GCS emulator."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing
from fsspec.implementations.local import LocalFileSystem
from gcp_storage_emulator.server import create_server

from ssmd import sync
from ssmd.cli.main import main
from ssmd.clock import WallClock
from ssmd.config import ConfigError, Duration, SyncConfig, load_config
from ssmd.sync import open_destination, run_sync_role, sync_once
from tests import configs
from tests.archive_harness import Harness, batch, utc_ns, write_archive

DAY = "2026-01-05"
NEXT_DAY = "2026-01-06"
BUCKET = "ssmd-sync-test"


@attrs.frozen
class Destination:
    url: str
    storage_options: dict[str, Any] = attrs.field(factory=dict)

    def contents(self) -> dict[str, bytes]:
        """Every object under the destination, by path relative to it."""
        fs, base = open_destination(self.url, self.storage_options)
        fs.invalidate_cache()
        try:
            paths: list[str] = fs.find(base)
        except FileNotFoundError:
            return {}
        return {path[len(base) + 1 :]: fs.cat_file(path) for path in paths}


def build_archive(root: Path) -> None:
    """Two days with real slot files: 1145 and 1200 on DAY, 0000 on NEXT_DAY."""

    write_archive(
        root,
        utc_ns(2026, 1, 5, 11, 58),
        batch(1, 40, ticker="A", kind="ticker"),
        180,
        batch(41, 70, ticker="KXBTCD-26MAR1213-T69499.99"),
        12 * 3600,
        batch(71, 100, ticker="B"),
    )


def finished_archive(root: Path) -> dict[str, bytes]:
    """What a complete sync must leave at the destination: finished files and manifests."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and (sync.is_finished_file(path.name) or path.name == "manifest.json")
    }


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A real archive plus the leftovers sync must never upload."""
    root = tmp_path / "archive"
    build_archive(root)
    day_dir = root / "kalshi" / DAY
    (day_dir / "1215.jsonl.gz.partial").write_bytes(b"\x1f\x8b being written")
    (day_dir / ".1215.jsonl.gz.salvage").write_bytes(b"salvage in progress")
    (day_dir / ".1215.jsonl.gz").write_bytes(b"a temp file with a final suffix")
    (day_dir / ".manifest.json.tmp").write_bytes(b"{}")
    return root


@pytest.fixture(scope="session")
def gcs_endpoint() -> Iterator[str]:
    """A gcp-storage-emulator on a free loopback port, with one bucket, in memory."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(params=["file", "gs"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> Destination:
    if request.param == "file":
        return Destination(f"file://{tmp_path / 'destination'}")
    endpoint: str = request.getfixturevalue("gcs_endpoint")
    return Destination(
        f"gs://{BUCKET}/{uuid.uuid4().hex}",
        {"endpoint_url": endpoint, "token": "anon"},
    )


async def sync_to(archive: Path, destination: Destination) -> sync.SyncReport:
    return await sync_once(archive, destination.url, storage_options=destination.storage_options)


async def test_uploads_finished_files_and_manifests_only(
    archive: Path, destination: Destination
) -> None:
    expected = finished_archive(archive)
    assert sorted(expected) == [
        f"kalshi/{DAY}/1145.jsonl.gz",
        f"kalshi/{DAY}/1200.jsonl.gz",
        f"kalshi/{DAY}/manifest.json",
        f"kalshi/{NEXT_DAY}/0000.jsonl.gz",
        f"kalshi/{NEXT_DAY}/manifest.json",
    ]

    report = await sync_to(archive, destination)

    assert report.errors == []
    assert destination.contents() == expected
    assert report.uploaded == 5 and report.skipped == 0
    assert report.bytes_uploaded == sum(len(data) for data in expected.values())


async def test_a_second_run_uploads_nothing(archive: Path, destination: Destination) -> None:
    await sync_to(archive, destination)
    report = await sync_to(archive, destination)
    assert report.errors == []
    assert (report.uploaded, report.skipped, report.bytes_uploaded) == (0, 5, 0)


async def test_a_rewritten_manifest_is_uploaded_again(
    archive: Path, destination: Destination
) -> None:
    await sync_to(archive, destination)
    manifest = archive / "kalshi" / DAY / "manifest.json"
    # The same size, other content: only a checksum or a byte comparison can tell.
    rewritten = manifest.read_bytes().replace(b'"900s"', b'"901s"')
    assert len(rewritten) == manifest.stat().st_size and rewritten != manifest.read_bytes()
    manifest.write_bytes(rewritten)

    report = await sync_to(archive, destination)

    assert report.errors == []
    assert (report.uploaded, report.skipped) == (1, 4)
    assert destination.contents()[f"kalshi/{DAY}/manifest.json"] == rewritten


async def test_a_truncated_object_at_the_destination_is_replaced(
    archive: Path, destination: Destination
) -> None:
    name = f"kalshi/{DAY}/1145.jsonl.gz"
    whole = (archive / name).read_bytes()
    fs, base = open_destination(destination.url, destination.storage_options)
    fs.makedirs(f"{base}/kalshi/{DAY}", exist_ok=True)
    fs.pipe_file(f"{base}/{name}", whole[: len(whole) // 2])

    report = await sync_to(archive, destination)

    assert report.errors == []
    assert report.uploaded == 5
    assert destination.contents()[name] == whole


async def test_a_manifest_is_held_back_while_a_file_it_lists_is_missing(
    archive: Path, tmp_path: Path
) -> None:
    destination = Destination(f"file://{tmp_path / 'destination'}")
    (archive / "kalshi" / DAY / "1145.jsonl.gz").unlink()

    report = await sync_to(archive, destination)

    assert len(report.errors) == 1
    assert "manifest.json: held back" in report.errors[0] and "1145.jsonl.gz" in report.errors[0]
    assert sorted(destination.contents()) == [
        f"kalshi/{DAY}/1200.jsonl.gz",
        f"kalshi/{NEXT_DAY}/0000.jsonl.gz",
        f"kalshi/{NEXT_DAY}/manifest.json",
    ]


async def test_only_the_configured_feeds(archive: Path, tmp_path: Path) -> None:
    destination = Destination(f"file://{tmp_path / 'destination'}")
    report = await sync_once(archive, destination.url, feeds=["other"])
    assert (report.uploaded, report.errors) == (0, [])
    assert destination.contents() == {}


async def test_sync_while_a_file_is_being_written(
    tmp_path: Path, mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rounds of sync run in threads while the writer appends to a growing .partial and
    closes slots; every manifest must reach the destination after the files it lists."""
    archive, dest = tmp_path / "archive", tmp_path / "destination"
    url = f"file://{dest}"
    uploaded: list[str] = []
    early_manifests: list[str] = []
    upload_file, upload_bytes = sync.upload_file, sync.upload_bytes

    def recording_upload_file(fs: Any, local_path: Path, remote_path: str) -> None:
        uploaded.append(local_path.name)
        upload_file(fs, local_path, remote_path)

    def checking_upload_bytes(fs: Any, data: bytes, remote_path: str) -> None:
        remote_dir = Path(remote_path).parent
        missing = [name for name in sync.listed_files(data) if not (remote_dir / name).exists()]
        if missing:
            early_manifests.append(f"{remote_path} before {missing}")
        uploaded.append(Path(remote_path).name)
        upload_bytes(fs, data, remote_path)

    monkeypatch.setattr(sync, "upload_file", recording_upload_file)
    monkeypatch.setattr(sync, "upload_bytes", checking_upload_bytes)

    h = Harness(archive)
    writing_done = trio.Event()
    rounds = 0
    partial_seen = 0

    async def sync_repeatedly() -> None:
        nonlocal rounds
        while not writing_done.is_set():
            report = await sync_once(archive, url)
            assert report.errors == []
            rounds += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        await h.start(nursery, WallClock(utc_ns(2026, 1, 5, 11, 50)))
        nursery.start_soon(sync_repeatedly)
        seq = 1
        for step in range(24):
            await h.send.send(batch(seq, seq + 99, ticker=f"T{step % 5}"))
            seq += 100
            await trio.testing.wait_all_tasks_blocked()
            partial_seen += len(list(archive.rglob("*.partial")))
            if step % 2 == 1:
                # The slot closes (rename, manifest rewrite) while a sync round runs.
                mock_clock.jump(900)
                await trio.testing.wait_all_tasks_blocked()
            start = rounds
            while rounds == start:
                await trio.lowlevel.checkpoint()
        writing_done.set()
        assert await h.stop() == 0

    report = await sync_once(archive, url)
    assert report.errors == []
    assert partial_seen >= 24 and rounds >= 24
    assert early_manifests == []
    assert not [name for name in uploaded if name.endswith(".partial") or name.startswith(".")]
    assert Destination(url).contents() == finished_archive(archive)
    assert len(h.manifest(DAY)["files"]) == 12


async def test_a_cancelled_upload_leaves_nothing_that_looks_complete(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = Destination(f"file://{tmp_path / 'destination'}")
    copying, release, finished = threading.Event(), threading.Event(), threading.Event()

    def stalling_put_file(self: Any, lpath: str, rpath: str, **kwargs: Any) -> None:
        try:
            data = Path(lpath).read_bytes()
            Path(rpath).write_bytes(data[: len(data) // 2])
            copying.set()
            release.wait(10)
            raise OSError("connection lost")
        finally:
            finished.set()

    monkeypatch.setattr(LocalFileSystem, "put_file", stalling_put_file)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync_to, archive, destination)
            while not copying.is_set():
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        release.set()
        await trio.to_thread.run_sync(finished.wait)

    leftovers = destination.contents()
    assert list(leftovers) == [f"kalshi/{DAY}/.1145.jsonl.gz.sync-tmp"]

    monkeypatch.undo()
    report = await sync_to(archive, destination)
    assert report.errors == []
    assert destination.contents() == finished_archive(archive)


async def test_the_role_syncs_every_interval(archive: Path, tmp_path: Path) -> None:
    dest = tmp_path / "destination"
    config = SyncConfig(destination=f"file://{dest}", interval=Duration.parse("20ms"))
    local_manifest = archive / "kalshi" / DAY / "manifest.json"
    remote_manifest = dest / "kalshi" / DAY / "manifest.json"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_sync_role, archive, config)
            while not remote_manifest.exists():
                await trio.sleep(0.01)
            rewritten = local_manifest.read_bytes().replace(b'"900s"', b'"901s"')
            local_manifest.write_bytes(rewritten)
            while remote_manifest.read_bytes() != rewritten:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert Destination(config.destination).contents() == finished_archive(archive)


async def test_the_role_outlives_a_destination_it_cannot_open(
    archive: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = SyncConfig(destination=f"gs://{BUCKET}/x", interval=Duration.parse("10ms"))

    def failures() -> int:
        return sum("cannot use destination" in r.getMessage() for r in caplog.records)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(run_sync_role, archive, config, storage_options={"token": 12345})
        )
        # Failing, then trying again: the first try imports gcsfs, slow on a busy machine.
        with trio.fail_after(60):
            while failures() < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


# --- the command line and the config ---------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """`ssmd sync` sets up logging on the root logger; put it back for the next test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def write_config(path: Path, archive: Path, destination: str) -> Path:
    return configs.write_config(
        path,
        {"env": "prod", "storage": {"path": str(archive)}, "sync": {"destination": destination}},
    )


@pytest.mark.usefixtures("restore_logging")
def test_cli_once_exit_codes(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "destination"
    config = write_config(tmp_path / "ssmd.toml", archive, f"file://{dest}")
    assert main(["sync", "-c", str(config), "--once"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "uploaded 5 file(s)" in out
    assert Destination(f"file://{dest}").contents() == finished_archive(archive)

    assert main(["sync", "-c", str(config), "--once"]) == 0
    out = capsys.readouterr().out
    assert "uploaded 0 file(s)" in out and "5 already there" in out

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = write_config(tmp_path / "ssmd.toml", archive, f"file://{blocker}/archive")
    assert main(["sync", "-c", str(config), "--once"]) == 1
    captured = capsys.readouterr()
    assert "2 failed" in captured.out
    assert f"ssmd: sync: kalshi/{DAY}: cannot list the destination" in captured.err


def test_cli_without_once_runs_until_sigterm(archive: Path, tmp_path: Path) -> None:
    dest = tmp_path / "destination"
    config = write_config(tmp_path / "ssmd.toml", archive, f"file://{dest}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssmd", "sync", "-c", str(config)], stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while not (dest / "kalshi" / NEXT_DAY / "manifest.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err.decode()
    assert b"stopping sync: received SIGTERM" in err


@pytest.mark.usefixtures("restore_logging")
def test_cli_once_to_the_emulator_through_the_environment(
    archive: Path,
    tmp_path: Path,
    gcs_endpoint: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    url = f"gs://{BUCKET}/{uuid.uuid4().hex}"
    config = write_config(tmp_path / "ssmd.toml", archive, url)
    assert main(["sync", "-c", str(config), "--once"]) == 0
    assert "uploaded 5 file(s)" in capsys.readouterr().out
    contents = Destination(url, {"endpoint_url": gcs_endpoint, "token": "anon"}).contents()
    assert contents == finished_archive(archive)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('env = "prod"\n[storage]\npath = "/a"\n[sync]\ndestination = "ftp://h/x"\n', "sync"),
        ('env = "prod"\n[storage]\npath = "/a"\n', "section [sync] is required"),
        ('env = "prod"\n[sync]\ndestination = "gs://b/p"\n', "section [storage] is required"),
    ],
)
@pytest.mark.usefixtures("restore_logging")
def test_cli_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str
) -> None:
    config = tmp_path / "ssmd.toml"
    config.write_text(text)
    assert main(["sync", "-c", str(config), "--once"]) == 2
    assert key in capsys.readouterr().err


@pytest.mark.parametrize(
    "destination",
    ["ftp://host/x", "bucket/prefix", "gs://", "s3:///prefix", "file://relative/x", "file:///"],
)
def test_destination_scheme_is_checked(tmp_path: Path, destination: str) -> None:
    config = write_config(tmp_path / "ssmd.toml", tmp_path, destination)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert info.value.key == "sync.destination"
    assert "gs://bucket/prefix" in info.value.message and repr(destination) in info.value.message


@pytest.mark.parametrize("destination", ["gs://b", "s3://b/some/prefix", "file:///srv/ssmd"])
def test_valid_destinations(tmp_path: Path, destination: str) -> None:
    config = load_config(write_config(tmp_path / "ssmd.toml", tmp_path, destination))
    assert config.sync is not None and config.sync.destination == destination
    assert config.sync.interval.seconds == 300 and config.sync.feeds == []
    assert "sync" in config.sections
