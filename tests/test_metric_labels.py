"""Whatever types a venue sends, the `type` label sets of received, published and
archived messages stay bounded: a type no venue is known to send counts as `other`,
while its messages keep their own subject (the archive still holds them apart).

Each venue's real session routes the frames, a real publisher has them acknowledged
by a real nats-server, and the metrics are read as /metrics would."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import attrs
import nats
import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest

from ssmd.archiver.metrics import archiver_metrics
from ssmd.archiver.service import ArchiverStatus
from ssmd.clock import WallClock
from ssmd.config import ConnectorConfig
from ssmd.connector.metrics import connector_metrics
from ssmd.connector.publisher import Inbound, Publisher
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds import load_venue
from ssmd.feeds.base import ConnectionStats, SessionContext, Subjects
from ssmd.feeds.kalshi.routing import TYPE_TOKENS
from ssmd.feeds.kraken import MESSAGE_TYPES as KRAKEN_MESSAGE_TYPES
from ssmd.message_types import KALSHI, KNOWN_TYPES, OTHER
from ssmd.metrics import FunctionCollector
from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from ssmd.subjects import split_subject

GARBAGE = 40


def garbage(kind: str, n: int) -> dict[str, Any]:
    """A data frame of type `kind-{n}` that each venue routes on its own subject."""
    if kind == "kalshi":
        return {"type": f"kind-{n}", "sid": 1, "msg": {"market_ticker": "A"}}
    if kind == "polymarket":
        return {"event_type": f"kind-{n}", "market": "0xabc", "asset_id": "1"}
    return {"channel": f"kind-{n}", "type": "update", "data": [{"symbol": "BTC/USD"}]}


KNOWN_FRAMES: dict[str, tuple[str, dict[str, Any]]] = {
    "kalshi": ("trade", {"type": "trade", "sid": 2, "msg": {"market_ticker": "A"}}),
    "polymarket": (
        "last_trade_price",
        {"event_type": "last_trade_price", "market": "0xabc", "asset_id": "1"},
    ),
    "kraken": ("ticker", {"channel": "ticker", "type": "update", "data": [{"symbol": "BTC/USD"}]}),
}
PLANS: dict[str, list[SubscriptionPlan]] = {
    "kalshi": [],
    "polymarket": [SubscriptionPlan("market", ("1",))],
    "kraken": [SubscriptionPlan("ticker", ("BTC/USD",))],
}


@attrs.define
class Slot:
    stats: ConnectionStats
    up: bool = True


def route(kind: str) -> tuple[list[Inbound], ConnectionStats]:
    stats = ConnectionStats()
    config = ConnectorConfig(feed=kind, kind=kind)
    context = SessionContext(0, Subjects("prod", kind), stats, config)
    session = load_venue(kind).session(context, PLANS[kind])
    session.start()
    out: list[Inbound] = []
    for n in range(GARBAGE):
        session.on_frame(json.dumps(garbage(kind, n)).encode(), 1, out)
    session.on_frame(json.dumps(KNOWN_FRAMES[kind][1]).encode(), 1, out)
    return out, stats


async def publish(url: str, kind: str, messages: list[Inbound]) -> Publisher:
    async with open_bridge([url], request_timeout=5.0) as bridge:
        publisher = Publisher(
            bridge.publish_batch,
            env="prod",
            feed=kind,
            clock=WallClock(),
            buffer_messages=1000,
            buffer_bytes=10**7,
            batch_max=10,
            timeout=30.0,
        )
        send, receive = trio.open_memory_channel[list[Inbound]](1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher.run, receive)
            async with send:
                await send.send(messages)
    return publisher


def type_labels(text: str, metric: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('type="')[1].split('"')[0]] = float(value)
    return out


@pytest.mark.parametrize("kind", ["kalshi", "polymarket", "kraken"])
def test_type_labels_stay_bounded_for_every_venue_while_subjects_keep_the_type(
    nats_server: NatsServer, kind: str
) -> None:
    out, stats = route(kind)
    data = [m for m in out if split_subject(m.subject)[0] != "ssmd"]
    assert len(data) == GARBAGE + 1
    # The data does not move: each unknown type is on its own subject.
    own = {split_subject(m.subject)[0] for m in data}
    assert {f"kind-{n}" for n in range(GARBAGE)} <= own, own

    async def make_stream() -> None:
        nc = await nats.connect(nats_server.url)
        await nc.jetstream().add_stream(name="MARKETDATA", subjects=["prod.>"])
        await nc.close()

    asyncio.run(make_stream())
    publisher = trio.run(publish, nats_server.url, kind, out)
    assert publisher.stats.acked == len(out)

    status = ArchiverStatus()
    status.writer.records_by_type.update(split_subject(m.subject)[0] for m in out)
    registry = CollectorRegistry()
    registry.register(
        FunctionCollector(lambda: connector_metrics(kind, publisher, [Slot(stats)]))  # type: ignore[list-item]
    )
    registry.register(FunctionCollector(lambda: archiver_metrics(kind, status)))
    text = generate_latest(registry).decode()

    known = KNOWN_FRAMES[kind][0]
    records = len(out) - len(data)
    for metric in (
        "ssmd_received_messages_total",
        "ssmd_published_messages_total",
        "ssmd_archived_messages_total",
    ):
        labels = type_labels(text, metric)
        assert set(labels) <= KNOWN_TYPES | {OTHER}, (metric, labels)
        assert labels[OTHER] == GARBAGE, (metric, labels)
        assert labels[known] == 1, (metric, labels)
        if metric != "ssmd_received_messages_total":
            assert sum(labels.values()) == len(out), (metric, labels)
            assert labels.get("ssmd", 0) == records


def test_each_venues_own_type_names_are_known() -> None:
    assert set(TYPE_TOKENS) | set(TYPE_TOKENS.values()) <= KALSHI
    assert KRAKEN_MESSAGE_TYPES <= KNOWN_TYPES
