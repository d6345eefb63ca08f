"""A Kalshi session without sockets, for the bookkeeping, refusal and repair tests: one
built fresh, frames fed to it, commands and records read back."""

from __future__ import annotations

import json
from typing import Any

from ssmd.config import ConnectorConfig
from ssmd.connector.layout import AddMarkets, DeleteMarkets, Subscribe
from ssmd.connector.publisher import Inbound
from ssmd.connector.shards import SubscriptionPlan
from ssmd.feeds.base import Change, Command, ConnectionStats, SessionContext, Subjects
from ssmd.feeds.kalshi.session import KalshiSession

BOOK = "orderbook_delta"


def new_session(
    plans: list[SubscriptionPlan] | None = None,
) -> tuple[KalshiSession, ConnectionStats]:
    stats = ConnectionStats()
    context = SessionContext(0, Subjects("prod", "kalshi"), stats, ConnectorConfig())
    return KalshiSession(context, plans or []), stats


def frame(session: KalshiSession, body: dict[str, Any]) -> list[Inbound]:
    out: list[Inbound] = []
    session.on_frame(json.dumps(body).encode(), 1, out)
    return out


def records(out: list[Inbound], kind: str | None = None) -> list[dict[str, Any]]:
    found = [json.loads(m.payload) for m in out if ".ssmd." in m.subject]
    return [r for r in found if kind is None or r["type"] == f"ssmd_{kind}"]


def sent(command: Command | None) -> dict[str, Any]:
    assert command is not None
    body: dict[str, Any] = json.loads(command.text)
    return body


def error(command: Command | None, code: int, **extra: Any) -> dict[str, Any]:
    assert command is not None
    return {"id": command.reply, "type": "error", "msg": {"code": code, "msg": "no", **extra}}


def ok(
    command: Command | None, sid: int, seq: int, markets: list[str] | None = None
) -> dict[str, Any]:
    assert command is not None
    reply: dict[str, Any] = {"id": command.reply, "type": "ok", "sid": sid, "seq": seq}
    if markets is not None:
        reply["msg"] = {"market_tickers": markets}
    return reply


def subscribed(session: KalshiSession, slot: int, markets: tuple[str, ...], sid: int) -> None:
    cmd = session.apply(Change(Subscribe(0, BOOK, slot, markets), "discovery"))
    assert cmd is not None
    frame(session, {"id": cmd.reply, "type": "subscribed", "msg": {"channel": BOOK, "sid": sid}})
    assert session.replied(cmd.reply)


def add(session: KalshiSession, *markets: str, reason: str = "lifecycle:created") -> Command | None:
    return session.apply(Change(AddMarkets(0, BOOK, 0, markets), reason))


def delete(
    session: KalshiSession, *markets: str, reason: str = "lifecycle:determined"
) -> Command | None:
    return session.apply(Change(DeleteMarkets(0, BOOK, 0, markets), reason))


def retries(session: KalshiSession) -> list[dict[str, Any]]:
    assert session.retries_waiting()
    return [sent(c) for c in session.take_retries()]


def as_command(body: dict[str, Any]) -> Command:
    """The command object for a sent body (its id is its reply token)."""
    return Command(json.dumps(body), body["id"])


def delta(
    sid: int, seq: int, market: object = "A", kind: str = "orderbook_delta"
) -> dict[str, Any]:
    return {"type": kind, "sid": sid, "seq": seq, "msg": {"market_ticker": market}}
