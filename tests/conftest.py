from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from ssmd.nats.server import NatsServer

# Properties are about behaviour, not speed: on a loaded 2-core machine one example can
# take longer than Hypothesis's default 200 ms deadline without anything being wrong.
settings.register_profile("ssmd", deadline=None)
settings.load_profile("ssmd")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream on a free loopback port and a temp store."""
    server = NatsServer(tmp_path / "jetstream")
    server.start()
    try:
        yield server
    finally:
        server.stop(kill=True)
