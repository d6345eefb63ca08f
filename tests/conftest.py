from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ssmd.nats.server import NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream on a free loopback port and a temp store."""
    server = NatsServer(tmp_path / "jetstream")
    server.start()
    try:
        yield server
    finally:
        server.stop(kill=True)
