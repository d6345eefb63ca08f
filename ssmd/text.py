"""Byte-level text checks shared by the connector's router and the archiver's lines."""

from __future__ import annotations


def is_utf8(payload: bytes) -> bool:
    """Whether `payload` decodes as UTF-8 (msgspec accepts some bytes that do not)."""
    if payload.isascii():
        return True
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
