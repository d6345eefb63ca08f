"""The nats-server runner used by tests and the demo: it starts its own server, never
mistakes another one on the same port for it (two pytest workers pick ports at once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssmd.nats.server import NatsServer, PortTaken


def test_a_port_taken_by_another_server_is_not_taken_for_ours(tmp_path: Path) -> None:
    other = NatsServer(tmp_path / "other")
    other.start()
    try:
        # A port given by the caller stays: the start fails, it does not report the
        # other server as started.
        fixed = NatsServer(tmp_path / "fixed", other.port)
        with pytest.raises(PortTaken):
            fixed.start()
        # A port the runner picked itself and lost meanwhile: it picks another.
        chosen = NatsServer(tmp_path / "chosen")
        chosen.port = other.port
        chosen.start()
        try:
            assert chosen.port != other.port
            assert chosen.process is not None and chosen.process.poll() is None
        finally:
            chosen.stop()
    finally:
        other.stop()
