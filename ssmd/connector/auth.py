"""Kalshi API credentials from the environment, and the RSA-PSS handshake signature.

Key material never appears in a log line, an exception message or a repr.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import attrs
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ssmd.supervisor import StartupRefused

log = logging.getLogger("ssmd.connector.auth")

API_KEY_VAR = "KALSHI_API_KEY"
PRIVATE_KEY_VAR = "KALSHI_PRIVATE_KEY"
PRIVATE_KEY_PATH_VAR = "KALSHI_PRIVATE_KEY_PATH"

KEY_HEADER = "KALSHI-ACCESS-KEY"
TIMESTAMP_HEADER = "KALSHI-ACCESS-TIMESTAMP"
SIGNATURE_HEADER = "KALSHI-ACCESS-SIGNATURE"

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


@attrs.frozen(repr=False)
class Credentials:
    api_key: str
    private_key: rsa.RSAPrivateKey = attrs.field(eq=False)

    def __repr__(self) -> str:
        return f"Credentials(api_key={self.api_key_hint!r}, private_key=<hidden>)"

    @property
    def api_key_hint(self) -> str:
        """Enough of the key id to recognise it in a message."""
        return self.api_key[:8] + "…" if len(self.api_key) > 8 else self.api_key

    def sign(self, timestamp_ms: int, method: str, path: str) -> str:
        """Base64 RSA-PSS/SHA-256 signature over `timestamp_ms + method + path`."""
        message = f"{timestamp_ms}{method}{path}".encode()
        return base64.b64encode(self.private_key.sign(message, _PSS, hashes.SHA256())).decode()

    def handshake_headers(self, url: str, timestamp_ms: int | None = None) -> list[tuple[str, str]]:
        """The three authentication headers for a WebSocket upgrade to `url`."""
        return self.request_headers("GET", urlsplit(url).path or "/", timestamp_ms)

    def request_headers(
        self, method: str, path: str, timestamp_ms: int | None = None
    ) -> list[tuple[str, str]]:
        """The three authentication headers for one request; `path` without the query."""
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        return [
            (KEY_HEADER, self.api_key),
            (TIMESTAMP_HEADER, str(ts)),
            (SIGNATURE_HEADER, self.sign(ts, method, path)),
        ]


def _read_key_file(path: str) -> bytes:
    try:
        mode = os.stat(path).st_mode
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StartupRefused(
            f"cannot read {PRIVATE_KEY_PATH_VAR}={path}: {exc.strerror or type(exc).__name__}"
        ) from None
    if mode & stat.S_IROTH:
        log.warning(
            "private key file %s is world-readable; restrict it with: chmod 600 %s", path, path
        )
    return data


def _parse_private_key(pem: bytes, source: str) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise StartupRefused(
            f"{source} is not an unencrypted RSA private key in PEM form (PKCS#1 or PKCS#8)"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise StartupRefused(f"{source} holds a private key that is not RSA")
    return key


def load_credentials(environ: Mapping[str, str]) -> Credentials:
    """Credentials from KALSHI_API_KEY and KALSHI_PRIVATE_KEY or KALSHI_PRIVATE_KEY_PATH.

    Raises StartupRefused with a one-line reason that never contains key material.
    """
    api_key = environ.get(API_KEY_VAR, "").strip()
    if not api_key:
        raise StartupRefused(
            f"{API_KEY_VAR} is not set; the connector needs Kalshi API credentials"
        )
    pem_text = environ.get(PRIVATE_KEY_VAR, "").strip()
    key_path = environ.get(PRIVATE_KEY_PATH_VAR, "").strip()
    if pem_text:
        if "\n" not in pem_text and "\\n" in pem_text:
            pem_text = pem_text.replace("\\n", "\n")
        key = _parse_private_key(pem_text.encode("utf-8", "replace"), PRIVATE_KEY_VAR)
    elif key_path:
        key = _parse_private_key(_read_key_file(key_path), f"{PRIVATE_KEY_PATH_VAR}={key_path}")
    else:
        raise StartupRefused(
            f"neither {PRIVATE_KEY_VAR} nor {PRIVATE_KEY_PATH_VAR} is set; "
            "the connector needs the Kalshi RSA private key"
        )
    return Credentials(api_key=api_key, private_key=key)
