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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `slow` run first: under `make test`'s two workers, one left for the
    end of the run would run alone while the other worker idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream on a free loopback port and a temp store."""
    server = NatsServer(tmp_path / "jetstream")
    server.start()
    try:
        yield server
    finally:
        server.stop(kill=True)
