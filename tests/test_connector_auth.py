"""Credentials from the environment, and the handshake signature."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from ssmd.connector.auth import load_credentials
from ssmd.connector.shards import SubscriptionPlan, plan_connections
from ssmd.feeds.kalshi.session import subscribe_params
from ssmd.supervisor import StartupRefused
from tests.keys import API_KEY, pem, private_key


@pytest.mark.parametrize("pkcs1", [False, True])
def test_signature_verifies_with_the_public_key(pkcs1: bool) -> None:
    text = pem(private_key(), pkcs1=pkcs1)
    assert ("BEGIN RSA PRIVATE KEY" in text) == pkcs1
    creds = load_credentials({"KALSHI_API_KEY": API_KEY, "KALSHI_PRIVATE_KEY": text})
    headers = dict(creds.handshake_headers("wss://x.example/trade-api/ws/v2?a=1", 1732579880123))
    assert headers["KALSHI-ACCESS-KEY"] == API_KEY
    assert headers["KALSHI-ACCESS-TIMESTAMP"] == "1732579880123"
    private_key().public_key().verify(
        base64.b64decode(headers["KALSHI-ACCESS-SIGNATURE"]),
        b"1732579880123GET/trade-api/ws/v2",
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )
    assert "BEGIN" not in repr(creds) and "hidden" in repr(creds)


def test_key_with_escaped_newlines_is_accepted() -> None:
    text = pem(private_key()).replace("\n", "\\n")
    load_credentials({"KALSHI_API_KEY": API_KEY, "KALSHI_PRIVATE_KEY": text})


def test_key_file_world_readable_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key_file = tmp_path / "kalshi.pem"
    key_file.write_text(pem(private_key()))
    key_file.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        load_credentials({"KALSHI_API_KEY": API_KEY, "KALSHI_PRIVATE_KEY_PATH": str(key_file)})
    assert not caplog.records
    key_file.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        load_credentials({"KALSHI_API_KEY": API_KEY, "KALSHI_PRIVATE_KEY_PATH": str(key_file)})
    assert "world-readable" in caplog.text
    assert "PRIVATE KEY" not in caplog.text


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "KALSHI_API_KEY is not set"),
        ({"KALSHI_API_KEY": API_KEY}, "neither KALSHI_PRIVATE_KEY nor KALSHI_PRIVATE_KEY_PATH"),
        (
            {
                "KALSHI_API_KEY": API_KEY,
                "KALSHI_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\nsecretstuff\n",
            },
            "KALSHI_PRIVATE_KEY is not an unencrypted RSA private key",
        ),
        (
            {"KALSHI_API_KEY": API_KEY, "KALSHI_PRIVATE_KEY_PATH": "/nonexistent/key.pem"},
            "cannot read KALSHI_PRIVATE_KEY_PATH=/nonexistent/key.pem",
        ),
    ],
)
def test_bad_credentials_refuse_without_key_material(environ: dict[str, str], message: str) -> None:
    with pytest.raises(StartupRefused, match=message) as info:
        load_credentials(environ)
    assert "secretstuff" not in str(info.value)


def test_markets_split_into_subscriptions_and_connections() -> None:
    markets = [f"M{i}" for i in range(450)]
    shards = plan_connections(["trade", "orderbook_delta"], markets, 200, 300)
    assert [len(s) for s in shards] == [4, 2]
    assert [len(p.markets) for p in shards[0]] == [200, 100, 200, 100]
    assert [len(p.markets) for p in shards[1]] == [150, 150]
    for channel in ("trade", "orderbook_delta"):
        covered = [m for shard in shards for p in shard if p.channel == channel for m in p.markets]
        assert covered == markets
    assert plan_connections(["ticker", "trade"], [], 200, 300) == [
        [SubscriptionPlan("ticker"), SubscriptionPlan("trade")]
    ]
    assert subscribe_params(SubscriptionPlan("trade", ("A",))) == {
        "channels": ["trade"],
        "market_tickers": ["A"],
    }
