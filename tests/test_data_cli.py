"""`ssmd data`: listing, reading and verifying an archive the archiver wrote."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ssmd.cli.main import main
from tests.archive_harness import batch, utc_ns, write_archive

DAY = "2026-01-05"


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """Three finished files: 1145 (A), 1200 (dot ticker), 1215 (trades of B)."""

    write_archive(
        tmp_path,
        utc_ns(2026, 1, 5, 11, 58),
        batch(1, 40, ticker="A", kind="ticker"),
        180,
        batch(41, 70, ticker="KXBTCD-26MAR1213-T69499.99"),
        900,
        batch(71, 3000, ticker="B"),  # > a pipe buffer, for `| head`
    )
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["data", *args])
    return code, capsys.readouterr().out


def test_ls_rows_and_json(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "ls", "--path", str(archive))
    assert code == 0
    assert "kalshi" in out and DAY in out and "3000" in out
    code, out = run(capsys, "ls", "--path", str(archive), "--json")
    rows = json.loads(out)
    assert rows == [
        {
            "feed": "kalshi",
            "date": DAY,
            "files": 3,
            "records": 3000,
            "tickers": 3,
            "bytes": rows[0]["bytes"],
            "gaps": 0,
            "missing": 0,
        }
    ]
    assert rows[0]["bytes"] > 0


def test_cat_filters_without_losing_order(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(
        capsys,
        "cat",
        "kalshi",
        DAY,
        "--path",
        str(archive),
        "--ticker",
        "KXBTCD-26MAR1213-T69499.99",
    )
    assert code == 0
    assert [json.loads(line)["_seq"] for line in out.splitlines()] == list(range(41, 71))
    _, out = run(
        capsys, "cat", "kalshi", DAY, "--path", str(archive), "--type", "ticker", "--limit", "5"
    )
    assert [json.loads(line)["_seq"] for line in out.splitlines()] == [1, 2, 3, 4, 5]
    _, out = run(
        capsys, "cat", "kalshi", DAY, "--path", str(archive), "--strip-meta", "--limit", "1"
    )
    assert not any(key.startswith("_") for key in json.loads(out))


def test_cat_into_head_is_not_an_error(archive: Path) -> None:
    command = f"{sys.executable} -m ssmd data cat kalshi {DAY} --path {archive} | head -n 2"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2
    assert result.stderr == ""


def test_verify_passes_on_a_clean_archive(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "verify", "--path", str(archive))
    assert code == 0, out
    assert "1 day(s) checked, 0 inconsistent" in out


def _day(archive: Path) -> Path:
    return archive / "kalshi" / DAY


def test_verify_catches_a_flipped_byte(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _day(archive) / "1200.jsonl.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    code, out = run(capsys, "verify", "kalshi", DAY, "--path", str(archive))
    assert code == 1
    assert "1200.jsonl.gz" in out and "problem" in out


def test_verify_catches_a_truncated_file(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _day(archive) / "1215.jsonl.gz"
    path.write_bytes(path.read_bytes()[:-30])
    code, out = run(capsys, "verify", "--path", str(archive))
    assert code == 1
    assert "1215.jsonl.gz" in out


def test_verify_catches_a_file_missing_from_the_manifest(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stray = _day(archive) / "1230.jsonl.gz"
    with gzip.open(stray, "wb") as f:
        f.write(b'{"_seq":3001,"_subject":"prod.kalshi.json.trade.B"}\n')
    code, out = run(capsys, "verify", "--path", str(archive))
    assert code == 1
    assert "1230.jsonl.gz: on disk but not in the manifest" in out


def test_verify_catches_a_manifest_mismatch_and_a_missing_file(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest_path = _day(archive) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][0]["records"] += 1
    manifest_path.write_text(json.dumps(manifest))
    (_day(archive) / "1215.jsonl.gz").unlink()
    code, out = run(capsys, "verify", "--path", str(archive))
    assert code == 1
    assert "1145.jsonl.gz: 40 records, manifest says 41" in out
    assert "1215.jsonl.gz: listed in the manifest but missing on disk" in out


def test_verify_catches_a_duplicate_sequence(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    day = _day(archive)
    with gzip.open(day / "1145.jsonl.gz") as f:
        lines = f.readlines()
    with gzip.open(day / "1145.jsonl.gz", "wb") as f:
        f.writelines([*lines, lines[-1]])
    code, out = run(capsys, "verify", "--path", str(archive))
    assert code == 1
    assert "seq 40 after seq 40" in out


def test_stats_and_manifest(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "stats", "kalshi", DAY, "--path", str(archive), "--top", "2")
    assert code == 0
    assert "3000 messages, 3 tickers" in out
    assert "ticker" in out and "trade" in out
    code, out = run(capsys, "manifest", "kalshi", DAY, "--path", str(archive))
    assert json.loads(out)["records"] == 3000


def test_no_path_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSMD_DATA_PATH", raising=False)
    assert main(["data", "ls"]) == 2
    assert "no archive path" in capsys.readouterr().err
