"""Routing: every type to its subject, control messages apart, and nothing ever dropped."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssmd.feeds.kalshi.routing import CONTROL_TYPES, RouteKind, Router

router = Router("prod", "kalshi")


@pytest.mark.parametrize(
    ("message", "subject"),
    [
        (
            {"type": "ticker", "sid": 1, "msg": {"market_ticker": "A-1"}},
            "prod.kalshi.json.ticker.A-1",
        ),
        (
            {"type": "ticker_v2", "sid": 1, "msg": {"market_ticker": "A"}},
            "prod.kalshi.json.ticker_v2.A",
        ),
        (
            {
                "type": "trade",
                "sid": 2,
                "seq": 9,
                "msg": {"market_ticker": "KXBTCD-26MAR1213-T69499.99"},
            },
            "prod.kalshi.json.trade.KXBTCD-26MAR1213-T69499%2E99",
        ),
        (
            {"type": "orderbook_snapshot", "sid": 5, "seq": 1, "msg": {"market_ticker": "B"}},
            "prod.kalshi.json.orderbook.B",
        ),
        (
            {"type": "orderbook_delta", "sid": 5, "seq": 2, "msg": {"market_ticker": "B"}},
            "prod.kalshi.json.orderbook.B",
        ),
        (
            {"type": "market_lifecycle_v2", "sid": 13, "msg": {"market_ticker": "C"}},
            "prod.kalshi.json.lifecycle.C",
        ),
        (
            {"type": "event_lifecycle", "sid": 14, "msg": {"event_ticker": "KXBTCD-26JAN2310"}},
            "prod.kalshi.json.event_lifecycle.KXBTCD-26JAN2310",
        ),
        (
            {"type": "multivariate_lookup", "sid": 3, "msg": {"market_ticker": "M"}},
            "prod.kalshi.json.multivariate_lookup.M",
        ),
        (
            {"type": "new.kind", "sid": 3, "msg": {"event_ticker": "E"}},
            "prod.kalshi.json.new%2Ekind.E",
        ),
        (
            {"type": "trade", "sid": 2, "msg": {"ticker": "renamed"}},
            "prod.kalshi.json.unrouted.trade",
        ),
        ({"type": "trade", "sid": 2, "msg": "text"}, "prod.kalshi.json.unrouted.trade"),
        ({"type": "ssmd", "msg": {"market_ticker": "X"}}, "prod.kalshi.json.unrouted.ssmd"),
        ({"sid": 2, "msg": {"market_ticker": "X"}}, "prod.kalshi.json.unrouted.invalid"),
        ({"type": 7}, "prod.kalshi.json.unrouted.invalid"),
        ([1, 2], "prod.kalshi.json.unrouted.invalid"),
    ],
)
def test_routes(message: object, subject: str) -> None:
    routed = router.route(json.dumps(message).encode())
    assert routed.subject == subject


def test_reads_sid_and_seq() -> None:
    routed = router.route(b'{"type":"orderbook_delta","sid":5,"seq":2,"msg":{"market_ticker":"B"}}')
    assert (routed.kind, routed.sid, routed.seq, routed.key) == (RouteKind.DATA, 5, 2, "B")
    assert router.route(b'{"type":"trade","sid":true,"seq":"3","msg":{}}').seq is None


@pytest.mark.parametrize("kind", sorted(CONTROL_TYPES))
def test_control_messages_are_not_routed(kind: str) -> None:
    routed = router.route(json.dumps({"type": kind, "id": 1}).encode())
    assert routed.kind is RouteKind.CONTROL
    assert routed.subject is None
    assert routed.envelope == {"type": kind, "id": 1}


def test_garbage_goes_to_the_fallback_subject() -> None:
    for payload in (b"", b"not json", b"\xff\xfe", b"[" * 100_000, b"1" * 10_000, b'"str"'):
        routed = router.route(payload)
        assert routed.kind is RouteKind.UNROUTED
        assert routed.subject == "prod.kalshi.json.unrouted.invalid"


def test_huge_keys_cannot_make_an_unpublishable_subject() -> None:
    routed = router.route(
        json.dumps({"type": "trade", "msg": {"market_ticker": "x" * 5000}}).encode()
    )
    assert routed.subject == "prod.kalshi.json.unrouted.trade"
    routed = router.route(json.dumps({"type": "t" * 5000, "msg": {"market_ticker": "x"}}).encode())
    assert routed.subject == "prod.kalshi.json.unrouted.invalid"


def _check_never_dropped(payload: bytes) -> None:
    routed = router.route(payload)
    if routed.kind is RouteKind.CONTROL:
        envelope = json.loads(payload)
        assert envelope["type"] in CONTROL_TYPES
        return
    assert routed.subject is not None
    tokens = routed.subject.split(".")
    assert tokens[:3] == ["prod", "kalshi", "json"]
    assert len(tokens) == 5
    assert all(tokens) and len(routed.subject) < 1024
    assert not any(set(t) & set("*> \t\r\n") for t in tokens)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_and_always_have_a_subject(payload: bytes) -> None:
    _check_never_dropped(payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(
                ["trade", "ticker", "orderbook_delta", "event_lifecycle", "ok", "weird.type", ""]
            )
            | st.text(max_size=12)
            | json_values,
            "sid": json_values,
            "seq": json_values,
            "msg": st.fixed_dictionaries(
                {},
                optional={
                    "market_ticker": st.text(max_size=30) | json_values,
                    "event_ticker": st.text(max_size=30),
                },
            )
            | json_values,
        },
    )
)
def test_arbitrary_envelopes_never_raise_and_always_have_a_subject(
    envelope: dict[str, object],
) -> None:
    _check_never_dropped(json.dumps(envelope).encode())


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_envelopes = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["trade", "ticker", "event_lifecycle", "ok", "odd_type", ""])
        | _json_values,
        "sid": _json_values,
        "seq": _json_values,
        "msg": st.fixed_dictionaries(
            {},
            optional={
                "market_ticker": st.sampled_from(["A-1", "B.2", ""]) | _json_values,
                "event_ticker": st.sampled_from(["EV", "x" * 300]) | _json_values,
            },
        )
        | _json_values,
        "other": _json_values,
    },
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    _envelopes.map(lambda e: json.dumps(e).encode())
    | _json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=40)
)
def test_fast_decode_routes_exactly_as_the_standard_library(payload: bytes) -> None:
    """The msgspec path gives the very same route as `json.loads` of the whole frame."""
    fast = router.route(payload)
    slow = router._route_parsed(payload)
    assert (fast.kind, fast.subject, fast.message_type, fast.sid, fast.seq, fast.key) == (
        slow.kind,
        slow.subject,
        slow.message_type,
        slow.sid,
        slow.seq,
        slow.key,
    )
    assert fast.reason == slow.reason


@pytest.mark.parametrize(
    "payload",
    [
        b'{"type":"trade","sid":1,"msg":{"market_ticker":"A"},"note":"\xff"}',
        b'{"type":"trade","sid":1,"msg":{"market_ticker":"A"},"x":NaN}',
        b'{"type":"trade","type":"ticker","msg":{"market_ticker":"A","market_ticker":"B"}}',
        b'{"type":"trade","seq":123456789012345678901234567890,"msg":{"market_ticker":"A"}}',
        b'{"type":"trade","msg":[1,2]}',
        b'{"type":"\\ud800"}',
    ],
)
def test_frames_msgspec_reads_differently_route_as_json_loads_does(payload: bytes) -> None:
    """Invalid UTF-8 in a skipped field, NaN, duplicate keys, huge ints, a non-object body."""
    fast = router.route(payload)
    slow = router._route_parsed(payload)
    assert (fast.kind, fast.subject, fast.seq, fast.reason) == (
        slow.kind,
        slow.subject,
        slow.seq,
        slow.reason,
    )
