"""NATS subjects: building them, encoding tickers into tokens, and matching filters.

Market data lives on `{env}.{feed}.json.{type}.{ticker}`. Two reserved type tokens sit
beside the exchange's types under the same prefix, so the standard archiver filter
`{env}.{feed}.json.>` keeps them:

- `{env}.{feed}.json.ssmd.{kind}`: ssmd's own discontinuity records (connect,
  disconnect, gap, resubscribe, overflow).
- `{env}.{feed}.json.unrouted.{type}`: exchange messages that cannot be routed (not
  JSON, no routing key); `{type}` is the encoded type or `invalid`.
"""

from __future__ import annotations

DISCONTINUITY_TYPE = "ssmd"
FALLBACK_TYPE = "unrouted"
RESERVED_TYPES = frozenset({DISCONTINUITY_TYPE, FALLBACK_TYPE})

_HEX = "0123456789ABCDEF"
_UNSAFE_ASCII = frozenset(".*>%")


def _safe_char(ch: str) -> bool:
    return " " < ch < "\x7f" and ch not in _UNSAFE_ASCII


def encode_token(text: str) -> str:
    """Percent-encode `text` into one safe NATS subject token, reversibly.

    `.`, `*`, `>`, `%`, whitespace, control and non-ASCII characters become `%XX`
    (UTF-8 bytes). An empty string has no token and raises ValueError.
    """
    if not text:
        raise ValueError("an empty string cannot be a subject token")
    if all(_safe_char(ch) for ch in text):
        return text
    out: list[str] = []
    for ch in text:
        if _safe_char(ch):
            out.append(ch)
        else:
            for byte in ch.encode("utf-8", "surrogatepass"):
                out.append("%" + _HEX[byte >> 4] + _HEX[byte & 15])
    return "".join(out)


def decode_token(token: str) -> str:
    """Reverse `encode_token`. Raises ValueError on a malformed escape."""
    if "%" not in token:
        return token
    raw = bytearray()
    i = 0
    while i < len(token):
        ch = token[i]
        if ch == "%":
            pair = token[i + 1 : i + 3]
            if len(pair) != 2 or any(c not in "0123456789abcdefABCDEF" for c in pair):
                raise ValueError(f"malformed escape in subject token {token!r}")
            raw.append(int(pair, 16))
            i += 3
        else:
            raw.extend(ch.encode("utf-8", "surrogatepass"))
            i += 1
    return raw.decode("utf-8", "surrogatepass")


def feed_prefix(env: str, feed: str) -> str:
    return f"{env}.{feed}.json"


def market_subject(env: str, feed: str, type_token: str, ticker: str) -> str:
    return f"{env}.{feed}.json.{type_token}.{encode_token(ticker)}"


def split_subject(subject: str) -> tuple[str, str | None]:
    """(type token, decoded ticker or None) of a `{env}.{feed}.json.{type}.{key}` subject.

    Reserved types (`ssmd`, `unrouted`) carry no ticker. Subjects of other shapes give
    their fourth token (or `?`) and no ticker; this never raises.
    """
    parts = subject.split(".", 4)
    if len(parts) < 4:
        return "?", None
    type_token = parts[3]
    if len(parts) < 5 or type_token in RESERVED_TYPES:
        return type_token, None
    try:
        return type_token, decode_token(parts[4])
    except ValueError:
        return type_token, parts[4]


def _tokens(pattern: str) -> list[str]:
    return pattern.split(".")


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a literal `subject` matches the NATS `pattern`."""
    pat = _tokens(pattern)
    sub = _tokens(subject)
    for i, token in enumerate(pat):
        if token == ">":
            return len(sub) > i
        if i >= len(sub):
            return False
        if token != "*" and token != sub[i]:
            return False
    return len(pat) == len(sub)


def patterns_intersect(a: str, b: str) -> bool:
    """Whether some literal subject matches both patterns."""
    ta, tb = _tokens(a), _tokens(b)
    for i in range(max(len(ta), len(tb))):
        x = ta[i] if i < len(ta) else None
        y = tb[i] if i < len(tb) else None
        if x == ">" or y == ">":
            return x is not None and y is not None
        if x is None or y is None:
            return False
        if x != "*" and y != "*" and x != y:
            return False
    return True


def pattern_covers(outer: str, inner: str) -> bool:
    """Whether every subject matching `inner` also matches `outer`."""
    to, ti = _tokens(outer), _tokens(inner)
    for i, token in enumerate(to):
        if token == ">":
            return len(ti) > i
        if i >= len(ti):
            return False
        if ti[i] == ">":
            return False
        if token != "*" and (ti[i] == "*" or token != ti[i]):
            return False
    return len(to) == len(ti)


DISCONTINUITY_KINDS = frozenset(
    {
        "connect",
        "disconnect",
        "gap",
        "resubscribe",
        "overflow",
        "rejected",
        "subscribe_error",
        "subscription",
        "backfill",
    }
)
INVALID_TYPE_TOKEN = "invalid"


def discontinuity_subject(env: str, feed: str, kind: str) -> str:
    """`{env}.{feed}.json.ssmd.{kind}`: where ssmd's own discontinuity records go."""
    if kind not in DISCONTINUITY_KINDS:
        raise ValueError(f"unknown discontinuity kind {kind!r}")
    return f"{env}.{feed}.json.{DISCONTINUITY_TYPE}.{kind}"


def fallback_subject(env: str, feed: str, message_type: str | None) -> str:
    """`{env}.{feed}.json.unrouted.{type}` for a message that cannot be routed.

    `{type}` is the encoded exchange type, or `invalid` when there is none.
    """
    token = encode_token(message_type) if message_type else INVALID_TYPE_TOKEN
    return f"{env}.{feed}.json.{FALLBACK_TYPE}.{token}"
