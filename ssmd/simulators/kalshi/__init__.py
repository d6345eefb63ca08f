"""The simulated Kalshi exchange, shared by the demo, the tests, the fault suite and the
benchmarks.

- `KalshiExchange` (exchange.py): the signed WebSocket protocol with its fault switches
  (seq breaks, garbage, drop, silence, refused channels, muted commands); tests script
  what it sends.
- `MarketExchange` (market.py): the demo's realistic market stream, pings, periodic
  drops and one deliberate seq gap.
- `paced` (paced.py): numbered messages at a fixed rate, every frame logged, driven over
  stdin; run as a process by the fault suite and the soak test.
- `KalshiRest`, `KalshiMarkets` (rest.py): the REST API (`/markets`, `/events`,
  `/markets/trades`) over the market catalogue that the WebSocket side shares when
  given it (`catalogue=`): `open_markets`/`settle_markets` change both, with lifecycle
  events on the WebSocket.
- `raw` (raw.py): pre-encoded frames over a raw socket, for the benchmarks.
"""

from ssmd.simulators.kalshi.exchange import (
    WS_PATH,
    ExchangeSession,
    ExchangeStats,
    KalshiExchange,
    Subscription,
    check_handshake,
)
from ssmd.simulators.kalshi.market import MarketExchange, SeqGap, simulated_markets
from ssmd.simulators.kalshi.paced import ticker_msg, trade_msg
from ssmd.simulators.kalshi.rest import KalshiMarkets, KalshiRest

# The demo's name for the market exchange.
SimulatedExchange = MarketExchange

__all__ = [
    "WS_PATH",
    "ExchangeSession",
    "ExchangeStats",
    "KalshiExchange",
    "KalshiMarkets",
    "KalshiRest",
    "MarketExchange",
    "SeqGap",
    "SimulatedExchange",
    "Subscription",
    "check_handshake",
    "simulated_markets",
    "ticker_msg",
    "trade_msg",
]
