"""`ssmd data cat kalshi DATE --type market`: the market catalogue records discovery
publishes come back from an archive the archiver wrote (review of issue 9, finding 7)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ssmd.archiver.fetcher import Batch
from ssmd.cli.main import main
from ssmd.nats.types import FetchedMessage
from tests.archive_harness import batch, utc_ns, write_archive

DAY = "2026-01-05"
DOT = "KXBTCD-26MAR1213-T69499.99"  # a ticker with a dot: %2E in its subject token

MARKETS = [
    {"ticker": "KXINX-26JAN05-B6000", "event_ticker": "KXINX-26JAN05", "title": "S&P 6000?"},
    {"ticker": DOT, "event_ticker": "KXBTCD-26MAR1213", "title": "Bitcoin above 69,500?"},
    # The same market again, later in the day: what it is changed.
    {"ticker": DOT, "event_ticker": "KXBTCD-26MAR1213", "title": "Bitcoin above $69,500?"},
]
EVENT = {"event_ticker": "KXINX-26JAN05", "title": "S&P 500 on Jan 5", "category": "Financials"}


def catalogue_message(seq: int, kind: str, key: str, obj: dict[str, Any]) -> FetchedMessage:
    """What Discovery publishes: the REST object as it came, on json.{market|event}.{key}."""
    return FetchedMessage(
        subject=f"prod.kalshi.json.{kind}.{key.replace('.', '%2E')}",
        data=json.dumps(obj, separators=(",", ":")).encode(),
        stream_seq=seq,
        consumer_seq=seq,
        delivered=1,
        recv_ns=1_700_000_000_000_000_000 + seq,
        reply=f"ack.{seq}",
    )


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    first = [
        catalogue_message(11, "market", MARKETS[0]["ticker"], MARKETS[0]),
        catalogue_message(12, "market", DOT, MARKETS[1]),
        catalogue_message(13, "event", EVENT["event_ticker"], EVENT),
    ]
    later = [catalogue_message(14, "market", DOT, MARKETS[2])]
    write_archive(
        tmp_path,
        utc_ns(2026, 1, 5, 11, 58),
        batch(1, 10, ticker="KXINX-26JAN05-B6000", kind="ticker"),
        Batch(first, first[-1].reply),
        900,  # the next file
        Batch(later, later[-1].reply),
    )
    return tmp_path


def cat(capsys: pytest.CaptureFixture[str], archive: Path, *args: str) -> list[Any]:
    code = main(["data", "cat", "kalshi", DAY, "--path", str(archive), *args])
    out = capsys.readouterr().out
    assert code == 0
    return [json.loads(line) for line in out.splitlines()]


def test_cat_type_market_gives_back_every_catalogue_record_of_the_day(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = cat(capsys, archive, "--type", "market")
    assert [r["_seq"] for r in records] == [11, 12, 14]
    assert [r["_subject"] for r in records] == [
        "prod.kalshi.json.market.KXINX-26JAN05-B6000",
        "prod.kalshi.json.market.KXBTCD-26MAR1213-T69499%2E99",
        "prod.kalshi.json.market.KXBTCD-26MAR1213-T69499%2E99",
    ]
    # The objects come back exactly as REST gave them.
    assert cat(capsys, archive, "--type", "market", "--strip-meta") == MARKETS


def test_cat_one_market_shows_what_it_was_through_the_day(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = cat(capsys, archive, "--type", "market", "--ticker", DOT, "--strip-meta")
    assert [r["title"] for r in records] == ["Bitcoin above 69,500?", "Bitcoin above $69,500?"]
    assert cat(capsys, archive, "--type", "event", "--strip-meta") == [EVENT]
    assert len(cat(capsys, archive, "--type", "ticker")) == 10
