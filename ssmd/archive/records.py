"""One archived message as a value: its stream position, subject, receive time and payload."""

from __future__ import annotations

import base64
import calendar
import functools
import json
import re
from decimal import Decimal
from typing import Any

from ssmd.archive.errors import ArchiveCorrupt
from ssmd.archiver.lines import PREFIX, read_prefix
from ssmd.subjects import split_subject


class Record:
    """An archive line. `market` is the subject's routing key, decoded (a Kalshi ticker, a
    Polymarket condition id, a Kraken symbol); None on ssmd's own and unrouted subjects.
    `late`: a trade backfill record read from the next day's files because its window
    overlaps the range asked for (see ssmd.archive.late)."""

    __slots__ = (
        "_payload",
        "late",
        "line",
        "market",
        "recv_ns",
        "seq",
        "subject",
        "type_token",
        "where",
    )

    def __init__(
        self,
        seq: int,
        subject: str,
        recv_ns: int | None,
        line: bytes,
        where: str = "archive",
        late: bool = False,
    ) -> None:
        self.where = where
        self.late = late
        self.seq = seq
        self.subject = subject
        self.recv_ns = recv_ns
        self.line = line
        self.type_token, self.market = _split(subject)
        self._payload: Any = _UNSET

    @classmethod
    def from_line(cls, line: bytes, where: str = "archive", late: bool = False) -> Record:
        prefix = read_prefix(line)
        if prefix is None:
            raise ArchiveCorrupt(f"{where}: not an ssmd archive line: {line[:80]!r}")
        return cls(prefix[0], prefix[1], prefix[2], line, where, late)

    @property
    def feed(self) -> str:
        parts = self.subject.split(".", 2)
        return parts[1] if len(parts) > 1 else ""

    @property
    def backfilled(self) -> bool:
        """True for a message fetched from the venue's REST API after a loss (`_backfilled`)."""
        match = PREFIX.match(self.line)
        return match is not None and match.group(4) is not None

    def payload(self, exact: bool = True) -> Any:
        """The original payload's JSON value; bytes for a payload that was not UTF-8.
        `exact`: numbers with a point as Decimal, so no price is ever rounded (else
        float, faster, for tables that hold float64 anyway). The first call decides."""
        if self._payload is _UNSET:
            try:
                record = (
                    json.loads(self.line, parse_float=Decimal) if exact else json.loads(self.line)
                )
            except ValueError as exc:
                raise ArchiveCorrupt(
                    f"{self.where}: the line of seq {self.seq} is not valid JSON: {exc}"
                ) from None
            if "_raw" in record:
                self._payload = record["_raw"]
            elif "_raw_b64" in record:
                self._payload = base64.b64decode(record["_raw_b64"])
            else:
                self._payload = {k: v for k, v in record.items() if not k.startswith("_")}
        return self._payload

    def payload_json(self) -> str:
        """The payload as JSON text, as archived (a payload that was not JSON as a JSON
        string of its text, or of its base64 when it was not UTF-8)."""
        kind, body = self._archived()
        if kind == "b64":
            return json.dumps(base64.b64encode(body).decode())
        if kind == "text":
            return json.dumps(body.decode(), ensure_ascii=False)
        return body.decode()

    def payload_bytes(self) -> bytes:
        """The bytes to publish again: the payload as archived, without ssmd's keys."""
        return self._archived()[1]

    def _archived(self) -> tuple[str, bytes]:
        """("object" | "json" | "text" | "b64", the payload's bytes), cut from the line
        so numbers, order and spacing stay as the venue sent them."""
        match = PREFIX.match(self.line)
        if match is None:
            raise ArchiveCorrupt(f"{self.where}: not an ssmd archive line: {self.line[:80]!r}")
        rest = self.line[match.end() :].rstrip(b"\n")
        if rest.startswith(_RAW_B64):
            value = self.payload()
            assert isinstance(value, bytes)
            return "b64", value
        if rest.startswith(_RAW):
            raw = rest[len(_RAW) : -1]
            if raw.startswith(b'"'):
                text = self.payload()
                if isinstance(text, str) and not _is_json(text):
                    return "text", text.encode()  # a payload that was not JSON
            return "json", raw
        return "object", b"{}" if rest == b"}" else b"{" + rest[1:]

    def __repr__(self) -> str:
        return f"Record(seq={self.seq}, subject={self.subject!r}, recv_ns={self.recv_ns})"


_UNSET: Any = object()
_RAW = b',"_raw":'
_RAW_B64 = b',"_raw_b64":'
_split = functools.lru_cache(maxsize=1 << 16)(split_subject)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def iso_ns(text: str) -> int | None:
    """Nanoseconds from an RFC 3339 UTC timestamp (`2026-01-05T12:00:00.123456Z`)."""
    match = _RFC3339.match(text)
    if match is None:
        return None
    date, hhmmss, frac, zone = match.groups()
    seconds = calendar.timegm(
        (int(date[0:4]), int(date[5:7]), int(date[8:10]), *map(int, hhmmss.split(":")), 0, 0, 0)
    )
    ns = seconds * 1_000_000_000 + int((frac or "").ljust(9, "0")[:9] or 0)
    if zone and zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        ns -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60) * 1_000_000_000
    return ns


_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:\d{2})?$"
)
