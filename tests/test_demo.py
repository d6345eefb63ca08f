"""`ssmd demo` (what `make demo` runs) produces an archive that verifies, and continues it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ssmd", *args], capture_output=True, text=True, timeout=120
    )


def test_demo_archives_and_a_second_run_continues(tmp_path: Path) -> None:
    first = run("demo", "--data-dir", str(tmp_path), "--duration", "2")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "stopped cleanly" in first.stderr
    second = run("demo", "--data-dir", str(tmp_path), "--duration", "2")
    assert second.returncode == 0, second.stderr[-2000:]
    verify = run("data", "verify", "--path", str(tmp_path / "archive"))
    assert verify.returncode == 0, verify.stdout
    listing = json.loads(run("data", "ls", "--path", str(tmp_path / "archive"), "--json").stdout)
    assert sum(row["files"] for row in listing) >= 2
    assert sum(row["records"] for row in listing) > 500
