"""One UDP socket per upstream, shared by all queries to it and demultiplexed by ID and question.

A socket per query would cost a bind and an epoll registration each time; a shared socket with
random IDs costs a dict entry. Replies are matched on ID *and* question (case-insensitive), so a
stray or spoofed datagram cannot complete the wrong query.
"""

from __future__ import annotations

import asyncio
import random
import struct
from typing import Any

_HEADER_ID = struct.Struct("!H")


def question_of(packet: bytes) -> bytes | None:
    """The question section (name, type, class) folded to lower case, for matching."""
    i = 12
    try:
        while packet[i]:
            if packet[i] > 63:
                return None
            i += 1 + packet[i]
    except IndexError:
        return None
    end = i + 5
    return packet[12:end].lower() if end <= len(packet) else None


def _expire(future: asyncio.Future[bytes]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, channel: UdpChannel) -> None:
        self.channel = channel

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.channel.received(data)

    def error_received(self, exc: Exception) -> None:
        self.channel.failed(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel.closed()


class UdpChannel:
    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self._transport: asyncio.DatagramTransport | None = None
        self._opening: asyncio.Future[None] | None = None
        self._pending: dict[int, tuple[asyncio.Future[bytes], bytes]] = {}

    async def _open(self) -> asyncio.DatagramTransport:
        if self._transport is not None:
            return self._transport
        if self._opening is None:
            loop = asyncio.get_running_loop()
            self._opening = loop.create_future()
            try:
                transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), remote_addr=self.address)
            except BaseException as exc:
                self._opening.set_exception(exc)
                self._opening.exception()
                self._opening = None
                raise
            self._transport = transport
            self._opening.set_result(None)
            self._opening = None
            return self._transport
        await asyncio.shield(self._opening)
        assert self._transport is not None
        return self._transport

    async def exchange(self, packet: bytes, wait: float) -> bytes:
        """Send ``packet`` (its ID is replaced) and return the matching reply with the original ID."""
        transport = await self._open()
        question = question_of(packet)
        if question is None:
            raise ValueError("query without a readable question")
        qid = random.getrandbits(16)
        while qid in self._pending:
            if len(self._pending) >= 60000:
                raise OSError("too many queries in flight to one upstream")
            qid = random.getrandbits(16)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        self._pending[qid] = (future, question)
        # A plain timer on the future: cheaper per query than an asyncio.timeout context.
        timer = loop.call_later(wait, _expire, future)
        try:
            transport.sendto(_HEADER_ID.pack(qid) + packet[2:])
            reply = await future
        finally:
            timer.cancel()
            self._pending.pop(qid, None)
        return packet[:2] + reply[2:]

    def received(self, data: bytes) -> None:
        if len(data) < 12:
            return
        waiting = self._pending.get(_HEADER_ID.unpack_from(data)[0])
        if waiting is None:
            return
        future, question = waiting
        if future.done():
            return
        # Some servers send REFUSED/FORMERR without the question: accept an error reply by ID alone.
        no_question = data[4:6] == b"\x00\x00" and data[3] & 0xF != 0
        if no_question or question_of(data) == question:
            future.set_result(data)

    def failed(self, exc: Exception) -> None:
        """ICMP port unreachable and the like: fail everything in flight now, not at the timeout."""
        for future, _ in list(self._pending.values()):
            if not future.done():
                future.set_exception(ConnectionRefusedError(str(exc)))

    def closed(self) -> None:
        self._transport = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


async def tcp_exchange(address: tuple[str, int], packet: bytes, wait: float) -> bytes:
    async with asyncio.timeout(wait):
        reader, writer = await asyncio.open_connection(*address)
        try:
            writer.write(len(packet).to_bytes(2, "big") + packet)
            await writer.drain()
            size = int.from_bytes(await reader.readexactly(2), "big")
            reply = await reader.readexactly(size)
        finally:
            writer.close()
    if reply[:2] != packet[:2] or question_of(reply) != question_of(packet):
        raise ValueError("TCP reply does not match the query")
    return reply
