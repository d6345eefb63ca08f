"""A JetStream stream, BACKTEST on `bt.>`, for the replay tests to republish an archive
into and read it back (nats-py in its own asyncio loop, beside Trio)."""

from __future__ import annotations

import asyncio

import nats

STREAM = "BACKTEST"


def make_stream(url: str) -> None:
    async def make() -> None:
        nc = await nats.connect(url)
        await nc.jetstream().add_stream(name=STREAM, subjects=["bt.>"])
        await nc.close()

    asyncio.run(make())


def read_back(url: str, count: int) -> list[tuple[str, bytes, dict[str, str] | None]]:
    """Every message of the stream in order (subject, payload, headers), once it holds at
    least `count`: replay publishes core NATS and flushes, and the stream may store the
    last ones just after the flush returns."""

    async def read() -> list[tuple[str, bytes, dict[str, str] | None]]:
        nc = await nats.connect(url)
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        deadline = asyncio.get_running_loop().time() + 10
        while info.state.messages < count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
            info = await js.stream_info(STREAM)
        got = []
        for seq in range(1, info.state.last_seq + 1):
            msg = await js.get_msg(STREAM, seq)
            got.append((str(msg.subject), msg.data or b"", msg.headers))
        await nc.close()
        return got

    return asyncio.run(read())
