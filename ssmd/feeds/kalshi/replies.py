"""What a Kalshi session remembers of each command until its reply, and how it reads
the replies: error codes (kalshi-ws.md), the markets an error names, an `ok`'s list."""

from __future__ import annotations

from typing import Any

import attrs

from ssmd.connector.shards import SubscriptionPlan

ERROR_UNKNOWN_SID = 7  # the exchange knows no such subscription (any more)
ERROR_CHANNEL = 10  # channel error: the subscription is dead
ERROR_MARKET_REQUIRED = 14  # no (usable) market ticker in the command
ERROR_MARKET_NOT_FOUND = 16
ERROR_INTERNAL = 17  # the subscription is dead
ERROR_BUFFER_OVERFLOW = 25  # the exchange dropped a subscription: data lost
ERROR_MARKET_LIMIT = 26  # too many markets on one subscription
ERROR_TOO_MANY_REQUESTS = 27  # per-subscription command rate
# Errors that say the sid no longer runs (kalshi-ws.md: terminal, resubscribe).
SID_ENDED_ERRORS = frozenset({ERROR_UNKNOWN_SID, ERROR_CHANNEL, ERROR_INTERNAL})
# Errors that name markets the exchange will never take: they leave the wanted set.
UNKNOWN_MARKET_ERRORS = frozenset({ERROR_MARKET_REQUIRED, ERROR_MARKET_NOT_FOUND})
# The reason of a `ssmd.subscription` record for a change the exchange refused before
# and took on a later try: capture of `added` begins (of `removed` ends) there.
RETRY = "retry"
RETIRED_SIDS = 1024


def error_code(reply: dict[str, Any]) -> int | None:
    body = reply.get("msg")
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def error_markets(reply: dict[str, Any], markets: tuple[str, ...]) -> tuple[str, ...]:
    """The markets an error is about: the one it names, else all the command's."""
    body = reply.get("msg")
    named = body.get("market_ticker") if isinstance(body, dict) else None
    return (named,) if isinstance(named, str) and named else markets


def reply_markets(reply: dict[str, Any]) -> tuple[str, ...] | None:
    """The sid's full market list in an `update_subscription` `ok`, when it has one."""
    body = reply.get("msg")
    markets = body.get("market_tickers") if isinstance(body, dict) else None
    if isinstance(markets, list) and all(isinstance(m, str) for m in markets):
        return tuple(markets)
    return None


@attrs.frozen
class _Subscribe:
    plan: SubscriptionPlan
    replaces: int | None = None  # the sid a resubscribe replaces
    slot: int | None = None
    reason: str | None = None  # set for a live change: its subscription record's reason
    retried: bool = False  # a retry of a refused subscribe: its success is recorded


@attrs.frozen
class _Unsubscribe:
    sid: int
    slot: int | None = None
    reason: str | None = None  # None: a gap repair's, which its resubscribe records
    channel: str = ""


@attrs.frozen
class _Update:
    """`update_subscription` of one sid: markets added or deleted."""

    slot: int
    channel: str
    sid: int
    markets: tuple[str, ...]
    add: bool
    reason: str
    ops: tuple[int, ...] = ()  # an add's: the planner op that placed each market
