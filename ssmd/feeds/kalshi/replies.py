"""What a Kalshi session remembers of each command until its reply, and how it reads
the replies: error codes (kalshi-ws.md), the markets an error names, an `ok`'s list."""

from __future__ import annotations

from typing import Any

import attrs

from ssmd.connector.shards import SubscriptionPlan

ERROR_ALREADY_SUBSCRIBED = 6
ERROR_UNKNOWN_SID = 7  # the exchange knows no such subscription (any more)
ERROR_UNKNOWN_CHANNEL = 8
ERROR_AUTH_REQUIRED = 9
ERROR_CHANNEL = 10  # channel error: the subscription is dead
ERROR_ONE_SID = 12
ERROR_UNSUPPORTED_ACTION = 13
ERROR_MARKET_REQUIRED = 14  # no (usable) market ticker in the command
ERROR_ACTION_REQUIRED = 15
ERROR_MARKET_NOT_FOUND = 16
ERROR_INTERNAL = 17  # the subscription is dead
ERROR_COMMAND_TIMEOUT = 18  # server side: retry
ERROR_BUFFER_OVERFLOW = 25  # the exchange dropped a subscription: data lost
ERROR_MARKET_LIMIT = 26  # too many markets on one subscription
ERROR_TOO_MANY_REQUESTS = 27  # per-subscription command rate
# Errors that say the sid may be dead (kalshi-ws.md: 10 and 17 are terminal). Only 7 (no
# such sid) proves it: after a 10 or 17 the sid is unsubscribed before it is subscribed
# again, so one still streaming is never doubled.
SID_ENDED_ERRORS = frozenset({ERROR_UNKNOWN_SID, ERROR_CHANNEL, ERROR_INTERNAL})
SID_DEAD_ERRORS = frozenset({ERROR_CHANNEL, ERROR_INTERNAL})
# Errors that are worth retrying as they are (the exchange's rate or a server timeout);
# any other refusal of an add or subscribe is counted, and after REFUSALS_TO_SPLIT (or at
# once for a "client bug" code) the command is split, a market refused alone dropped.
RETRY_ERRORS = frozenset({ERROR_COMMAND_TIMEOUT, ERROR_TOO_MANY_REQUESTS})
CLIENT_BUG_ERRORS = frozenset(
    {
        ERROR_ALREADY_SUBSCRIBED,
        ERROR_UNKNOWN_CHANNEL,
        ERROR_AUTH_REQUIRED,
        ERROR_ONE_SID,
        ERROR_UNSUPPORTED_ACTION,
        ERROR_ACTION_REQUIRED,
    }
)
REFUSALS_TO_SPLIT = 3
# An unsubscribe answered 10 or 17 this many times is taken at the reference's word: dead.
DEAD_UNSUBSCRIBE_TRIES = 3
# Errors that name markets the exchange will never take: they leave the wanted set.
UNKNOWN_MARKET_ERRORS = frozenset({ERROR_MARKET_REQUIRED, ERROR_MARKET_NOT_FOUND})
# The reason of a `ssmd.subscription` record for a change the exchange refused before
# and took on a later try: capture of `added` begins (of `removed` ends) there.
RETRY = "retry"
# The reason of a `ssmd.subscription` record for what a reconnect's subscribe added or
# dropped against what the last sid of its slot had confirmed.
RECONNECT = "reconnect"
# The reason of a market dropped because `ok` replies kept leaving it out of the sid.
OMITTED = "omitted"
RETIRED_SIDS = 1024


def error_code(reply: dict[str, Any]) -> int | None:
    body = reply.get("msg")
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def error_markets(reply: dict[str, Any], markets: tuple[str, ...]) -> tuple[str, ...]:
    """The markets an error is about: the command's market it names; else, for a command
    of one market, that one; else none (which of them it is about is unknown)."""
    body = reply.get("msg")
    named = body.get("market_ticker") if isinstance(body, dict) else None
    if isinstance(named, str) and named in markets:
        return (named,)
    return markets if len(markets) == 1 else ()


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
    # A reconnect's subscribe: what the slot's last sid had confirmed, so the reply
    # records what the reconnect adds and drops.
    before: tuple[str, ...] | None = None


@attrs.frozen
class _Unsubscribe:
    sid: int
    slot: int | None = None
    reason: str | None = None  # None: a gap repair's, which its resubscribe records
    channel: str = ""
    repair: int | None = None  # a gap repair's: the slot subscribed once the sid is gone
    dead: int = 0  # times answered 10/17


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
