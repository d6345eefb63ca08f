"""Polymarket discovery without I/O: the Gamma market rules, the event selection,
`new_market`/`market_resolved` as set changes, and the dynamic session's commands and
`ssmd.subscription` records. Kalshi's source behind the same interface."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ssmd.config import ConfigError, ConnectorConfig, DiscoveryConfig, parse_config
from ssmd.connector.layout import AddMarkets, DeleteMarkets, Subscribe, Unsubscribe
from ssmd.connector.publisher import Inbound
from ssmd.feeds.base import Change, ConnectionStats, DynamicSession, SessionContext, Subjects
from ssmd.feeds.discovery import LiveChange, discovery_source
from ssmd.feeds.kalshi_discovery import Selection
from ssmd.feeds.kalshi_source import KalshiSource
from ssmd.feeds.polymarket import PolymarketSession
from ssmd.feeds.polymarket_source import PolymarketSource

A, B = "0x" + "a" * 64, "0x" + "b" * 64
TOKENS = {A: ("11", "12"), B: ("21", "22")}


def gamma(cid: str = A, **fields: Any) -> dict[str, Any]:
    market: dict[str, Any] = {
        "id": "1",
        "conditionId": cid,
        "clobTokenIds": json.dumps(list(TOKENS.get(cid, ("1", "2")))),
        "active": True,
        "closed": False,
        "enableOrderBook": True,
        "events": [{"slug": "fed-march"}],
    }
    market.update(fields)
    return market


def new_market(cid: str = A, slug: str = "fed-march", **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_type": "new_market",
        "market": cid,
        "assets_ids": list(TOKENS.get(cid, ("1", "2"))),
        "active": True,
        "event_message": {"slug": slug},
    }
    event.update(fields)
    return event


def test_a_wanted_market_is_active_open_with_an_order_book_and_token_ids() -> None:
    source = PolymarketSource()
    assert source.wants(gamma())
    assert source.units(gamma()) == ("11", "12")
    assert source.units(gamma(clobTokenIds=["11", "12"])) == ("11", "12")  # a real array
    assert source.market_key(gamma()) == A
    for unwanted in (
        gamma(closed=True),
        gamma(active=False),
        gamma(enableOrderBook=False),
        gamma(enableOrderBook=None),
        gamma(clobTokenIds="[]"),
        gamma(clobTokenIds="not json"),
        gamma(conditionId=None),
    ):
        assert not source.wants(unwanted), unwanted


def test_named_event_slugs_select_their_markets_only() -> None:
    source = PolymarketSource(["fed-march"])
    assert source.wants(gamma()) and source.catalogued(gamma())
    other = gamma(events=[{"slug": "nba-finals"}])
    assert not source.wants(other) and not source.catalogued(other)
    assert not source.wants(gamma(events=None))
    assert source.live_change(new_market(slug="nba-finals")) is None
    assert source.live_change(new_market()) == LiveChange(
        A, True, "lifecycle:new_market", ("11", "12")
    )


def test_new_market_adds_resolved_removes_and_a_late_copy_never_revives() -> None:
    source = PolymarketSource()
    assert source.live_change(new_market()) == LiveChange(
        A, True, "lifecycle:new_market", ("11", "12")
    )
    # Tokens from clob_token_ids when assets_ids is missing.
    assert source.live_change(new_market(B, assets_ids=None, clob_token_ids=["21", "22"])) == (
        LiveChange(B, True, "lifecycle:new_market", ("21", "22"))
    )
    resolved = {"event_type": "market_resolved", "market": A, "assets_ids": ["11", "12"]}
    assert source.live_change(resolved) == LiveChange(A, False, "lifecycle:market_resolved")
    assert source.live_change(resolved) == LiveChange(A, False, "lifecycle:market_resolved")
    # Another connection's copy of the creation, after the resolution: ignored, and a
    # walk that still lists the market (Gamma lags) does not bring it back either.
    assert source.live_change(new_market()) is None
    assert not source.wants(gamma())
    for ignored in (
        new_market(assets_ids=[], clob_token_ids=None),
        new_market(B, active=False),
        {"event_type": "book", "market": B},
        {"event_type": "new_market"},
    ):
        assert source.live_change(ignored) is None, ignored


def test_walks_page_gamma_keysets_and_static_ids_in_hundreds() -> None:
    source = PolymarketSource()
    (walk,) = source.market_walks()
    assert (walk.path, walk.items_key, walk.limit, walk.paging) == (
        "/markets/keyset",
        "markets",
        100,
        "next_cursor",
    )
    assert walk.query == {"active": "true", "closed": "false"}
    ids = [f"0x{i:064x}" for i in range(250)]
    walks = source.static_walks(ids)
    assert [w.query["condition_ids"] for w in walks] == [ids[:100], ids[100:200], ids[200:]]
    # 200 token ids a connection: 100 binary markets.
    assert source.layout_limits(200, 200) == (100, 100)
    assert source.channels(["market"]) == ([], ["market"])


def test_the_sources_are_found_by_venue_kind() -> None:
    kalshi = ConnectorConfig(feed="kalshi", discovery=DiscoveryConfig(series=["KXBTCD"]))
    poly = ConnectorConfig(
        feed="polymarket", markets=[], discovery=DiscoveryConfig(series=["fed-march"])
    )
    k = discovery_source("kalshi", kalshi)
    p = discovery_source("polymarket", poly)
    assert isinstance(k, KalshiSource) and k.selection == Selection(frozenset({"KXBTCD"}))
    assert isinstance(p, PolymarketSource) and p.events == {"fed-march"}
    assert discovery_source("kraken", kalshi) is None
    assert k.channels(["ticker", "orderbook_delta"]) == (
        ["market_lifecycle_v2"],
        ["ticker", "orderbook_delta"],
    )


# The session's live changes.


def session(events: list[bytes] | None = None) -> PolymarketSession:
    context = SessionContext(
        3,
        Subjects("test", "polymarket"),
        ConnectionStats(),
        ConnectorConfig(feed="polymarket", markets=["x"]),
        events=events.append if events is not None else None,
        units=lambda market: TOKENS.get(market, ()),
    )
    return PolymarketSession(context, [])


def frame(s: PolymarketSession, payload: bytes, recv_ns: int = 7) -> list[Inbound]:
    out: list[Inbound] = []
    s.on_frame(payload, recv_ns, out)
    return out


def subscription_records(out: list[Inbound]) -> list[dict[str, Any]]:
    return [
        json.loads(m.payload) for m in out if m.subject == "test.polymarket.json.ssmd.subscription"
    ]


def test_a_discovering_connection_opens_with_no_asset_and_custom_features() -> None:
    s = session(events=[])
    assert isinstance(s, DynamicSession)
    (command,) = s.start()
    assert json.loads(command.text) == {
        "assets_ids": [],
        "type": "market",
        "custom_feature_enabled": True,
    }
    assert command.reply is None


def test_changes_are_token_operations_recorded_before_the_next_frame() -> None:
    s = session(events=[])
    s.start()
    command = s.apply(Change(Subscribe(3, "market", 0, (A, B)), "discovery"))
    assert command is not None and command.reply is None
    assert json.loads(command.text) == {
        "assets_ids": ["11", "12", "21", "22"],
        "operation": "subscribe",
        "custom_feature_enabled": True,
    }
    out = frame(s, b"PONG", recv_ns=9)
    assert subscription_records(out) == [
        {
            "type": "ssmd_subscription",
            "conn": 3,
            "sid": None,
            "channel": "market",
            "added": [A, B],
            "removed": [],
            "reason": "discovery",
            "ts_ns": 9,
        }
    ]
    assert s.sid_markets() == {0: ("market", 2)}
    # Placed again: nothing to send, nothing to record.
    assert s.apply(Change(AddMarkets(3, "market", 0, (A,)), "reconcile")) is None
    command = s.apply(Change(DeleteMarkets(3, "market", 0, (A,)), "lifecycle:market_resolved"))
    assert command is not None
    assert json.loads(command.text) == {
        "assets_ids": ["11", "12"],
        "operation": "unsubscribe",
        "custom_feature_enabled": True,
    }
    book = b'{"event_type":"book","market":"%s","asset_id":"21"}' % B.encode()
    out = frame(s, book, recv_ns=10)
    (record,) = subscription_records(out)
    assert (record["added"], record["removed"], record["reason"]) == (
        [],
        [A],
        "lifecycle:market_resolved",
    )
    assert out[-1].payload == book  # the record comes before the frame
    # A reconnect subscribes what is wanted now, in the initial message.
    (initial,) = s.start()
    assert json.loads(initial.text)["assets_ids"] == ["21", "22"]
    command = s.apply(Change(Unsubscribe(3, "market", 0), "reconcile"))
    assert command is not None and json.loads(command.text)["assets_ids"] == ["21", "22"]
    assert s.sid_markets() == {} and s.assets == []


def test_a_removed_market_is_not_retried_for_its_missing_book() -> None:
    s = session(events=[])
    s.start()
    s.apply(Change(Subscribe(3, "market", 0, (A, B)), "discovery"))
    for count in (1, 2, 3):
        s.keepalive(count)  # no book for any token: all four overdue
    frame(s, b"PONG")  # the subscribe_error record
    assert s.retries_waiting()
    s.apply(Change(DeleteMarkets(3, "market", 0, (A,)), "lifecycle:market_resolved"))
    (retry,) = s.take_retries()
    assert json.loads(retry.text)["assets_ids"] == ["21", "22"]


def test_lifecycle_events_go_to_discovery_and_to_the_archive() -> None:
    events: list[bytes] = []
    s = session(events=events)
    s.start()
    created = b'{"event_type":"new_market","market":"%s","assets_ids":["1","2"]}' % A.encode()
    resolved = b'{"event_type":"market_resolved","market":"%s"}' % A.encode()
    other = b'{"event_type":"price_change","market":"%s","price_changes":[]}' % A.encode()
    out = frame(s, b"[" + created + b", " + other + b",\n" + resolved + b"]")
    assert events == [created, resolved]
    assert [m.payload for m in out] == [created, other, resolved]
    assert out[0].subject == f"test.polymarket.json.new_market.{A}"


def test_discovery_is_configured_for_kalshi_and_polymarket_only() -> None:
    table: dict[str, Any] = {"feed": "polymarket", "discovery": {"series": ["fed-march"]}}
    (cc,) = parse_config({"env": "test", "connector": [table]}).connectors
    assert cc.markets == [] and cc.discovery is not None  # no list needed
    with pytest.raises(ConfigError, match=r"connector\[0\]\.markets"):
        parse_config({"env": "test", "connector": [{"feed": "polymarket"}]})
    kraken = {"feed": "kraken", "markets": ["BTC/USD"], "discovery": {}}
    with pytest.raises(ConfigError, match=r"connector\[0\]\.discovery: applies to kinds kalshi"):
        parse_config({"env": "test", "connector": [kraken]})


async def test_a_market_whose_tokens_are_forgotten_subscribes_nothing() -> None:
    """A change queued on a connection that is down may be applied after a walk forgot
    the market's tokens: it must subscribe nothing, never the condition id as a token."""
    from ssmd.clock import WallClock
    from ssmd.connector.discovery import Discovery
    from ssmd.connector.rest import RestClient, RestSettings

    def make(source: Any) -> Discovery:
        return Discovery(
            source=source,
            layout=None,
            rest=RestClient("http://127.0.0.1:9", RestSettings(rate=1.0, burst=1.0, timeout=1.0)),
            subjects=Subjects("test", "feed"),
            clock=WallClock(anchor_ns=0),
            refresh=300.0,
            connections=[],
            open_connection=lambda index, out: pytest.fail("no connection opens"),
        )

    discovery = make(PolymarketSource())
    heard: list[bytes] = []
    assert discovery.units_of(A) == ()
    assert make(KalshiSource(Selection(frozenset()))).units_of("KX-A") == ("KX-A",)
    context = SessionContext(
        3,
        Subjects("test", "polymarket"),
        ConnectionStats(),
        ConnectorConfig(feed="polymarket", markets=["x"]),
        events=heard.append,
        units=discovery.units_of,
    )
    s = PolymarketSession(context, [])
    assert s.apply(Change(Subscribe(0, "market", 0, (A,)), "discovery")) is None
