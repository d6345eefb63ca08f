"""The fault suite's own judge, `compare_records`, on small hand-made archives: every
connection that lost frames must be marked by a discontinuity record of its own window,
including a connection that lost every frame (nothing of it archived)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.faults.harness import CLEAN_STOP, canonical_frame, compare_records

Sent = list[tuple[int, tuple[str, Any]]]


def frame(n: int) -> dict[str, Any]:
    return {"type": "trade", "sid": 1, "msg": {"trade_id": f"t{n}"}}


class Tape:
    """What the exchange sent per session, and the archive ssmd made of it."""

    def __init__(self) -> None:
        self.sent: Sent = []
        self.records: list[dict[str, Any]] = []
        self.n = 0

    def send(self, session: int, count: int, archived: int) -> None:
        """`count` frames sent on `session`, the first `archived` of them archived."""
        for i in range(count):
            self.n += 1
            body = frame(self.n)
            self.sent.append((session, canonical_frame(json.dumps(body).encode())))
            if i < archived:
                self.add("prod.kalshi.json.trade.KXA", body)

    def session(self, session: int, count: int, archived: int, end: str | None = None) -> None:
        """A connect record, then `send`, then a disconnect record of reason `end` (none
        if `end` is None)."""
        self.mark("connect")
        self.send(session, count, archived)
        if end is not None:
            self.mark("disconnect", end)

    def mark(self, kind: str, reason: str = "lost") -> None:
        body = {"type": f"ssmd_{kind}", "conn": 0, "ts_ns": 1}
        if kind == "disconnect":
            body["reason"] = reason
        self.add(f"prod.kalshi.json.ssmd.{kind}", body)

    def add(self, subject: str, body: dict[str, Any]) -> None:
        self.records.append({"_seq": len(self.records) + 1, "_subject": subject, **body})


def test_a_session_that_lost_everything_and_is_marked_is_reported_as_lost() -> None:
    tape = Tape()
    tape.session(1, 5, archived=5, end="lost")
    tape.session(2, 4, archived=0)  # killed before anything of it was published
    tape.session(3, 5, archived=5, end=CLEAN_STOP)
    result = compare_records(tape.records, tape.sent)
    assert result.lost_by_session == {2: 4}
    assert result.archived_by_session == {1: 5, 3: 5}


def test_the_last_session_losing_everything_with_no_record_is_caught() -> None:
    """Session 1 ended cleanly; session 2 got frames and none of it, not even its
    connect record, reached the archive: a loss with no mark, which must be reported."""
    tape = Tape()
    tape.session(1, 5, archived=5)
    tape.send(2, 3, archived=0)
    with pytest.raises(AssertionError, match="session 2 lost 3 of 3 frames with no discontinuity"):
        compare_records(tape.records, tape.sent)


def test_a_lost_session_followed_by_its_own_clean_stop_is_caught() -> None:
    tape = Tape()
    tape.session(1, 5, archived=5, end=CLEAN_STOP)
    tape.session(2, 3, archived=0, end=CLEAN_STOP)  # claims everything of session 2 was delivered
    with pytest.raises(AssertionError, match="session 2 lost 3 of 3 frames but a clean stop"):
        compare_records(tape.records, tape.sent)


def test_a_lost_tail_needs_a_connect_record_and_no_clean_stop() -> None:
    """A regression test of two older rules for a session that lost its tail: a later
    session's data needs a connect record between them, and the earlier session's own
    record may not claim a clean stop."""
    tape = Tape()
    tape.session(1, 5, archived=3)
    tape.send(2, 5, archived=5)  # no record between the sessions
    tape.mark("disconnect")
    with pytest.raises(AssertionError, match="follows session 1 with no connect record"):
        compare_records(tape.records, tape.sent)
    tape = Tape()
    tape.session(1, 5, archived=3, end=CLEAN_STOP)
    tape.session(2, 5, archived=5)
    with pytest.raises(AssertionError, match="session 1 lost 2 of 5 frames but claims a clean"):
        compare_records(tape.records, tape.sent)


def test_a_clean_stop_before_a_lost_sessions_connect_belongs_to_the_earlier_session() -> None:
    """Session 1 stopped cleanly; session 2 connected, lost every frame and its
    disconnect says so. The clean stop comes before session 2's connect record: it is
    session 1's, true of session 1, and no claim about session 2."""
    tape = Tape()
    tape.session(1, 5, archived=5, end=CLEAN_STOP)
    tape.session(2, 3, archived=0, end="ConnectionLost: killed")
    result = compare_records(tape.records, tape.sent)
    assert result.lost_by_session == {2: 3}
    assert result.archived_by_session == {1: 5}
