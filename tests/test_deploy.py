"""The systemd units in deploy/ pass `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_units_verify(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    units = []
    for unit in sorted([*DEPLOY.glob("*.service"), *DEPLOY.glob("*.timer")]):
        # The units name the installed paths; point them at this checkout's venv.
        text = unit.read_text().replace("/opt/ssmd/bin", str(bin_dir))
        (tmp_path / unit.name).write_text(text)
        units.append(str(tmp_path / unit.name))
    result = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "ssmd-sync.timer" in " ".join(units) and "ssmd.service" in " ".join(units)


def test_service_unit_has_the_operational_settings() -> None:
    unit = (DEPLOY / "ssmd.service").read_text()
    for setting in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=ssmd",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/ssmd",
        "TimeoutStopSec=30",
        "EnvironmentFile=",
    ):
        assert setting in unit, setting
