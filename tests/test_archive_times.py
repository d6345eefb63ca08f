"""`--at` and friends: an epoch number's unit is told by its digits, never guessed wrong."""

from __future__ import annotations

import pytest

from ssmd.archive.errors import ArchiveError
from ssmd.archive.times import parse_time

NOON = 1_767_614_400_000_000_000  # 2026-01-05T12:00:00Z


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1767614400", NOON),
        ("1767614400.5", NOON + 500_000_000),
        ("1767614400.123456789", NOON + 123_456_789),  # exact: no float rounding
        ("1767614400123", NOON + 123_000_000),  # milliseconds
        ("1767614400123456", NOON + 123_456_000),  # microseconds
        ("1767614400123456789", NOON + 123_456_789),  # nanoseconds
        ("2026-01-05T12:00:00.25Z", NOON + 250_000_000),
        ("12:00", NOON),
    ],
)
def test_epoch_numbers_are_read_in_the_unit_their_digits_say(text: str, ns: int) -> None:
    assert parse_time(text, "2026-01-05") == ns


@pytest.mark.parametrize(
    "text", ["176761440012", "17676144001234", "176761440012345", "1767614400123.5", "inf", "nan"]
)
def test_ambiguous_or_non_finite_numbers_are_refused(text: str) -> None:
    with pytest.raises(ArchiveError, match="cannot read time"):
        parse_time(text)
