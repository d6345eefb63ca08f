"""Venue modules: one per exchange, `ssmd.feeds.{kind}`, each exposing `VENUE` (see base)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssmd.feeds.base import Venue


class VenueUnavailable(Exception):
    """A configured kind has no venue module in this build."""


def load_venue(kind: str) -> Venue:
    """The `VENUE` of `ssmd.feeds.{kind}`."""
    try:
        module = importlib.import_module(f"ssmd.feeds.{kind}")
    except ModuleNotFoundError as exc:
        if exc.name != f"ssmd.feeds.{kind}":
            raise
        raise VenueUnavailable(f"no venue module ssmd.feeds.{kind} for kind {kind!r}") from None
    venue: Venue = module.VENUE
    return venue
