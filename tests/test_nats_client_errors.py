"""nats-py's asynchronous errors are counted and logged at WARNING, rate-limited."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest

from ssmd.metrics import FunctionCollector
from ssmd.nats.bridge import ClientErrors, open_bridge
from ssmd.nats.metrics import nats_metrics
from ssmd.nats.server import NatsServer
from ssmd.nats.types import CoreMessage

pytestmark = pytest.mark.trio


async def test_a_failing_subscription_callback_is_a_counted_warning(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_bridge([nats_server.url]) as bridge:

        async def broken(msg: Any) -> None:
            raise ValueError(f"cannot read {msg.subject}")

        async def subscribe() -> None:
            await bridge._nc.subscribe("probe.>", cb=broken)
            await bridge._nc.flush()

        await bridge._thread.call(subscribe)
        with caplog.at_level(logging.WARNING, logger="ssmd.nats"):
            await bridge.publish_core([CoreMessage(f"probe.{i}", b"{}", 0) for i in range(3)])
            with trio.fail_after(30):
                while bridge.client_errors.counts.get("ValueError", 0) < 3:
                    await trio.sleep(0.01)
        registry = CollectorRegistry()
        registry.register(FunctionCollector(lambda: nats_metrics(bridge)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # The first is reported; the next two, within a minute, are only counted.
    assert warnings == ["NATS client error: ValueError: cannot read probe.0"]
    assert (
        'ssmd_nats_client_errors_total{error="ValueError"} 3.0'
        in generate_latest(registry).decode()
    )


async def test_errors_past_the_interval_are_reported_with_what_was_held_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    errors = ClientErrors(interval_s=60.0)
    with caplog.at_level(logging.WARNING, logger="ssmd.nats"):
        for step in (0.0, 10.0, 20.0, 61.0):
            now[0] += step
            errors.record(RuntimeError("slow consumer"))
    assert [r.getMessage() for r in caplog.records] == [
        "NATS client error: RuntimeError: slow consumer",
        "NATS client error: RuntimeError: slow consumer (and 2 more since the last report)",
    ]
    assert errors.counts == {"RuntimeError": 4}
