"""Queries to one upstream over UDP: each from a fresh random port, with a random ID, identical
questions in flight merged into one.

This is what makes forged replies expensive (RFC 5452): an attacker who wants to plant an
answer must guess the 16-bit ID *and* the source port (about 15 more bits) while the one real
query is in flight, and cannot multiply its chances by making us send the same question many
times (the birthday attack), because identical questions share one upstream query. A reply is
taken only when it comes from the upstream's address and port (the socket is connected, so the
kernel drops anything else), carries the query's ID, and repeats its question (name compared
case-insensitively, type, class); a reply without a question is never taken.

A query's socket serves no other query while it waits, and one that saw an error is closed: an
ICMP port-unreachable (the upstream restarting) fails that one query, and the next one starts
afresh. (On uvloop a socket error stops the reader watcher of that socket for good; a long-lived
shared socket then went deaf for every later query.) Sockets are reused between queries, each
time from a new port (``UpstreamSockets``).

The channel works with callbacks, not futures: a relayed cache miss is sent from the UDP
listener's read callback and finished from this socket's, with no coroutine in between (the
pool's ``_Walk`` gives the chain a future over the same callbacks). Deadlines sit in one queue per
wait length, oldest first, swept by a single timer: no timer object per query.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import select
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast

from dns_svc import mmsg
from dns_svc.tally import Durations, clock
from dns_svc.wire import EDNS_UDP_SIZE, FLAG_CD, FLAG_RD, QTYPE_OPT, RawQuery, reply_tail

log = logging.getLogger("dns.upstream")
_HEADER = struct.Struct("!HHHHHH")
_U16 = struct.Struct("!H")
MAX_IN_FLIGHT = 8192


class Waiter(Protocol):
    """Whoever sent a query: told once, with the reply (everything after its ID, the question in
    this waiter's letter case) or the exception that ended it. An object rather than a callback,
    so a query costs no bound method."""

    def on_reply(self, result: bytes | BaseException) -> None: ...


class Entropy:
    """Random 16-bit numbers from the kernel's CSPRNG, read in blocks: ``secrets`` per number
    costs a system call each time, ``random`` is predictable from its outputs."""

    __slots__ = ("_at", "_block")

    def __init__(self) -> None:
        self._block = b""
        self._at = 0

    def u16(self) -> int:
        at = self._at
        if at + 2 > len(self._block):
            self._block, at = os.urandom(4096), 0
        self._at = at + 2
        return int(_U16.unpack_from(self._block, at)[0])


def upstream_query(raw: RawQuery, qid: int) -> bytes:
    """What we send upstream for ``raw``: its question and RD/CD bits, and our own EDNS (size
    ``EDNS_UDP_SIZE``, the client's DO bit, no options) when it had EDNS. Rebuilt rather than forwarded, so
    that one question is one upstream query whatever EDNS options (cookies) each client sent,
    and a client's cookie never reaches a server it did not talk to."""
    flags = raw.flags & (FLAG_RD | FLAG_CD)
    head = _HEADER.pack(qid, flags, 1, 0, 0, 1 if raw.edns else 0)
    question = raw.packet[12 : raw.question_end]
    if not raw.edns:
        return head + question
    return head + question + b"\x00" + struct.pack("!HHIH", QTYPE_OPT, EDNS_UDP_SIZE, 0x8000 if raw.do else 0, 0)


def merge_key(raw: RawQuery) -> bytes:
    """Queries with equal keys get the same upstream reply: same question (any letter case),
    same RD/CD bits, same EDNS and DO."""
    flags = raw.flags & (FLAG_RD | FLAG_CD) | (1 if raw.edns else 0) | (2 if raw.do else 0)
    return _U16.pack(flags) + raw.packet[12 : raw.question_end].lower()


def reply_matches(data: bytes, qid: int, question: bytes) -> bool:
    """The reply carries our ID and repeats our question (``question`` is lower case)."""
    if len(data) < 12 + len(question) or data[0] << 8 | data[1] != qid or data[4:6] != b"\x00\x01":
        return False
    if not data[2] & 0x80:
        return False  # a query, not a reply
    return data[12 : 12 + len(question)].lower() == question


class UpstreamSockets:
    """The UDP sockets of upstream queries, watched through one epoll set that is itself one
    reader of the event loop, and reused: a socket whose query has ended is disconnected
    (``connect`` to AF_UNSPEC), which gives its port back to the kernel, and its next ``connect``
    draws a new random port. So every query still leaves from a fresh port, but a cache miss
    costs two system calls where a new socket cost four (create, connect, register, close) and
    the kernel's file and socket set-up and tear-down with them.

    With the recvmmsg extension built (``dns_svc/_mmsg.c``), the queries of one pass of the event
    loop are sent back to back at its end (``_flush``), each still on its own socket and port:
    the upstream is then woken once for many of them instead of once per query.

    A socket that saw an error is closed, never reused. Where epoll or the disconnect call is
    missing, each query gets a new socket and a loop reader of its own.
    """

    def __init__(self, idle_limit: int = 512) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        # The extension's calls (``dns_svc/_mmsg.c``) when it is built: connect and send in one
        # call, the reply read without an exception per EAGAIN, the disconnect and the look at
        # what is queued in one more. Without it, the socket module's calls and ctypes.
        self.native = mmsg.load() if self._epoll is not None else None
        self._disconnect = _disconnect_call() if self._epoll is not None and self.native is None else None
        self._probe = select.poll() if self._disconnect is not None else None
        self._handlers: dict[int, Callable[[], None]] = {}
        self._idle: dict[int, list[_socket.socket]] = {socket.AF_INET: [], socket.AF_INET6: []}
        # Sends waiting for the end of the loop's pass (``send``, ``_flush``), in order.
        self._out_socks: list[_socket.socket] = []
        self._out_addrs: list[bytes] = []
        self._out_packets: list[bytes] = []
        self._out_flights: list[_Flight] = []
        self._flush_soon = False
        self.idle_limit = idle_limit
        self.created = 0
        self.reused = 0

    def sockaddr(self, family: int, address: tuple[Any, ...]) -> bytes:
        """``address`` as a struct sockaddr for the extension's ``connect_send``; empty without
        the extension or for an address it does not take (not numeric): ``send`` then uses the
        socket module's ``connect``."""
        if self.native is None:
            return b""
        if family == socket.AF_INET6 and len(address) == 2:
            address = (address[0], address[1], 0, 0)
        try:
            return self.native.address(address)
        except ValueError:
            return b""

    def send(
        self, family: int, address: tuple[Any, ...], sockaddr: bytes, packet: bytes, flight: _Flight
    ) -> _socket.socket:
        """``packet`` to ``address`` (``sockaddr``: the same, from ``sockaddr``) from a fresh
        random port, on a socket whose readiness calls ``flight.readable``. Raises OSError when
        it cannot be sent now. With the extension the send itself waits for the end of the loop's
        pass (``_flush``), and a send that fails there ends ``flight`` (``_Flight.unsent``)."""
        native = self.native
        if native is None or not sockaddr or self._loop is None:
            sock = self.open(family, address, flight.readable)
            try:
                sock.send(packet)
            except BaseException:
                self.release(sock, False)
                raise
            return sock
        idle = self._idle[family]
        if idle:
            sock = idle.pop()
            self.reused += 1
        else:
            sock = _socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
            assert self._epoll is not None
            try:
                self._epoll.register(sock.fileno(), select.EPOLLIN)
            except BaseException:
                sock.close()
                raise
            self.created += 1
        self._handlers[sock.fileno()] = flight.readable
        self._out_socks.append(sock)
        self._out_addrs.append(sockaddr)
        self._out_packets.append(packet)
        self._out_flights.append(flight)
        if not self._flush_soon:
            self._flush_soon = True
            self._loop.call_soon(self._flush)
        return sock

    def _flush(self) -> None:
        """The sends of this loop pass, one after another. Each upstream query keeps its socket
        and port, but sent back to back the upstream is woken once for many of them, not once per
        query (waking it was the largest single kernel cost of a miss: bench/RESULTS.md)."""
        native = self.native
        assert native is not None
        socks, addrs, packets, flights = self._out_socks, self._out_addrs, self._out_packets, self._out_flights
        i = 0
        while i < len(socks):  # a send that fails may queue the next upstream's, served here too
            sock, flight = socks[i], flights[i]
            if flight.sock is sock:  # not ended meanwhile (a channel closed)
                # connect() draws the port (see ``open``); one call for it and the send
                failed = native.connect_send(sock.fileno(), addrs[i], packets[i])
                if failed:
                    flight.unsent(OSError(-failed, os.strerror(-failed)))
            i += 1
        socks.clear()
        addrs.clear()
        packets.clear()
        flights.clear()
        self._flush_soon = False

    def recv(self, sock: _socket.socket) -> bytes | None:
        """A datagram queued on ``sock``, or None when there is none. Raises OSError for an error
        on it (an ICMP port unreachable)."""
        native = self.native
        if native is None:
            try:
                return sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return None
        got = native.recv_one(sock.fileno())
        if isinstance(got, bytes):
            return got
        if got == -errno.EAGAIN:
            return None
        raise OSError(-got, os.strerror(-got))

    def open(self, family: int, address: tuple[Any, ...], handler: Callable[[], None]) -> _socket.socket:
        """A socket connected to ``address`` from a fresh random port, ``handler`` called when it
        is readable. Raises OSError when none can be had."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            if self._epoll is not None:
                self._loop.add_reader(self._epoll.fileno(), self._ready)
        idle = self._idle[family]
        if idle:
            sock = idle.pop()
            try:
                sock.connect(address)
            except BaseException:
                self._drop(sock)
                raise
            self._handlers[sock.fileno()] = handler
            self.reused += 1
            return sock
        # the C socket type: ``socket.socket``'s Python wrapper costs 2 us on every cache miss
        sock = _socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            # connect() binds the socket to a port of the ephemeral range drawn by the kernel's
            # CSPRNG (get_random_u32 in udp_lib_get_port), as random as drawing it here and one
            # system call cheaper on every cache miss.
            sock.connect(address)
            if self._epoll is None:
                self._loop.add_reader(sock.fileno(), handler)
            else:
                self._epoll.register(sock.fileno(), select.EPOLLIN)
                self._handlers[sock.fileno()] = handler
        except BaseException:
            sock.close()
            raise
        self.created += 1
        return sock

    def release(self, sock: _socket.socket, reusable: bool) -> None:
        """``sock``'s query has ended; ``reusable`` is False after an error on it."""
        fd = sock.fileno()
        native = self.native
        if native is not None:
            if reusable and len(self._idle[sock.family]) < self.idle_limit:
                left = native.disconnect(fd)
                if left == 0 or (left == 1 and _drained(sock)):
                    self._handlers.pop(fd, None)
                    self._idle[sock.family].append(sock)
                    return
            self._drop(sock)
            return
        disconnect = self._disconnect
        if (
            reusable
            and disconnect is not None
            and len(self._idle[sock.family]) < self.idle_limit
            and disconnect(fd, _UNSPEC, _UNSPEC_SIZE) == 0
            and self._quiet(sock)
        ):
            self._handlers.pop(fd, None)
            self._idle[sock.family].append(sock)
            return
        self._drop(sock)

    def _quiet(self, sock: _socket.socket) -> bool:
        """Nothing queued for the old port and no error pending, or what was queued read and
        dropped: left there, forged replies sprayed at that port would each be a try at the next
        query's ID, the port already guessed. Asked with one ``poll`` first, because nearly
        always nothing is there, and finding that out by a ``recv`` that fails costs an exception
        (a few microseconds on every cache miss)."""
        probe = self._probe
        assert probe is not None
        fd = sock.fileno()
        probe.register(fd, select.POLLIN)
        try:
            ready = probe.poll(0)
        finally:
            probe.unregister(fd)
        if not ready:
            return True
        events = ready[0][1]
        if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
            return False
        return _drained(sock)

    def _drop(self, sock: _socket.socket) -> None:
        fd = sock.fileno()
        if self._epoll is None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(ValueError, OSError):
                    cast(Any, self._loop).remove_reader(fd)  # None on uvloop, a bool on asyncio
        else:
            self._handlers.pop(fd, None)  # closing the socket takes it out of the epoll set
        sock.close()

    def _ready(self) -> None:
        assert self._epoll is not None
        handlers = self._handlers
        # A handler may end its query and the socket be taken by another within the batch:
        # handlers cope with a wake-up that finds nothing to read.
        for fd, _events in self._epoll.poll(0, 256):
            handler = handlers.get(fd)
            if handler is not None:
                handler()

    def idle(self) -> int:
        return sum(len(socks) for socks in self._idle.values())

    def close(self) -> None:
        for socks in self._idle.values():
            for sock in socks:
                self._drop(sock)
            socks.clear()
        if self._epoll is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(ValueError, OSError):
                    cast(Any, self._loop).remove_reader(self._epoll.fileno())  # as above
            self._epoll.close()
        self._handlers.clear()


_UNSPEC = bytes(16)  # a struct sockaddr with sa_family AF_UNSPEC: "disconnect" to connect(2)
_UNSPEC_SIZE = len(_UNSPEC)


def _disconnect_call() -> Callable[[int, bytes, int], int] | None:
    """Libc's connect(2), for the AF_UNSPEC address Python's ``socket.connect`` cannot pass.
    Called with what ctypes converts by itself (an int, bytes as ``char *``, an int) and no
    ``argtypes``: checking each argument against declared types cost half a microsecond per
    miss, and these three never vary."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.connect
    except (OSError, AttributeError):
        return None
    call.restype = ctypes.c_int
    return cast(Callable[[int, bytes, int], int], call)


def _drained(sock: _socket.socket) -> bool:
    """Read what was queued for the old port (``UpstreamSockets._quiet``). A socket with more
    than a few queued is not worth keeping."""
    for _ in range(8):
        try:
            sock.recv(65535)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
    return False


class _Flight:
    """One upstream query in flight: its own socket, ID and deadline, and everyone waiting for
    its answer (each with its own spelling of the name). Its deadline queue entry, which outlives
    it, is a tuple of numbers: nothing for the garbage collector to follow."""

    __slots__ = ("channel", "key", "qid", "question", "sent_at", "serial", "sock", "waiters")

    def __init__(
        self, channel: UdpChannel, key: bytes, sock: _socket.socket | None, qid: int, question: bytes, serial: int
    ) -> None:
        self.channel = channel
        self.key = key
        self.sock: _socket.socket | None = sock
        self.qid = qid
        self.question = question
        self.serial = serial
        self.sent_at = clock()
        self.waiters: list[tuple[Waiter, bytes]] = []

    def readable(self) -> None:
        sock = self.sock
        channel = self.channel
        sockets = channel.sockets
        for _ in range(16):
            if sock is None:
                return
            try:
                data = sockets.recv(sock)
            except OSError as exc:  # ICMP port unreachable and the like: this query only
                channel.finish(self, ConnectionRefusedError(str(exc) or "connection refused"), reusable=False)
                return
            if data is None:
                return
            if reply_matches(data, self.qid, self.question):
                channel.finish(self, data)
                return
            channel.mismatched += 1  # a forgery or a late duplicate: keep waiting for the real one

    def unsent(self, exc: OSError) -> None:
        """The query could not be sent (``UpstreamSockets._flush``): its waiters hear it, as they
        would have from ``UdpChannel.send``, and move on to the next upstream."""
        self.channel.finish(self, exc, reusable=False, counted=False)


class UdpChannel:
    def __init__(
        self, address: tuple[str, int], entropy: Entropy | None = None, sockets: UpstreamSockets | None = None
    ) -> None:
        self.address = address
        # The same address as a tuple of any length: compiled, a ``tuple[str, int]`` attribute is
        # kept unboxed and boxed into a new tuple each time it is passed on (every query's connect).
        self._connect_to: tuple[Any, ...] = address
        self.sockets = sockets or UpstreamSockets()
        self.family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._sockaddr = self.sockets.sockaddr(self.family, address)
        self.entropy = entropy or Entropy()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flights: dict[bytes, _Flight] = {}
        self._by_serial: dict[int, _Flight] = {}
        self._deadlines: dict[float, deque[tuple[float, int]]] = {}
        self._serial = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.sent = 0
        self.merged = 0
        self.mismatched = 0
        # For /metrics: replies by rcode, queries that got none by why, and the time to a reply.
        self.rcodes: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.durations = Durations()

    def __len__(self) -> int:
        return len(self._by_serial)

    def send(self, raw: RawQuery, wait: float, waiter: Waiter) -> None:
        """Ask the upstream ``raw``'s question; ``waiter`` is told once, later, never from here.
        Raises OSError when the query cannot be sent at all."""
        key = merge_key(raw)
        flight = self._flights.get(key)
        if flight is not None:
            flight.waiters.append((waiter, raw.qname))
            self.merged += 1
            return
        if len(self._by_serial) >= MAX_IN_FLIGHT:
            raise OSError("too many queries in flight to one upstream")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        qid = self.entropy.u16()
        serial = self._serial = self._serial + 1
        flight = _Flight(self, key, None, qid, key[2:], serial)
        flight.sock = self.sockets.send(self.family, self._connect_to, self._sockaddr, upstream_query(raw, qid), flight)
        flight.waiters.append((waiter, raw.qname))
        self._flights[key] = flight
        self._by_serial[serial] = flight
        self.sent += 1
        deadline = time.monotonic() + wait
        queue = self._deadlines.get(wait)
        if queue is None:
            queue = self._deadlines[wait] = deque()
        queue.append((deadline, serial))
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline)

    def finish(
        self, flight: _Flight, result: bytes | BaseException, reusable: bool = True, counted: bool = True
    ) -> None:
        """End ``flight``: give back its socket (``reusable`` False after an error on it) and tell
        each waiter (a reply in its own spelling). ``counted`` False: a query that was never sent,
        not one that got no reply (``errors``)."""
        sock = flight.sock
        if sock is None:
            return
        flight.sock = None
        self.sockets.release(sock, reusable)
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
        self._by_serial.pop(flight.serial, None)
        waiters, flight.waiters = flight.waiters, []
        if isinstance(result, bytes):
            rcode = result[3] & 0xF
            self.rcodes[rcode] = self.rcodes.get(rcode, 0) + 1
            self.durations.observe(clock() - flight.sent_at)
            sent = result[12 : 12 + len(waiters[0][1])]
            for waiter, qname in waiters:
                # each waiter gets the question in its own spelling (the reply repeats ours)
                _deliver(waiter, result[2:] if qname == sent else reply_tail(result, qname))
        else:
            why = (
                "timeout"
                if isinstance(result, TimeoutError)
                else "refused"
                if isinstance(result, ConnectionRefusedError)
                else "closed"
            )
            if counted:
                self.errors[why] = self.errors.get(why, 0) + 1
            for waiter, _qname in waiters:
                _deliver(waiter, result)

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
        by_serial = self._by_serial
        earliest: float | None = None
        for wait, queue in list(self._deadlines.items()):
            while queue and queue[0][0] <= now:
                _, serial = queue.popleft()
                flight = by_serial.get(serial)
                if flight is not None:
                    self.finish(flight, TimeoutError())
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
        for flight in list(self._by_serial.values()):
            self.finish(flight, ConnectionError("channel closed"))
        self._deadlines.clear()


def _deliver(waiter: Waiter, result: bytes | BaseException) -> None:
    """Hand a result to one waiter; a failing callback costs that query, not the others."""
    try:
        waiter.on_reply(result)
    except Exception:
        log.exception("reply callback failed", extra={"fields": {"event": "reply_callback_failed"}})


async def tcp_exchange(address: tuple[str, int], raw: RawQuery, wait: float, entropy: Entropy) -> bytes:
    """``raw``'s question over TCP, on a fresh connection; the reply with ``raw``'s ID and case."""
    qid = entropy.u16()
    packet = upstream_query(raw, qid)
    async with asyncio.timeout(wait):
        reader, writer = await asyncio.open_connection(*address)
        try:
            writer.write(len(packet).to_bytes(2, "big") + packet)
            await writer.drain()
            size = int.from_bytes(await reader.readexactly(2), "big")
            reply = await reader.readexactly(size)
        finally:
            writer.close()
    question = packet[12 : raw.question_end].lower()
    if not reply_matches(reply, qid, question):
        raise ValueError("TCP reply does not match the query")
    return raw.packet[:2] + reply_tail(reply, raw.qname)
