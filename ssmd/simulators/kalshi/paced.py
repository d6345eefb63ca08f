"""A paced Kalshi exchange in its own process, for the fault-injection suite and soak test.

`python -m ssmd.simulators.kalshi.paced PUBLIC_KEY_PEM SENT_LOG TOTAL RATE` serves the
signed WebSocket protocol of `KalshiExchange` and streams TOTAL numbered messages, at RATE
per second, to whichever connection has subscribed to every channel in `CHANNELS`.
Message `n` (a trade or a ticker, alternating) names `n` in its `trade_id` or
`market_id`, so every frame on the wire is unique. When a connection ends, the numbers
it did not send go to the next one.

Every frame written to a socket is appended to SENT_LOG as `{"s": session, "f": frame}`
(binary frames as `"b": base64`), so the test can compare the archive with exactly what
went out, connection by connection.

The test drives it over stdin, one command per line, one JSON reply per line:
`status`, `drop` (close the TCP connection without a close handshake), `silent`
(black-hole the connection: it stays open, nothing moves), `garbage K` (K frames that
are not JSON, half of them binary), `gap K` (a seq break: the next trade skips K seq
numbers), `pause`, `resume`, `end` (send nothing more: TOTAL becomes what was sent, so
the stream is done), and `quit`.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import IO, Any

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd.simulators.kalshi.exchange import ExchangeSession, KalshiExchange, Subscription

API_KEY = "0d5c8a4e-1111-4222-8333-944455556666"
CHANNELS = ("trade", "ticker")
MARKETS = ["KXBTCD-26MAR1213-T69499.99", "KXHIGHNY-26MAR12-B40.5", "INXD-26MAR12-B5712.5"]
TICK_S = 0.005


def trade_msg(ticker: str, n: int) -> dict[str, Any]:
    """A trade whose `trade_id` names `n`."""
    return {
        "trade_id": f"t-{n:08d}",
        "market_ticker": ticker,
        "yes_price": 40 + n % 50,
        "no_price": 60 - n % 50,
        "yes_price_dollars": "0.4500",
        "no_price_dollars": "0.5500",
        "count": 1 + n % 7,
        "count_fp": f"{1 + n % 7}.00",
        "taker_side": "yes" if n % 2 else "no",
        "ts": 1773331880 + n,
    }


def ticker_msg(ticker: str, n: int) -> dict[str, Any]:
    """A ticker whose `market_id` names `n`."""
    return {
        "market_id": f"2ee2-{n}",
        "market_ticker": ticker,
        "price": 12,
        "yes_bid": 11,
        "yes_ask": 12,
        "price_dollars": "0.1200",
        "volume": 351970 + n,
        "open_interest": 182646,
        "ts": 1732579880 + n,
        "Clock": 6598272994 + n,
    }


def message_for(n: int) -> tuple[str, dict[str, Any]]:
    market = MARKETS[n % len(MARKETS)]
    if n % 2:
        return "trade", trade_msg(market, n)
    return "ticker", ticker_msg(market, n)


def number_of(payload: dict[str, Any]) -> int | None:
    """The message number a data frame carries, from its trade_id or market_id."""
    msg = payload.get("msg")
    if not isinstance(msg, dict):
        return None
    if payload.get("type") == "trade":
        return int(str(msg["trade_id"]).removeprefix("t-"))
    if payload.get("type") == "ticker":
        return int(str(msg["market_id"]).removeprefix("2ee2-"))
    return None


class PacedExchange:
    def __init__(self, public_key: rsa.RSAPublicKey, log: IO[str], total: int, rate: float):
        self.exchange = KalshiExchange(public_key, API_KEY)
        self.exchange.on_subscribe = self._on_subscribe
        self.log = log
        self.total = total
        self.rate = rate
        self.next_n = 1
        self.garbage = 0
        self.paused = False
        self.skip_trade_seq = 0
        self.current: ExchangeSession | None = None
        self.session_ids: dict[int, int] = {}
        self._nursery: trio.Nursery | None = None

    def _session_id(self, session: ExchangeSession) -> int:
        return self.session_ids.setdefault(id(session), len(self.session_ids) + 1)

    async def _on_subscribe(self, session: ExchangeSession, sub: Subscription) -> None:
        active = {s.channel for s in session.subscriptions.values() if s.active}
        if active.issuperset(CHANNELS) and id(session) not in self.session_ids:
            assert self._nursery is not None
            self._session_id(session)
            self._nursery.start_soon(self._stream, session)

    def _record(self, session: ExchangeSession, frame: str | bytes) -> None:
        entry: dict[str, Any] = {"s": self._session_id(session)}
        if isinstance(frame, bytes):
            entry["b"] = base64.b64encode(frame).decode()
        else:
            entry["f"] = frame
        self.log.write(json.dumps(entry) + "\n")

    async def _send(self, session: ExchangeSession, frame: str | bytes) -> None:
        await session.ws.send_message(frame)
        self._record(session, frame)

    async def _stream(self, session: ExchangeSession) -> None:
        self.current = session
        sids = {
            session.sub_for(channel).channel: session.sub_for(channel).sid for channel in CHANNELS
        }
        seqs = dict.fromkeys(sids.values(), 0)
        start = trio.current_time()
        first = self.next_n
        try:
            while self.next_n <= self.total and not session.closed.is_set():
                if session.gate.silent:
                    return
                if self.paused:
                    start = trio.current_time()
                    first = self.next_n
                    await trio.sleep(TICK_S)
                    continue
                due = min(self.total, first + int((trio.current_time() - start) * self.rate))
                while self.next_n <= min(due, self.total) and not session.gate.silent:
                    channel, msg = message_for(self.next_n)
                    sid = sids[channel]
                    if not session.subscriptions[sid].active:
                        return  # unsubscribed: nothing more on this connection
                    if channel == "trade" and self.skip_trade_seq:
                        seqs[sid] += self.skip_trade_seq
                        self.skip_trade_seq = 0
                    seqs[sid] += 1
                    frame = json.dumps(
                        {"type": channel, "sid": sid, "seq": seqs[sid], "msg": msg},
                        separators=(",", ":"),
                    )
                    await self._send(session, frame)
                    self.next_n += 1
                await trio.sleep(TICK_S)
        except Exception:  # the connection went away mid-send; the next one carries on
            return
        finally:
            if self.current is session:
                self.current = None

    async def _garbage(self, count: int) -> int:
        session = self.current
        if session is None:
            return 0
        for _ in range(count):
            self.garbage += 1
            frame: str | bytes = (
                f"garbage {self.garbage} {{not json"
                if self.garbage % 2
                else b"\xff\xfe garbage " + str(self.garbage).encode()
            )
            try:
                await self._send(session, frame)
            except Exception:
                return 0
        return count

    def status(self) -> dict[str, Any]:
        return {
            "sent": self.next_n - 1,
            "done": self.next_n > self.total,
            "sessions": len(self.session_ids),
            "connected": self.current is not None,
            "rejections": len(self.exchange.rejections),
        }

    async def _command(self, line: str) -> dict[str, Any]:
        words = line.split()
        reply: dict[str, Any] = {}
        if words[0] == "drop" and self.current is not None:
            await self.current.drop()
            reply["dropped"] = True
        elif words[0] == "silent" and self.current is not None:
            self.current.go_silent()
            reply["silenced"] = True
        elif words[0] == "gap":
            self.skip_trade_seq = int(words[1])
            reply["gap"] = self.skip_trade_seq
        elif words[0] == "garbage":
            reply["garbage"] = await self._garbage(int(words[1]))
        elif words[0] == "pause":
            self.paused = True
        elif words[0] == "resume":
            self.paused = False
        elif words[0] == "end":
            self.total = self.next_n - 1
        self.log.flush()
        return {**self.status(), **reply}

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.exchange.run)
            print(json.dumps({"url": self.exchange.url}), flush=True)
            stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
            buffer = b""
            while True:
                chunk = await stdin.receive_some()
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    raw, buffer = buffer.split(b"\n", 1)
                    line = raw.decode().strip()
                    if not line:
                        continue
                    if line == "quit":
                        self.log.flush()
                        nursery.cancel_scope.cancel()
                        return
                    print(json.dumps(await self._command(line)), flush=True)
            nursery.cancel_scope.cancel()


def main() -> None:
    key_path, log_path, total, rate = sys.argv[1:5]
    public_key = serialization.load_pem_public_key(Path(key_path).read_bytes())
    assert isinstance(public_key, rsa.RSAPublicKey)
    with open(log_path, "a") as log:
        trio.run(PacedExchange(public_key, log, int(total), float(rate)).run)


if __name__ == "__main__":
    main()
