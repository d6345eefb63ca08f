"""Polymarket's Gamma REST API: resolve configured condition ids to their CLOB token ids.

`GET {base}/markets/keyset?condition_ids=...` (at most 100 ids a request, repeated
parameters; the offset-paged `/markets` list is sunset) lists each market under
`markets` with `conditionId` and `clobTokenIds`, a string holding a JSON array (a real
array is accepted too; so is a bare JSON list of markets). Transient failures
(connection errors, 429, 5xx, a body without a market list) are retried with backoff a
few times, then reported as
`StartupUnavailable` (the connector retries in the background); a definitive answer
(another 4xx, an id Gamma does not know) refuses the start with one line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import httpx

from ssmd.backoff import Backoff
from ssmd.feeds.polymarket_source import GAMMA_URL, token_ids
from ssmd.supervisor import StartupRefused, StartupUnavailable

__all__ = ["GAMMA_URL", "resolve_token_ids", "token_ids"]

log = logging.getLogger("ssmd.connector.polymarket")

MARKETS_PATH = "/markets/keyset"
IDS_PER_REQUEST = 100
ATTEMPTS = 5
RETRY = Backoff(0.5, 8.0, jitter=0.5)
TIMEOUT_S = 15.0


async def _get(client: httpx.AsyncClient, params: dict[str, Any]) -> list[dict[str, Any]]:
    retry = RETRY.retry()
    for attempt in range(1, ATTEMPTS + 1):
        problem: str
        try:
            response = await client.get(MARKETS_PATH, params=params)
        except httpx.TransportError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                try:
                    body = response.json()
                except ValueError:
                    body = None
                if isinstance(body, dict):
                    body = body.get("markets")
                if isinstance(body, list):
                    return [m for m in body if isinstance(m, dict)]
                problem = "HTTP 200 whose body holds no market list"
            else:
                problem = f"HTTP {response.status_code}"
                if response.status_code != 429 and response.status_code < 500:
                    raise StartupRefused(f"Gamma API {client.base_url}{MARKETS_PATH}: {problem}")
        if attempt < ATTEMPTS:
            delay = await retry.wait()
            log.warning("Gamma API: %s; retrying in %.1fs", problem, delay)
    raise StartupUnavailable(f"Gamma API {client.base_url}{MARKETS_PATH}: {problem}")


async def resolve_token_ids(
    base_url: str,
    condition_ids: Sequence[str],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[str]:
    """Every token id of the given markets, market by market in the order given."""
    wanted = list(dict.fromkeys(condition_ids))
    found: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(
        base_url=base_url, timeout=TIMEOUT_S, transport=transport
    ) as client:
        for start in range(0, len(wanted), IDS_PER_REQUEST):
            chunk = wanted[start : start + IDS_PER_REQUEST]
            params = {"condition_ids": chunk, "limit": len(chunk)}
            for market in await _get(client, params):
                condition_id = market.get("conditionId")
                if isinstance(condition_id, str) and condition_id in chunk:
                    found[condition_id] = market
    missing = [c for c in wanted if c not in found or not token_ids(found[c])]
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise StartupRefused(
            f"connector.markets: Gamma API ({base_url}) has no CLOB market for condition id(s) {shown}"
        )
    tokens: list[str] = []
    for condition_id in wanted:
        market = found[condition_id]
        if market.get("closed") is True or market.get("active") is False:
            log.warning(
                "Polymarket market %s is closed or inactive: it may send nothing", condition_id
            )
        tokens += token_ids(market)
    log.info("Gamma API: %d markets -> %d token ids", len(wanted), len(tokens))
    return list(dict.fromkeys(tokens))
