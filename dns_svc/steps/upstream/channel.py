"""One UDP socket per upstream, shared by all queries to it and demultiplexed by ID and question.

A socket per query would cost a bind and an epoll registration each time; a shared socket with
random IDs costs a dict entry. Replies are matched on ID *and* question (case-insensitive), so a
stray or spoofed datagram cannot complete the wrong query; the socket is connected, so the kernel
drops datagrams from any other address.

The channel works with callbacks, not futures: a relayed cache miss is sent from the UDP
listener's read callback and finished from this socket's, with no coroutine in between (the
miss path's cost was mostly the coroutines, bench/RESULTS.md). ``exchange`` wraps the same
machinery in a future for the chain. Deadlines sit in one queue per wait length, oldest first,
swept by a single timer: no timer object per query.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import time
from collections import deque
from typing import Protocol

log = logging.getLogger("dns.upstream")
_HEADER_ID = struct.Struct("!H")
BATCH = 64
MAX_IN_FLIGHT = 60000

class Waiter(Protocol):
    """Whoever sent a query: told once, with the reply (its ID still the channel's) or the
    exception that ended it. An object rather than a callback, so a query costs no bound method."""

    def on_reply(self, result: bytes | BaseException) -> None: ...


class _FutureWaiter:
    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[bytes | BaseException]) -> None:
        self.future = future

    def on_reply(self, result: bytes | BaseException) -> None:
        if not self.future.done():
            self.future.set_result(result)


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


class _Pending:
    """A query in flight, freed as soon as it is answered. Its deadline queue entry, which
    outlives it, is a tuple of numbers (deadline, ID, serial): nothing for the garbage
    collector to follow, and it holds no callback alive."""

    __slots__ = ("question", "serial", "waiter")

    def __init__(self, waiter: Waiter, question: bytes, serial: int) -> None:
        self.waiter: Waiter | None = waiter
        self.question = question
        self.serial = serial


class UdpChannel:
    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, _Pending] = {}
        self._deadlines: dict[float, deque[tuple[float, int, int]]] = {}
        self._serial = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    def _open(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            except OSError:
                pass
            sock.connect(self.address)
            loop = asyncio.get_running_loop()
            loop.add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise
        self._sock, self._loop = sock, loop
        return sock

    def send(self, packet: bytes, wait: float, waiter: Waiter, question_end: int = 0) -> None:
        """Send ``packet`` with a fresh ID; ``waiter`` is told once, later, never from here.
        ``question_end``, when the caller knows it, saves reading the question again.
        Raises OSError or ValueError when the query cannot be sent at all."""
        sock = self._open()
        question = packet[12:question_end].lower() if question_end else question_of(packet)
        if question is None:
            raise ValueError("query without a readable question")
        pending = self._pending
        if len(pending) >= MAX_IN_FLIGHT:
            raise OSError("too many queries in flight to one upstream")
        qid = random.getrandbits(16)
        while qid in pending:
            qid = random.getrandbits(16)
        sock.send(_HEADER_ID.pack(qid) + packet[2:])
        deadline = time.monotonic() + wait
        serial = self._serial = self._serial + 1
        pending[qid] = _Pending(waiter, question, serial)
        queue = self._deadlines.get(wait)
        if queue is None:
            queue = self._deadlines[wait] = deque()
        queue.append((deadline, qid, serial))
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline)

    async def exchange(self, packet: bytes, wait: float) -> bytes:
        """Send ``packet`` (its ID is replaced) and return the matching reply with the original ID."""
        future: asyncio.Future[bytes | BaseException] = asyncio.get_running_loop().create_future()
        self.send(packet, wait, _FutureWaiter(future))
        result = await future
        if isinstance(result, BaseException):
            raise result
        return packet[:2] + result[2:]

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(BATCH):
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP port unreachable and the like, reported on the next read
                self._fail_all(ConnectionRefusedError(str(exc)))
                continue
            self.received(data)

    def received(self, data: bytes) -> None:
        if len(data) < 12:
            return
        qid = _HEADER_ID.unpack_from(data)[0]
        entry = self._pending.get(qid)
        if entry is None:
            return
        # The question is the reply's first name, so never compressed: compare it in place. Some
        # servers send REFUSED/FORMERR without the question: accept an error reply by ID alone.
        question = entry.question
        if (data[4:6] == b"\x00\x01" and data[12:12 + len(question)].lower() == question) or (
                data[4:6] == b"\x00\x00" and data[3] & 0xF != 0):
            del self._pending[qid]
            _deliver(entry, data)

    def _fail_all(self, exc: BaseException) -> None:
        """Fail everything in flight now, not at the timeout."""
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            _deliver(entry, exc)

    def _arm(self, deadline: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        # loop.time() and time.monotonic() are the same clock on asyncio and uvloop; a small
        # margin keeps a timer that fires a hair early from finding nothing due.
        self._timer = self._loop.call_later(max(deadline - time.monotonic(), 0.0) + 0.001, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = time.monotonic()
        pending = self._pending
        earliest: float | None = None
        for wait, queue in list(self._deadlines.items()):
            while queue and queue[0][0] <= now:
                _, qid, serial = queue.popleft()
                entry = pending.get(qid)
                if entry is not None and entry.serial == serial:
                    del pending[qid]
                    _deliver(entry, TimeoutError())
            if not queue:
                del self._deadlines[wait]
            elif earliest is None or queue[0][0] < earliest:
                earliest = queue[0][0]
        if earliest is not None:
            self._arm(earliest)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        self._fail_all(ConnectionError("channel closed"))
        self._deadlines.clear()


def _deliver(entry: _Pending, result: bytes | BaseException) -> None:
    """Hand a result to its query, once; a failing callback costs that query, not the socket's others."""
    waiter, entry.waiter = entry.waiter, None
    if waiter is None:
        return
    try:
        waiter.on_reply(result)
    except Exception:
        log.exception("reply callback failed", extra={"fields": {"event": "reply_callback_failed"}})


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
