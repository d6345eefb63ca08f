"""Split the configured channels and markets into subscriptions and connections."""

from __future__ import annotations

import attrs


@attrs.frozen
class SubscriptionPlan:
    """One subscription: a channel and its markets (empty: all markets); each venue
    turns it into its own subscribe command."""

    channel: str
    markets: tuple[str, ...] = ()


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def plan_connections(
    channels: list[str],
    markets: list[str],
    markets_per_subscription: int,
    markets_per_connection: int,
) -> list[list[SubscriptionPlan]]:
    """Subscriptions grouped by connection.

    With no markets, one connection subscribes every channel for all markets. Otherwise
    the markets are split into connections of at most `markets_per_connection`, and on
    each connection every channel gets subscriptions of at most
    `markets_per_subscription` markets.
    """
    unique_channels = list(dict.fromkeys(channels))
    unique_markets = list(dict.fromkeys(markets))
    if not unique_markets:
        return [[SubscriptionPlan(channel) for channel in unique_channels]]
    per_connection = max(markets_per_connection, 1)
    per_subscription = max(min(markets_per_subscription, per_connection), 1)
    connections: list[list[SubscriptionPlan]] = []
    for connection_markets in _chunks(unique_markets, per_connection):
        connections.append(
            [
                SubscriptionPlan(channel, tuple(chunk))
                for channel in unique_channels
                for chunk in _chunks(connection_markets, per_subscription)
            ]
        )
    return connections
