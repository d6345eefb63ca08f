"""The Polymarket venue without the engine: the subscribe frames, splitting array frames
into exact element bytes on `event_type`/`market` subjects, PONG as liveness, Gamma
lookups (against the simulated Gamma API), and classification of arbitrary frames."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmd.config import ConnectorConfig
from ssmd.connector.publisher import Inbound
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds import load_venue
from ssmd.feeds.base import ConnectionStats, SessionContext, Subjects
from ssmd.feeds.gamma import ATTEMPTS, resolve_token_ids, token_ids
from ssmd.feeds.jsonframes import element_offsets
from ssmd.feeds.polymarket import VENUE, PolymarketSession
from ssmd.simulators.polymarket import PolymarketExchange
from ssmd.supervisor import StartupRefused, StartupUnavailable

MARKET = "0x5f65177b394277fd294cd75650044e32ba009a95022d88a0c1d565897d72f8f1"
YES = "71321045679252212594626385532706912750332728571942532289631379312455583992563"


def new_session(*plans: SubscriptionPlan) -> tuple[PolymarketSession, ConnectionStats]:
    stats = ConnectionStats()
    config = ConnectorConfig(feed="polymarket", kind="polymarket", channels=["market"])
    context = SessionContext(0, Subjects("prod", "polymarket"), stats, config)
    session = VENUE.session(context, plans or [SubscriptionPlan("market", (YES, "2"))])
    assert isinstance(session, PolymarketSession)
    return session, stats


def test_venue_plans_at_most_200_assets_a_connection() -> None:
    assert load_venue("polymarket") is VENUE
    assert VENUE.default_url({}) == "wss://ws-subscriptions-clob.polymarket.com/ws/market"
    config = ConnectorConfig(feed="polymarket", channels=["market"])
    tokens = [str(n) for n in range(450)]
    shards = VENUE.plan(config, tokens)
    assert [sum(len(p.markets) for p in shard) for shard in shards] == [200, 200, 50]
    assert all(len(shard) == 1 for shard in shards)
    smaller = ConnectorConfig(feed="polymarket", channels=["market"], markets_per_connection=100)
    assert len(VENUE.plan(smaller, tokens)) == 5
    with pytest.raises(StartupRefused, match="only channel is 'market'"):
        VENUE.plan(ConnectorConfig(feed="polymarket", channels=["book"]), tokens)


def test_start_sends_the_initial_subscription_then_operations() -> None:
    session, _ = new_session(
        SubscriptionPlan("market", ("1", "2")), SubscriptionPlan("market", ("3",))
    )
    first, second = session.start()
    assert json.loads(first.text) == {
        "assets_ids": ["1", "2"],
        "type": "market",
        "custom_feature_enabled": True,
    }
    assert json.loads(second.text) == {
        "assets_ids": ["3"],
        "operation": "subscribe",
        "custom_feature_enabled": True,
    }
    assert first.reply is None and second.reply is None  # Polymarket answers nothing
    assert session.keepalive(1) == "PING"
    (stop,) = session.stop()
    assert json.loads(stop.text) == {
        "assets_ids": ["1", "2", "3"],
        "operation": "unsubscribe",
        "custom_feature_enabled": True,
    }
    assert session.stop_confirmed()


def test_array_elements_are_published_as_their_exact_bytes_in_order() -> None:
    session, stats = new_session()
    book = (
        b'{"event_type":"book","market":"%s","asset_id":"%s","bids":[{"price":".48","size":"30"}],"asks":[]}'
        % (
            MARKET.encode(),
            YES.encode(),
        )
    )
    change = (
        b'{"event_type": "price_change", "market": "%s", "price_changes": [{"asset_id": "%s", "price": "0.5", "size": "0", "side": "BUY"}]}'
        % (
            MARKET.encode(),
            YES.encode(),
        )
    )
    odd = b'{"event_type":"tick_size_change","market":7}'
    frame = b"[" + book + b" ,\n " + change + b"," + odd + b"]"
    out: list[Inbound] = []
    assert not session.on_frame(frame, 42, out)
    assert [(m.subject, m.payload, m.recv_ns) for m in out] == [
        (f"prod.polymarket.json.book.{MARKET}", book, 42),
        (f"prod.polymarket.json.price_change.{MARKET}", change, 42),
        ("prod.polymarket.json.unrouted.tick_size_change", odd, 42),
    ]
    assert stats.messages == 3 and stats.unrouted == 1
    assert stats.by_type["book"] == 1 and stats.by_type["price_change"] == 1


def test_pong_is_liveness_and_other_text_is_kept() -> None:
    session, stats = new_session()
    out: list[Inbound] = []
    assert not session.on_frame(b"PONG", 1, out)
    assert out == [] and stats.control["pong"] == 1
    for frame in (b"INVALID OPERATION", b"[]", b"{}", b'{"event_type":"book"}'):
        session.on_frame(frame, 1, out)
    assert [m.payload for m in out] == [
        b"INVALID OPERATION",
        b"[]",
        b"{}",
        b'{"event_type":"book"}',
    ]
    assert [m.subject for m in out] == [
        "prod.polymarket.json.unrouted.invalid",
        "prod.polymarket.json.unrouted.invalid",
        "prod.polymarket.json.unrouted.invalid",
        "prod.polymarket.json.unrouted.book",
    ]


def test_simulated_frames_route_by_event_type_and_condition_id() -> None:
    sim = PolymarketExchange(markets=3, rate=0, seed=1)

    class Collector:
        index = 1

        def __init__(self) -> None:
            self.frames: list[bytes] = []

        def post(self, frame: str | bytes, kind: object = None) -> None:
            self.frames.append(frame.encode() if isinstance(frame, str) else frame)

    collector = Collector()
    sim.sessions.append(collector)  # type: ignore[arg-type]
    sim.assets[1] = {t for m in sim.markets for t in m.tokens}
    sim.custom[1] = True
    for _ in range(300):
        sim.step()
    session, stats = new_session()
    out: list[Inbound] = []
    for frame in collector.frames:
        before = len(out)
        session.on_frame(frame, 1, out)
        parts = [m.payload for m in out[before:]]
        element_offsets(frame, parts)  # each element's bytes are in the frame, in order
    markets = {m.condition_id for m in sim.markets}
    assert stats.unrouted == 0 and len(out) > len(collector.frames)
    for message in out:
        _, _, _, kind, key = message.subject.split(".", 4)
        event = json.loads(message.payload)
        assert (kind, key) == (event["event_type"], event["market"]) and key in markets


async def test_gamma_resolves_condition_ids_to_token_ids() -> None:
    sim = PolymarketExchange(markets=150, rate=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sim.gamma.run)
        wanted = [m.condition_id for m in sim.markets[::-1]]  # 150: two requests
        tokens = await resolve_token_ids(sim.gamma.url, wanted)
        assert tokens == [t for m in sim.markets[::-1] for t in m.tokens]
        assert len(sim.gamma.requests) == 2
        assert all(r.startswith("/markets/keyset?") for r in sim.gamma.requests)
        sim.gamma.fail_next(2)  # transient: retried
        config = ConnectorConfig(
            feed="polymarket", markets=[sim.markets[0].condition_id], rest_url=sim.gamma.url
        )
        assert await VENUE.subscription_markets(config) == list(sim.markets[0].tokens)
        with pytest.raises(StartupRefused, match="no CLOB market for condition id"):
            await resolve_token_ids(sim.gamma.url, [sim.markets[1].condition_id, "0xdeadbeef"])
        with pytest.raises(StartupRefused, match="must list condition ids"):
            await VENUE.subscription_markets(
                ConnectorConfig(feed="polymarket", rest_url=sim.gamma.url)
            )
        nursery.cancel_scope.cancel()


async def test_gamma_unreachable_is_unavailable_for_now(autojump_clock: Any) -> None:
    with pytest.raises(
        StartupUnavailable,
        match=re.escape("Gamma API http://127.0.0.1:9/markets/keyset: ConnectError"),
    ):
        await resolve_token_ids("http://127.0.0.1:9", ["0xab"])


@pytest.mark.parametrize(
    ("status", "body", "error", "tries"),
    [
        (404, b"{}", StartupRefused, 1),  # a definitive answer: refused at once
        (200, b"<html>", StartupUnavailable, ATTEMPTS),  # a proxy's page: transient
        (200, b'{"error": 1}', StartupUnavailable, ATTEMPTS),
        (503, b"", StartupUnavailable, ATTEMPTS),
    ],
)
async def test_gamma_answers_are_definitive_or_transient(
    autojump_clock: Any, status: int, body: bytes, error: type[Exception], tries: int
) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, content=body)

    with pytest.raises(error, match=f"Gamma API http://gamma/markets/keyset: .*{status}"):
        await resolve_token_ids("http://gamma", ["0xab"], transport=httpx.MockTransport(answer))
    assert len(seen) == tries


def test_token_ids_accepts_a_string_or_an_array() -> None:
    assert token_ids({"clobTokenIds": '["1", "2"]'}) == ["1", "2"]
    assert token_ids({"clobTokenIds": ["1", "2"]}) == ["1", "2"]
    assert token_ids({"clobTokenIds": ""}) == []
    assert token_ids({"clobTokenIds": "not json"}) == []
    assert token_ids({}) == []


def check_nothing_dropped(
    session: PolymarketSession, stats: ConnectionStats, payload: bytes
) -> None:
    pongs = stats.control["pong"]
    out: list[Inbound] = []
    session.on_frame(payload, 1, out)
    if stats.control["pong"] > pongs:
        assert out == [] and payload.strip() == b"PONG"
        return
    parts = [m.payload for m in out]
    assert parts
    if parts != [payload]:
        element_offsets(payload, parts)
        assert payload.lstrip()[:1] == b"[" and len(parts) > 0
    for message in out:
        assert message.subject.startswith("prod.polymarket.json.")


events = st.fixed_dictionaries(
    {},
    optional={
        "event_type": st.sampled_from(["book", "price_change", "ssmd", "unrouted", "a.b", ""])
        | st.text(max_size=5)
        | st.integers(),
        "market": st.sampled_from([MARKET, "", "x" * 300]) | st.text(max_size=5) | st.none(),
        "asset_id": st.just(YES),
    },
)


@settings(max_examples=400)
@given(st.lists(events | st.integers() | st.text(max_size=4), max_size=4), st.booleans())
def test_classification_of_arbitrary_events_never_raises_or_drops(
    elements: list[Any], as_array: bool
) -> None:
    session, stats = new_session()
    payload = json.dumps(elements if as_array or not elements else elements[0]).encode()
    check_nothing_dropped(session, stats, payload)


@settings(max_examples=400)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_never_raise_or_drop(payload: bytes) -> None:
    session, stats = new_session()
    check_nothing_dropped(session, stats, payload)


def test_an_asset_without_a_book_is_recorded_and_subscribed_again() -> None:
    session, stats = new_session(SubscriptionPlan("market", (YES, "2")))
    session.start()
    out: list[Inbound] = []
    book = b'{"event_type":"book","market":"%s","asset_id":"%s","bids":[],"asks":[]}' % (
        MARKET.encode(),
        YES.encode(),
    )
    session.on_frame(book, 1, out)
    for count in (1, 2):
        assert session.keepalive(count) == "PING"
        assert not session.on_frame(b"PONG", 2, out)
    assert session.keepalive(3) == "PING"
    assert session.on_frame(b"PONG", 3, out)  # the record goes out with the next frame
    record = json.loads(out[-1].payload)
    assert out[-1].subject == "prod.polymarket.json.ssmd.subscribe_error"
    assert record["markets"] == ["2"] and record["channel"] == "market"
    assert stats.subscribe_errors == 1 and session.retries_waiting()
    (retry,) = session.take_retries()
    assert json.loads(retry.text) == {
        "assets_ids": ["2"],
        "operation": "subscribe",
        "custom_feature_enabled": True,
    }
    # Its book now comes, after a record that says the retry was made: the fresh book
    # follows it.
    before = len(out)
    session.on_frame(book.replace(YES.encode(), b"2"), 4, out)
    assert [m.subject for m in out[before:]] == [
        "prod.polymarket.json.ssmd.resubscribe",
        f"prod.polymarket.json.book.{MARKET}",
    ]
    record = json.loads(out[before].payload)
    assert record["reason"] == "retry" and record["markets"] == ["2"] and record["ts_ns"] == 4
    assert stats.resubscribes == 1
    # Nothing more is recorded, however long it runs.
    for count in range(4, 12):
        session.keepalive(count)
        session.on_frame(b"PONG", 5, out)
    assert stats.subscribe_errors == 1 and not session.retries_waiting()
    assert stats.resubscribes == 1
    # A reconnect waits for every book again.
    session.start()
    for count in (1, 2, 3):
        session.keepalive(count)
    session.on_frame(b"PONG", 6, out)
    assert json.loads(out[-1].payload)["markets"] == [YES, "2"]
