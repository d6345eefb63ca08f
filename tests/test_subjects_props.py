"""Property tests for ticker encoding: reversible, and never an unsafe subject token."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ssmd.subjects import decode_token, discontinuity_subject, encode_token, fallback_subject

UNSAFE = set(".*> \t\r\n\x00")


@given(st.text(min_size=1))
def test_encoding_round_trips(text: str) -> None:
    assert decode_token(encode_token(text)) == text


@given(st.text(min_size=1))
def test_encoded_token_is_one_safe_printable_ascii_token(text: str) -> None:
    token = encode_token(text)
    assert token
    assert not UNSAFE & set(token)
    assert all(" " < ch < "\x7f" for ch in token)


@given(st.text(alphabet=st.characters(codec="ascii"), min_size=1))
def test_safe_characters_are_left_alone(text: str) -> None:
    if all(" " < ch < "\x7f" and ch not in ".*>%" for ch in text):
        assert encode_token(text) == text


@given(st.text(min_size=1), st.text(min_size=1))
def test_distinct_tickers_get_distinct_tokens(a: str, b: str) -> None:
    if a != b:
        assert encode_token(a) != encode_token(b)


def test_examples() -> None:
    assert encode_token("KXBTCD-26MAR1213-T69499.99") == "KXBTCD-26MAR1213-T69499%2E99"
    assert encode_token("a*b>c%d e") == "a%2Ab%3Ec%25d%20e"
    assert encode_token("é") == "%C3%A9"
    assert discontinuity_subject("prod", "kalshi", "gap") == "prod.kalshi.json.ssmd.gap"
    assert fallback_subject("prod", "kalshi", None) == "prod.kalshi.json.unrouted.invalid"
    assert fallback_subject("prod", "kalshi", "new.type") == "prod.kalshi.json.unrouted.new%2Etype"
