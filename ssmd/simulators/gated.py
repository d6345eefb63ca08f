"""A listener whose connections a simulated exchange can black-hole (the half-open fault)."""

from __future__ import annotations

import trio


class GatedStream(trio.abc.Stream):
    """A server-side TCP stream that can be black-holed: nothing in, nothing out."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.silent = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.silent:
            await trio.lowlevel.checkpoint()
            return
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.silent:
            await trio.sleep_forever()
        data = await self.inner.receive_some(max_bytes)
        if self.silent:
            await trio.sleep_forever()
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


class GatedListener(trio.abc.Listener[GatedStream]):
    def __init__(self, inner: trio.SocketListener) -> None:
        self.inner = inner

    @property
    def port(self) -> int:
        return int(self.inner.socket.getsockname()[1])

    async def accept(self) -> GatedStream:
        return GatedStream(await self.inner.accept())

    async def aclose(self) -> None:
        await self.inner.aclose()
