"""The connector end to end: fake Kalshi exchange -> connector -> real nats-server.

Real sockets and nats-py need the real clock, so timeouts here are short.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from ssmd.clock import WallClock
from ssmd.config import Config, parse_config
from ssmd.connector.auth import Credentials
from ssmd.connector.service import start_connector
from ssmd.nats.bridge import open_bridge
from ssmd.nats.server import NatsServer
from ssmd.nats.types import FetchedMessage, StreamSpec
from ssmd.simulators.kalshi import ExchangeSession, KalshiExchange, Subscription, trade_msg
from ssmd.supervisor import StartupRefused, Supervisor, supervise
from tests.keys import API_KEY, private_key

STREAM = "MD"
DOT_TICKER = "KXBTCD-26MAR1213-T69499.99"


def make_config(nats_url: str, ws_url: str, **connector: Any) -> Config:
    settings: dict[str, Any] = {
        "url": ws_url,
        "channels": ["trade"],
        "markets": [DOT_TICKER, "KXA-1"],
        "liveness_timeout": "1s",
        "ping_interval": "250ms",
        "command_timeout": "2s",
        "backoff_initial": "50ms",
        "backoff_max": "200ms",
        "publish_timeout": "1s",
    }
    settings.update(connector)
    return parse_config(
        {
            "env": "test",
            "nats": {"url": nats_url, "stream": STREAM},
            "service": {"shutdown_timeout": "10s"},
            "connector": settings,
        }
    )


def credentials() -> Credentials:
    return Credentials(api_key=API_KEY, private_key=private_key())


@asynccontextmanager
async def fake_exchange() -> AsyncIterator[KalshiExchange]:
    exchange = KalshiExchange(private_key().public_key(), API_KEY)
    async with trio.open_nursery() as nursery:
        await nursery.start(exchange.run)
        yield exchange
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_connector(config: Config) -> AsyncIterator[Supervisor]:
    async with open_bridge(config.nats.servers, request_timeout=2.0) as bridge:
        started: list[Supervisor] = []
        finished = trio.Event()
        codes: list[int] = []

        async def start_roles(sup: Supervisor) -> None:
            started.append(sup)
            await start_connector(sup, config, bridge, WallClock(), credentials())

        async def run() -> None:
            codes.append(await supervise(start_roles, shutdown_timeout=10, handle_signals=False))
            finished.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            with trio.fail_after(10):
                while not started:
                    await trio.sleep(0.01)
            yield started[0]
            started[0].request_stop("test finished")
            with trio.fail_after(15):
                await finished.wait()
        assert codes == [0]


async def stream_messages(url: str, expected: int, timeout: float = 15.0) -> list[FetchedMessage]:
    """Every message in the stream, once it holds at least `expected`."""
    async with open_bridge([url], request_timeout=2.0) as bridge:
        with trio.fail_after(timeout):
            while True:
                state = await bridge.stream_state(STREAM)
                if state is not None and state.messages >= expected:
                    break
                await trio.sleep(0.05)
        consumer = await bridge.reset_consumer(STREAM, "test-reader", "test.>", None, 30.0, 100_000)
        out: list[FetchedMessage] = []
        while len(out) < state.messages:
            out.extend(await consumer.fetch(1000, 1.0))
        await consumer.close()
        return out


def records(messages: list[FetchedMessage], kind: str) -> list[dict[str, Any]]:
    return [json.loads(m.data) for m in messages if m.subject == f"test.kalshi.json.ssmd.{kind}"]


def data(messages: list[FetchedMessage]) -> list[FetchedMessage]:
    return [m for m in messages if ".json.ssmd." not in m.subject]


@pytest.mark.parametrize("client", ["ssmd", "trio-websocket"])
async def test_every_type_on_its_subject_byte_identical(
    nats_server: NatsServer, client: str
) -> None:
    async with fake_exchange() as exchange:
        config = make_config(
            nats_server.url,
            exchange.url,
            channels=["ticker", "trade", "orderbook_delta", "market_lifecycle_v2"],
            websocket_client=client,
        )
        async with running_connector(config):
            session = await exchange.session(0)
            await session.wait_until(lambda: len(session.subscriptions) == 4)
            sids = {s.channel: s.sid for s in session.subscriptions.values()}
            frames: list[tuple[str | bytes, str]] = [
                (
                    '{"type":"ticker","sid":%d,"msg":{"market_ticker":"KXA-1","price":12,"Clock":1}}'.replace(
                        "%d", str(sids["ticker"])
                    ),
                    "ticker.KXA-1",
                ),
                (
                    '{"type": "ticker_v2", "sid": %d, "msg": {"market_ticker": "KXA-1", "yes_bid": 3}}'.replace(
                        "%d", str(sids["ticker"])
                    ),
                    "ticker_v2.KXA-1",
                ),
                (
                    json.dumps(
                        {
                            "type": "trade",
                            "sid": sids["trade"],
                            "seq": 1,
                            "msg": trade_msg(DOT_TICKER, 1),
                        }
                    ),
                    "trade.KXBTCD-26MAR1213-T69499%2E99",
                ),
                (
                    '{"type":"orderbook_snapshot","sid":%d,"seq":1,"msg":{"market_ticker":"KXA-1","yes":[[45,100]],"no":[[53,120]]}}'.replace(
                        "%d", str(sids["orderbook_delta"])
                    ),
                    "orderbook.KXA-1",
                ),
                (
                    '{"type":"orderbook_delta","sid":%d,"seq":2,"msg":{"market_ticker":"KXA-1","price":46,"delta":-50,"side":"yes","ts":"2026-02-14T15:00:01.123Z"}}'.replace(
                        "%d", str(sids["orderbook_delta"])
                    ),
                    "orderbook.KXA-1",
                ),
                (
                    '{"type":"market_lifecycle_v2","sid":%d,"msg":{"market_ticker":"KXA-1","event_type":"activated"}}'.replace(
                        "%d", str(sids["market_lifecycle_v2"])
                    ),
                    "lifecycle.KXA-1",
                ),
                (
                    '{"type":"event_lifecycle","sid":%d,"msg":{"event_ticker":"KXBTCD-26JAN2310","title":"Bitcoin \\u00e9"}}'.replace(
                        "%d", str(sids["market_lifecycle_v2"])
                    ),
                    "event_lifecycle.KXBTCD-26JAN2310",
                ),
                (
                    '{"type":"brand_new","sid":1,"msg":{"market_ticker":"KXA-1","x":1}}',
                    "brand_new.KXA-1",
                ),
                ('{"type":"brand_new","sid":1,"msg":{"no_key":true}}', "unrouted.brand_new"),
                ("this is { not json", "unrouted.invalid"),
                (b"\x00\xffbinary garbage", "unrouted.invalid"),
                (
                    '{"type":"trade","msg":{"market_ticker":"caf\u00e9 bar"}}',
                    "trade.caf%C3%A9%20bar",
                ),
            ]
            for frame, _ in frames:
                await session.send(frame)
            messages = await stream_messages(nats_server.url, 1 + len(frames))
    got = [(m.subject.removeprefix("test.kalshi.json."), m.data) for m in messages]
    assert got[0][0] == "ssmd.connect"
    expected = [(subject, f.encode() if isinstance(f, str) else f) for f, subject in frames]
    assert got[1:] == expected
    assert all(m.recv_ns is not None and m.recv_ns > 1_700_000_000 * 10**9 for m in messages)


async def test_dropped_connection_reconnects_and_resubscribes(nats_server: NatsServer) -> None:
    async with fake_exchange() as exchange:
        config = make_config(nats_server.url, exchange.url, channels=["trade", "ticker"])
        async with running_connector(config):
            first = await exchange.session(0)
            await first.wait_until(lambda: len(first.subscriptions) == 2)
            before = await first.send_data(
                "trade", first.sub_for("trade").sid, trade_msg("KXA-1", 1)
            )
            await first.drop()
            second = await exchange.session(1)
            await second.wait_until(lambda: len(second.subscriptions) == 2)
            after = await second.send_data(
                "trade", second.sub_for("trade").sid, trade_msg("KXA-1", 2)
            )
            messages = await stream_messages(nats_server.url, 5)
    # The same subscriptions again, then the clean stop's unsubscribe.
    assert [c["params"] for c in second.commands[:-1]] == [c["params"] for c in first.commands]
    assert second.commands[-1]["cmd"] == "unsubscribe"
    assert [m.subject.split(".", 3)[3] for m in messages] == [
        "ssmd.connect",
        "trade.KXA-1",
        "ssmd.disconnect",
        "ssmd.connect",
        "trade.KXA-1",
    ]
    assert [m.data for m in data(messages)] == [before, after]


async def test_silent_connection_is_detected(nats_server: NatsServer) -> None:
    async with fake_exchange() as exchange:
        config = make_config(nats_server.url, exchange.url)
        async with running_connector(config):
            first = await exchange.session(0)
            await first.wait_until(lambda: len(first.subscriptions) == 1)
            await trio.sleep(1.5)  # pings keep a quiet connection alive
            assert len(exchange.sessions) == 1
            first.go_silent()
            with trio.fail_after(4):
                await exchange.session(1)
            messages = await stream_messages(nats_server.url, 3)
    assert records(messages, "disconnect")[0]["reason"] == "ConnectionLost: no frame for 1s"


async def test_server_pings_alone_keep_a_quiet_connection_alive(nats_server: NatsServer) -> None:
    async with fake_exchange() as exchange:
        # The client does not ping here; only the exchange's pings show it is alive.
        config = make_config(nats_server.url, exchange.url, ping_interval="60s")
        async with running_connector(config):
            session = await exchange.session(0)
            await session.wait_until(lambda: len(session.subscriptions) == 1)
            for _ in range(8):
                with trio.fail_after(1):
                    await session.ws.ping()  # answered by the connector
                await trio.sleep(0.3)
            assert len(exchange.sessions) == 1, "a quiet but pinging connection was dropped"


async def test_seq_jump_gives_a_gap_record_and_a_fresh_snapshot(nats_server: NatsServer) -> None:
    async def snapshot(session: ExchangeSession, sub: Subscription) -> None:
        for ticker in sub.markets:
            await session.send_data(
                "orderbook_snapshot", sub.sid, {"market_ticker": ticker, "yes": []}
            )

    async with fake_exchange() as exchange:
        exchange.on_subscribe = snapshot
        config = make_config(nats_server.url, exchange.url, channels=["orderbook_delta"])
        async with running_connector(config):
            session = await exchange.session(0)
            await session.wait_until(lambda: len(session.subscriptions) == 1)
            sid = session.sub_for("orderbook_delta").sid
            # The snapshots go out from the subscribe handler: let them finish first.
            with trio.fail_after(5):
                while session.seq.get(sid) != 2:
                    await trio.sleep(0.01)
            await session.send_data("orderbook_delta", sid, {"market_ticker": "KXA-1", "delta": 1})
            session.skip_seq(sid, 2)
            await session.send_data("orderbook_delta", sid, {"market_ticker": "KXA-1", "delta": 2})
            await session.wait_until(lambda: len(session.subscriptions) == 2)
            # connect, 2 snapshots, delta, gap, delta, resubscribe, 2 snapshots
            messages = await stream_messages(nats_server.url, 9)
    kinds = [m.subject.split(".", 3)[3] for m in messages]
    assert kinds[4] == "ssmd.gap"
    assert kinds[6] == "ssmd.resubscribe"
    assert kinds[7:] == ["orderbook.KXBTCD-26MAR1213-T69499%2E99", "orderbook.KXA-1"]
    gap = records(messages, "gap")[0]
    assert (gap["sid"], gap["expected"], gap["got"]) == (sid, 4, 6)
    assert gap["markets"] == [DOT_TICKER, "KXA-1"]
    resubscribe = records(messages, "resubscribe")[0]
    assert resubscribe["old_sid"] == sid and resubscribe["new_sid"] != sid
    assert [c["cmd"] for c in session.commands] == [
        "subscribe",
        "unsubscribe",
        "subscribe",
        "unsubscribe",  # the clean stop
    ]


async def test_nats_restart_loses_nothing_and_doubles_nothing(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    total = 3000
    async with fake_exchange() as exchange:
        config = make_config(nats_server.url, exchange.url)
        async with running_connector(config):
            session = await exchange.session(0)
            await session.wait_until(lambda: len(session.subscriptions) == 1)
            sid = session.sub_for("trade").sid
            sent: list[bytes] = []

            async def stream_trades() -> None:
                for n in range(total):
                    sent.append(await session.send_data("trade", sid, trade_msg("KXA-1", n)))
                    if n % 10 == 0:
                        await trio.sleep(0.01)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream_trades)
                await trio.sleep(0.5)
                await trio.to_thread.run_sync(nats_server.stop)
                await trio.sleep(2.0)  # longer than publish_timeout: acks time out
                await trio.to_thread.run_sync(nats_server.start)
                assert 0 < len(sent) < total
            messages = await stream_messages(nats_server.url, total + 1, timeout=30)
            await trio.sleep(1.0)  # any late duplicate would land now
            messages = await stream_messages(nats_server.url, total + 1)
    retries = [r for r in caplog.records if "not acknowledged" in r.getMessage()]
    assert retries, "the outage never made a publish fail: the test proves nothing"
    got = [m.data for m in data(messages)]
    assert len(got) == total
    assert sorted(got) == sorted(sent)
    assert len(records(messages, "connect")) == 1


async def test_existing_stream_that_misses_our_subjects_is_refused(nats_server: NatsServer) -> None:
    config = make_config(nats_server.url, "ws://127.0.0.1:9/trade-api/ws/v2")
    async with open_bridge([nats_server.url]) as bridge:
        await bridge.ensure_stream(StreamSpec(STREAM, ["other.>"], 0, 0, -1, 60, 1))
        sup = Supervisor(_NoNursery(), 1.0)  # type: ignore[arg-type]
        with pytest.raises(StartupRefused, match=r"do not cover test\.kalshi\.json\.>"):
            await start_connector(sup, config, bridge, WallClock(), credentials())


@attrs.define
class _NoNursery:
    def start_soon(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("nothing may start after a refusal")


async def test_existing_covering_stream_is_left_alone(nats_server: NatsServer) -> None:
    async with fake_exchange() as exchange:
        config = make_config(nats_server.url, exchange.url)
        async with open_bridge([nats_server.url]) as bridge:
            _, created = await bridge.ensure_stream(StreamSpec(STREAM, ["test.>"], 0, 0, -1, 60, 1))
            assert created
        async with running_connector(config):
            await exchange.session(0)
        async with open_bridge([nats_server.url]) as bridge:
            state2 = await bridge.stream_state(STREAM)
    assert state2 is not None and state2.subjects == ["test.>"]
