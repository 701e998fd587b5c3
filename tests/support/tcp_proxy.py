"""A TCP relay on a loopback port in the test's own event loop, whose connections a test can
cut: how a client's connection to a server is broken without stopping the server (a restarted
etcd, for one, replays its log and may give back the very tokens a test wants gone)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class TcpProxy:
    def __init__(self, target: tuple[str, int], first_reply_delay: float = 0.0) -> None:
        self.target = target
        self.first_reply_delay = first_reply_delay
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float = 0.0) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if delay:  # the server's first bytes on this connection, held back once
                        await asyncio.sleep(delay)
                        delay = 0.0
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer, self.first_reply_delay))
        finally:
            self._writers -= {writer, up_writer}

    def cut(self) -> int:
        """Close every relayed connection (both sides); new ones are still taken. How many were cut."""
        writers = list(self._writers)
        for w in writers:
            w.close()
        return len(writers) // 2


@contextlib.asynccontextmanager
async def tcp_proxy(target: tuple[str, int], first_reply_delay: float = 0.0) -> AsyncIterator[TcpProxy]:
    """``first_reply_delay``: each connection's first bytes from the server are held back that
    long (a busy server, slow to answer a handshake)."""
    proxy = TcpProxy(target, first_reply_delay)
    server = await asyncio.start_server(proxy._handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        proxy.cut()
        await server.wait_closed()
