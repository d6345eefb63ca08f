"""The Kraken venue session without sockets: acks per symbol, routing, keepalives, the
checksum and trade_id checks with their records and repairs, and classification of
arbitrary frames that never raises and never drops."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssmd.config import ConnectorConfig
from ssmd.connector.publisher import Inbound
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds import load_venue
from ssmd.feeds.base import Command, ConnectionStats, SessionContext, Subjects
from ssmd.feeds.kraken import VENUE, KrakenSession
from ssmd.simulators.kraken import KrakenExchange, KrakenSubscriptions
from ssmd.simulators.kraken_wire import encode
from ssmd.supervisor import StartupRefused
from tests.metrics_probe import connector_lines

PLANS = [SubscriptionPlan("book", ("BTC/USD", "ETH/USD")), SubscriptionPlan("trade", ("BTC/USD",))]


def new_session(depth: int | None = None) -> tuple[KrakenSession, ConnectionStats]:
    stats = ConnectionStats()
    config = ConnectorConfig(feed="kraken", kind="kraken", depth=depth)
    session = VENUE.session(SessionContext(0, Subjects("prod", "kraken"), stats, config), PLANS)
    assert isinstance(session, KrakenSession)
    return session, stats


def ack(request: dict[str, Any], symbol: str, success: bool = True) -> bytes:
    reply: dict[str, Any] = {"method": request["method"], "req_id": request["req_id"]}
    if success:
        reply |= {
            "success": True,
            "result": {"channel": request["params"]["channel"], "symbol": symbol},
        }
    else:
        reply |= {"success": False, "error": "Currency pair not supported", "symbol": symbol}
    return json.dumps(reply).encode()


def subscribe_all(session: KrakenSession) -> None:
    out: list[Inbound] = []
    for command in session.start():
        request = json.loads(command.text)
        for symbol in request["params"]["symbol"]:
            assert not session.replied(command.reply)
            assert session.on_frame(ack(request, symbol), 1, out)
        assert session.replied(command.reply)
    assert out == []


def test_venue_is_loadable_and_plans_symbols() -> None:
    assert load_venue("kraken") is VENUE
    assert VENUE.default_url({}) == "wss://ws.kraken.com/v2"
    assert VENUE.handshake_headers("wss://x", None) == []
    config = ConnectorConfig(feed="kraken", channels=["book", "trade"], markets=["BTC/USD"])
    assert VENUE.plan(config, ["BTC/USD"]) == [
        [SubscriptionPlan("book", ("BTC/USD",)), SubscriptionPlan("trade", ("BTC/USD",))]
    ]
    with pytest.raises(StartupRefused, match="must list symbols"):
        VENUE.plan(config, [])
    with pytest.raises(StartupRefused, match="unknown channel"):
        VENUE.plan(ConnectorConfig(feed="kraken", channels=["bogus"]), ["BTC/USD"])
    # `instrument` names no symbol in its acks or data: it cannot be routed or confirmed.
    with pytest.raises(StartupRefused, match=r"unknown channel.*instrument"):
        VENUE.plan(ConnectorConfig(feed="kraken", channels=["instrument"]), ["BTC/USD"])


def test_subscribe_commands_carry_req_id_depth_and_wait_for_one_ack_per_symbol() -> None:
    session, stats = new_session(depth=25)
    commands = session.start()
    book = json.loads(commands[0].text)
    assert book == {
        "method": "subscribe",
        "params": {"channel": "book", "symbol": ["BTC/USD", "ETH/USD"], "depth": 25},
        "req_id": commands[0].reply,
    }
    trade = json.loads(commands[1].text)
    assert "depth" not in trade["params"] and trade["req_id"] == commands[1].reply
    out: list[Inbound] = []
    session.on_frame(ack(book, "BTC/USD"), 1, out)
    assert not session.replied(commands[0].reply)
    session.on_frame(ack(book, "ETH/USD"), 1, out)
    assert session.replied(commands[0].reply)
    assert stats.control["subscribe"] == 2 and stats.messages == 0 and out == []


def eth_refused(session: KrakenSession) -> tuple[Command, list[Inbound]]:
    """The session started: its book subscribe, acked for BTC/USD (at 5) and refused for
    ETH/USD (at 6), and what the session made of the two acks."""
    subscribe = session.start()[0]
    book = json.loads(subscribe.text)
    out: list[Inbound] = []
    session.on_frame(ack(book, "BTC/USD"), 5, out)
    session.on_frame(ack(book, "ETH/USD", success=False), 6, out)
    return subscribe, out


def test_a_refused_symbol_is_recorded_and_retried_alone() -> None:
    session, stats = new_session()
    subscribe, out = eth_refused(session)
    assert session.replied(subscribe.reply)
    assert [m.subject for m in out] == ["prod.kraken.json.ssmd.subscribe_error"]
    record = json.loads(out[0].payload)
    assert record["markets"] == ["ETH/USD"] and record["channel"] == "book"
    assert stats.subscribe_errors == 1 and session.retries_waiting()
    (retry,) = session.take_retries()
    assert json.loads(retry.text)["params"]["symbol"] == ["ETH/USD"]
    assert not session.retries_waiting()


def test_a_refused_symbol_that_succeeds_later_records_when_its_capture_began() -> None:
    """The subscribe_error said ETH/USD is not recorded; the retry's ack is an
    `ssmd.subscription` record adding it, placed before its fresh snapshot. Once only."""
    session, _ = new_session()
    _, out = eth_refused(session)
    assert [m.subject for m in out] == ["prod.kraken.json.ssmd.subscribe_error"]
    out.clear()
    (retry,) = session.take_retries()
    session.on_frame(ack(json.loads(retry.text), "ETH/USD"), 7, out)
    sim = KrakenExchange(rate=0, seed=3)
    session.on_frame(encode(sim._book_snapshot(sim.symbols["ETH/USD"], 10)), 8, out)
    assert [m.subject for m in out] == [
        "prod.kraken.json.ssmd.subscription",
        "prod.kraken.json.book.ETH/USD",
    ]
    assert json.loads(out[0].payload) == {
        "type": "ssmd_subscription",
        "conn": 0,
        "sid": None,
        "channel": "book",
        "added": ["ETH/USD"],
        "removed": [],
        "reason": "retry",
        "ts_ns": 7,
    }
    # A reconnect subscribes everything again: no capture begins anew, no record.
    out.clear()
    for command in session.start():
        request = json.loads(command.text)
        for symbol in request["params"]["symbol"]:
            session.on_frame(ack(request, symbol), 9, out)
    assert out == []


def test_a_symbol_refused_before_a_reconnect_records_its_capture_on_the_new_socket() -> None:
    session, _ = new_session()
    book = json.loads(session.start()[0].text)
    out: list[Inbound] = []
    session.on_frame(ack(book, "ETH/USD", success=False), 5, out)
    out.clear()
    book = json.loads(session.start()[0].text)  # reconnected before the retry
    session.on_frame(ack(book, "BTC/USD"), 6, out)
    session.on_frame(ack(book, "ETH/USD"), 7, out)
    (record,) = [json.loads(m.payload) for m in out]
    assert record["type"] == "ssmd_subscription" and record["added"] == ["ETH/USD"]
    assert record["reason"] == "retry" and record["ts_ns"] == 7


def test_an_error_before_another_symbols_ack_refuses_only_its_own_symbol() -> None:
    plans = [SubscriptionPlan("book", ("FOO/BAR", "BTC/USD"))]
    stats = ConnectionStats()
    config = ConnectorConfig(feed="kraken", kind="kraken")
    session = KrakenSession(SessionContext(0, Subjects("prod", "kraken"), stats, config), plans)
    (command,) = session.start()
    book = json.loads(command.text)
    out: list[Inbound] = []
    session.on_frame(ack(book, "FOO/BAR", success=False), 5, out)
    assert not session.replied(command.reply)
    session.on_frame(ack(book, "BTC/USD"), 6, out)
    assert session.replied(command.reply)
    assert session.subscribed["book"] == {"BTC/USD"}
    (record,) = [json.loads(m.payload) for m in out]
    assert record["markets"] == ["FOO/BAR"]
    (retry,) = session.take_retries()
    assert json.loads(retry.text)["params"]["symbol"] == ["FOO/BAR"]
    # BTC/USD's book is checked and repaired like any other.
    sim = KrakenExchange(rate=0, seed=3)
    snapshot = sim._book_snapshot(sim.symbols["BTC/USD"], 10)
    snapshot["data"][0]["checksum"] += 1
    out.clear()
    assert session.on_frame(encode(snapshot), 7, out)
    unsubscribe, resubscribe = session.take_commands()
    assert json.loads(unsubscribe.text)["params"]["symbol"] == ["BTC/USD"]
    assert json.loads(resubscribe.text)["params"]["symbol"] == ["BTC/USD"]
    assert [json.loads(c.text)["params"]["symbol"] for c in session.stop()] == [["BTC/USD"]]


def test_an_error_naming_no_symbol_refuses_every_unanswered_symbol() -> None:
    session, _ = new_session()
    commands = session.start()
    book = json.loads(commands[0].text)
    out: list[Inbound] = []
    session.on_frame(ack(book, "BTC/USD"), 5, out)
    error = {"method": "subscribe", "req_id": book["req_id"], "success": False, "error": "x"}
    session.on_frame(json.dumps(error).encode(), 6, out)
    assert session.replied(commands[0].reply)
    (record,) = [json.loads(m.payload) for m in out]
    assert record["markets"] == ["ETH/USD"]
    # A late ack still counts.
    session.on_frame(ack(book, "ETH/USD"), 7, out)
    assert session.subscribed["book"] == {"BTC/USD", "ETH/USD"}
    assert session.take_retries() == []


def test_a_book_update_with_no_book_and_no_repair_resubscribes() -> None:
    session, _ = new_session()
    subscribe_all(session)
    update = {
        "channel": "book",
        "type": "update",
        "data": [{"symbol": "BTC/USD", "bids": [], "asks": [], "checksum": 1}],
    }
    out: list[Inbound] = []
    assert session.on_frame(json.dumps(update).encode(), 5, out)
    _, resubscribe = session.take_commands()
    assert json.loads(resubscribe.text)["params"]["symbol"] == ["BTC/USD"]
    # While the repair is in flight, more updates do not queue another.
    assert not session.on_frame(json.dumps(update).encode(), 6, out)
    assert session.take_commands() == []


def test_a_snapshot_before_its_ack_is_kept() -> None:
    session, _ = new_session()
    commands = session.start()
    book = json.loads(commands[0].text)
    sim = KrakenExchange(rate=0, seed=3)
    out: list[Inbound] = []
    session.on_frame(encode(sim._book_snapshot(sim.symbols["BTC/USD"], 10)), 5, out)
    session.on_frame(ack(book, "BTC/USD"), 6, out)
    assert "BTC/USD" in session.books


def test_routing_keepalives_and_status() -> None:
    session, stats = new_session()
    subscribe_all(session)
    out: list[Inbound] = []
    frames = {
        b'{"channel":"heartbeat"}': None,
        b'{"method":"pong","req_id":9,"time_in":"t","time_out":"t"}': None,
        b'{"channel":"status","type":"update","data":[{"system":"online","api_version":"v2"}]}': "prod.kraken.json.status.system",
        b'{"channel":"ticker","type":"update","data":[{"symbol":"ETH/USD","bid":2500.1}]}': "prod.kraken.json.ticker.ETH/USD",
        b'{"channel":"ohlc","type":"update","data":[{"symbol":"BTC/USD"}]}': "prod.kraken.json.ohlc.BTC/USD",
        b'{"channel":"ticker","type":"update","data":[{"bid":1}]}': "prod.kraken.json.unrouted.ticker",
        b'{"channel":"ticker","data":[1,2]}': "prod.kraken.json.unrouted.ticker",
        b"[1,2]": "prod.kraken.json.unrouted.invalid",
        b"not json": "prod.kraken.json.unrouted.invalid",
    }
    for frame in frames:
        assert not session.on_frame(frame, 7, out)
    assert [(m.subject, m.payload) for m in out] == [
        (subject, frame) for frame, subject in frames.items() if subject is not None
    ]
    assert stats.control["heartbeat"] == 1 and stats.control["pong"] == 1
    assert stats.unrouted == 4
    assert json.loads(session.keepalive(1) or "")["method"] == "ping"


def exported(stats: ConnectionStats) -> list[str]:
    """The /metrics lines the connector makes of one connection's counters."""
    return connector_lines("kraken", stats)


def label_values(lines: list[str], metric: str, label: str) -> set[str]:
    found = set()
    for line in lines:
        if line.startswith(metric + "{"):
            labels = line[len(metric) + 1 : line.index("}")]
            for pair in labels.split(","):
                name, _, value = pair.partition("=")
                if name == label:
                    found.add(json.loads(value))
    return found


async def test_metric_labels_stay_bounded_whatever_methods_and_channels_arrive() -> None:
    """A venue sending arbitrary `method` and `channel` strings cannot grow the label
    sets of /metrics: unknown ones are counted as `other`, nothing is lost."""
    session, stats = new_session()
    subscribe_all(session)
    out: list[Inbound] = []
    for n in range(50):
        frames = [
            {"method": f"garbage-{n}", "req_id": 10_000 + n},
            {"channel": f"chan-{n}", "type": "update", "data": [{"symbol": "BTC/USD"}]},
            {"channel": f"nosym-{n}", "data": []},
        ]
        for frame in frames:
            session.on_frame(json.dumps(frame).encode(), 1, out)
    session.on_frame(b'{"method":"pong","req_id":1}', 1, out)
    session.on_frame(b'{"channel":"heartbeat"}', 1, out)
    session.on_frame(b'{"channel":"ticker","type":"update","data":[{"symbol":"ETH/USD"}]}', 1, out)
    lines = exported(stats)
    control = label_values(lines, "ssmd_control_messages_total", "kind")
    received = label_values(lines, "ssmd_received_messages_total", "type")
    assert control == {"subscribe", "pong", "heartbeat", "other"}, control
    assert received == {"ticker", "other"}, received
    assert 'ssmd_control_messages_total{feed="kraken",kind="other"} 50.0' in lines
    assert 'ssmd_received_messages_total{feed="kraken",type="other"} 100.0' in lines
    # The frames themselves keep their own types: on their subjects, not dropped.
    subjects = {m.subject for m in out}
    assert "prod.kraken.json.chan-7.BTC/USD" in subjects
    assert "prod.kraken.json.unrouted.nosym-7" in subjects
    assert len(out) == 101


def sim_frames(sim: KrakenExchange) -> list[bytes]:
    """A fake connection to the simulator that collects what it would send."""

    class Collector:
        index = 1

        def __init__(self) -> None:
            self.frames: list[bytes] = []

        def post(self, frame: str | bytes, kind: object = None) -> None:
            self.frames.append(frame.encode() if isinstance(frame, str) else frame)

    collector = Collector()
    sim.sessions.append(collector)  # type: ignore[arg-type]
    subs = KrakenSubscriptions()
    subs.channels["book"] |= {"BTC/USD", "ETH/USD"}
    subs.channels["trade"].add("BTC/USD")
    sim.subscriptions[1] = subs
    for symbol in ("BTC/USD", "ETH/USD"):
        collector.post(encode(sim._book_snapshot(sim.symbols[symbol], 10)))
    return collector.frames


def feed(session: KrakenSession, frames: list[bytes], out: list[Inbound]) -> bool:
    queued = False
    while frames:
        queued |= session.on_frame(frames.pop(0), 11, out)
    return queued


def test_simulated_books_check_out_and_a_bad_checksum_is_a_gap_then_a_resubscribe() -> None:
    session, stats = new_session()
    subscribe_all(session)
    sim = KrakenExchange(rate=0, seed=4)
    frames = sim_frames(sim)
    out: list[Inbound] = []
    for _ in range(300):
        sim.change_book(sim.symbols["BTC/USD"])
        sim.change_book(sim.symbols["ETH/USD"])
    assert not feed(session, frames, out)
    assert stats.gaps == 0 and len(out) > 400
    assert all(m.subject.startswith("prod.kraken.json.book.") for m in out)

    out.clear()
    sim.break_checksum("ETH/USD")
    while sim.change_book(sim.symbols["ETH/USD"]) == 0:
        pass
    assert feed(session, frames, out)
    gap, data = out
    assert (
        gap.subject == "prod.kraken.json.ssmd.gap"
        and data.subject == "prod.kraken.json.book.ETH/USD"
    )
    record = json.loads(gap.payload)
    assert record["reason"] == "checksum" and record["markets"] == ["ETH/USD"]
    assert record["got"] == json.loads(data.payload)["data"][0]["checksum"] != record["expected"]
    unsubscribe, resubscribe = session.take_commands()
    assert json.loads(unsubscribe.text)["method"] == "unsubscribe"
    request = json.loads(resubscribe.text)
    assert request["params"] == {"channel": "book", "symbol": ["ETH/USD"], "depth": 10}
    assert session.take_commands() == []
    # Updates before the fresh snapshot are published but not checked.
    sim.change_book(sim.symbols["ETH/USD"])
    out.clear()
    session.on_frame(ack(json.loads(unsubscribe.text), "ETH/USD"), 12, out)
    feed(session, frames, out)
    session.on_frame(ack(request, "ETH/USD"), 13, out)
    assert [m.subject for m in out][-1] == "prod.kraken.json.ssmd.resubscribe"
    assert json.loads(out[-1].payload)["reason"] == "checksum"
    assert stats.gaps == 1 and stats.resubscribes == 1
    # The fresh snapshot and what follows check out again.
    frames.append(encode(sim._book_snapshot(sim.symbols["ETH/USD"], 10)))
    for _ in range(50):
        sim.change_book(sim.symbols["ETH/USD"])
    out.clear()
    assert not feed(session, frames, out)
    assert stats.gaps == 1


def test_a_lost_update_is_found_by_the_next_checksum() -> None:
    session, stats = new_session()
    subscribe_all(session)
    sim = KrakenExchange(rate=0, seed=8)
    frames = sim_frames(sim)
    sim.lose_book_update("BTC/USD")
    while sim.symbols["BTC/USD"].lose_next_update:
        sim.change_book(sim.symbols["BTC/USD"])
    while sim.change_book(sim.symbols["BTC/USD"]) == 0:
        pass
    out: list[Inbound] = []
    assert feed(session, frames, out)
    assert stats.gaps == 1
    assert [json.loads(m.payload)["reason"] for m in out if m.subject.endswith(".ssmd.gap")] == [
        "checksum"
    ]


def test_a_trade_id_jump_is_a_gap_with_no_resubscribe_and_survives_reconnects() -> None:
    session, stats = new_session()
    subscribe_all(session)
    sim = KrakenExchange(rate=0, seed=2)
    frames = sim_frames(sim)
    state = sim.symbols["BTC/USD"]
    for _ in range(5):
        sim.trade(state)
    sim.jump_trade_id("BTC/USD", 7)
    sim.trade(state)
    out: list[Inbound] = []
    assert not feed(session, frames, out)
    gaps = [json.loads(m.payload) for m in out if m.subject.endswith(".ssmd.gap")]
    assert len(gaps) == 1
    assert gaps[0]["reason"] == "trade_id" and gaps[0]["got"] - gaps[0]["expected"] == 7
    assert gaps[0]["channel"] == "trade" and gaps[0]["sid"] is None
    assert session.take_commands() == []
    # Trades missed while disconnected show as a jump at the first trade after it.
    subscribe_all(session)
    sim.jump_trade_id("BTC/USD", 3)
    sim.trade(state)
    out.clear()
    feed(session, frames, out)
    assert stats.gaps == 2


async def test_a_trade_id_going_back_is_no_gap_and_never_moves_the_last_back() -> None:
    session, stats = new_session()
    subscribe_all(session)
    out: list[Inbound] = []
    for trade_id in (100, 99, 101, 101, 102):
        frame = {
            "channel": "trade",
            "type": "update",
            "data": [{"symbol": "BTC/USD", "trade_id": trade_id}],
        }
        session.on_frame(json.dumps(frame).encode(), 1, out)
    assert stats.gaps == 0 and [m for m in out if ".ssmd." in m.subject] == []
    assert stats.trade_ids_behind == 2 and session.last_trade_id["BTC/USD"] == 102
    assert 'ssmd_trade_ids_behind_total{feed="kraken"} 2.0' in exported(stats)


def test_stop_unsubscribes_every_channel_and_waits_for_the_acks() -> None:
    session, _ = new_session()
    subscribe_all(session)
    commands = session.stop()
    assert [json.loads(c.text)["params"]["channel"] for c in commands] == ["book", "trade"]
    assert not session.stop_confirmed()
    out: list[Inbound] = []
    for command in commands:
        request = json.loads(command.text)
        for symbol in request["params"]["symbol"]:
            session.on_frame(ack(request, symbol), 1, out)
    assert session.stop_confirmed() and out == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)
levels = st.lists(
    st.fixed_dictionaries(
        {
            "price": st.decimals(0, 100, places=2) | json_values,
            "qty": st.decimals(0, 5, places=3) | json_values,
        }
    ),
    max_size=3,
)
frames = st.fixed_dictionaries(
    {},
    optional={
        "channel": st.sampled_from(["book", "trade", "ticker", "status", "heartbeat"])
        | json_values,
        "type": st.sampled_from(["snapshot", "update"]) | json_values,
        "method": st.sampled_from(["subscribe", "unsubscribe", "pong"]) | json_values,
        "req_id": st.integers(0, 4) | json_values,
        "success": st.booleans() | json_values,
        "result": st.fixed_dictionaries({"symbol": st.sampled_from(["BTC/USD", "X"]) | json_values})
        | json_values,
        "data": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "symbol": st.sampled_from(["BTC/USD", "ETH/USD"]) | json_values,
                    "trade_id": st.integers(0, 20) | json_values,
                    "bids": levels,
                    "asks": levels,
                    "checksum": st.integers(0, 2**32) | json_values,
                },
            )
            | json_values,
            max_size=3,
        )
        | json_values,
    },
)


def check_nothing_dropped(session: KrakenSession, stats: ConnectionStats, payload: bytes) -> None:
    control_before = sum(stats.control.values())
    out: list[Inbound] = []
    session.on_frame(payload, 1, out)
    published = [m for m in out if ".json.ssmd." not in m.subject]
    if sum(stats.control.values()) > control_before:
        assert published == []
    else:
        assert [m.payload for m in published] == [payload]
    for message in out:
        assert message.subject.startswith("prod.kraken.json.")


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames, max_size=6))
def test_classification_of_arbitrary_frames_never_raises_or_drops(messages: list[Any]) -> None:
    session, stats = new_session()
    subscribe_all(session)
    for message in messages:
        payload = json.dumps(message, default=str).encode()
        check_nothing_dropped(session, stats, payload)
        session.take_commands()
        session.take_retries()


@settings(max_examples=400)
@given(st.lists(st.binary(max_size=80), max_size=4))
def test_arbitrary_bytes_never_raise_or_drop(payloads: list[bytes]) -> None:
    session, stats = new_session()
    for payload in payloads:
        check_nothing_dropped(session, stats, payload)
