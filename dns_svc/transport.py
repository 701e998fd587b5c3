"""UDP and TCP listeners: bytes in, bytes out. Bad packets cost one counter and, at most once
per interval, one log line; they never reach the resolver and never stop good queries."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any, cast

from dns_svc import mmsg
from dns_svc.chain import Answer, Pending
from dns_svc.resolver import Resolver
from dns_svc.tally import clock
from dns_svc.wire import (
    EDNS_UDP_SIZE,
    MAX_UDP_QUERY,
    RawQuery,
    WireError,
    error_reply,
    parse_query,
    servfail,
)
from shared.client_slots import ClientSlots
from shared.logs import ThrottledLog

log = logging.getLogger("dns")


class Dispatcher:
    """Shared by both transports: edge checks, the chain's checks, then a tracked task for a wait."""

    def __init__(self, resolver: Resolver, max_inflight: int = 2048, udp_cap: int = EDNS_UDP_SIZE) -> None:
        self.resolver = resolver
        self.max_inflight = max_inflight
        self.udp_cap = udp_cap
        self.tasks: set[asyncio.Task[None]] = set()
        self.bad = ThrottledLog(log, "bad_packet")  # what was wrong, once per 10 s, with a count
        self.failed = ThrottledLog(log, "resolve_failed")

    def immediate(self, data: bytes, client: str, transport: str, started: float = 0.0) -> bytes | Pending | None:
        """The reply when nothing must wait: a bad packet's error reply (None: drop it), the edge
        rcodes, cache hits and local answers. A ``Pending`` when a step must wait."""
        started = started or clock()
        resolver = self.resolver
        try:
            raw = parse_query(data, self.udp_cap)
        except WireError as exc:
            self.bad.note(client=client, problem=str(exc))
            if exc.rcode is None:
                return None
            reply = error_reply(data, exc.rcode)
            if reply is not None:
                resolver.tally.note(transport, "malformed", 0, reply, started, client)
            return reply
        reply = resolver.edge(raw)
        if reply is not None:
            resolver.tally.note(transport, "edge", raw.qtype, reply, started, client)
            return reply
        try:
            return resolver.answer_now(raw, client, transport, started)
        except Exception as exc:  # a bug or a packet we cannot handle: a counter and a throttled line
            return self.failed_reply(raw, client, transport, started, exc)

    async def finish(self, pending: Pending) -> bytes:
        """The reply to a query a step must wait for, as a coroutine."""
        try:
            return await self.resolver.finish(pending)
        except Exception as exc:
            query = pending.query
            return self.failed_reply(query.raw, query.client_ip, query.transport, query.started, exc)

    def failed_reply(self, raw: RawQuery, client: str, transport: str, started: float, exc: Exception) -> bytes:
        self.failed.note(client=client, qname=raw.text_name(), qtype=raw.qtype, error=f"{type(exc).__name__}: {exc}")
        reply = servfail(raw)
        self.resolver.tally.note(transport, "failure", raw.qtype, reply, started, client)
        return reply


def _no_recv(fd: int, datas: list[bytes], addrs: list[Any], count: int, size: int) -> int:
    return 0  # stands in for recvmmsg when the extension is not used; never called then


def _no_send(fd: int, replies: list[bytes], addrs: list[Any], start: int) -> int:
    return -errno.EINVAL


class UdpListener:
    """DNS over UDP without asyncio's per-datagram protocol dispatch. On each readiness event it
    drains the socket and answers cache hits at once: with the recvmmsg/sendmmsg extension
    (``dns_svc.mmsg``) up to ``MMSG_BATCH`` datagrams per system call, and the replies of each
    batch in one ``sendmmsg``, in the order the queries came; without it, up to ``BATCH``
    datagrams with one ``recvfrom`` and one ``sendto`` each. Under load one wake-up serves many
    queries, and the system calls per query, not the Python code, are most of what separates a
    Python resolver from a C one (the profile is in bench/RESULTS.md). A lone query is never
    held for a batch: a call returns what is queued, however little.

    Replies the socket has no room for (``EAGAIN``, ``ENOBUFS``) wait, in order, until it is
    writable again, up to ``BACKLOG`` of them; only beyond that is one dropped (``send_drops``).
    A reply that cannot be sent for a reason of its own (its address) costs that reply only
    (``send_errors``)."""

    BATCH = 64
    MMSG_BATCH = 64
    MMSG_ROUNDS = 4  # recvmmsg calls per readiness event at most, so that other callbacks get their turn
    BACKLOG = 4096

    def __init__(self, dispatcher: Dispatcher, sock: socket.socket, batched: bool = True) -> None:
        self.dispatcher = dispatcher
        self.sock = sock
        sock.setblocking(False)
        self.fd = sock.fileno()
        self.loop = asyncio.get_running_loop()
        native = mmsg.load() if batched else None
        self.batched = native is not None
        self._recv_into: mmsg.RecvInto = _no_recv
        self._send_from: mmsg.SendFrom = _no_send
        if native is not None:
            self._recv_into = native.recv_into
            self._send_from = native.send_from
            self.MMSG_BATCH = min(self.MMSG_BATCH, native.max_batch)
            self.loop.add_reader(self.fd, self._readable_batched)
        else:
            self.loop.add_reader(self.fd, self._readable)
        self._datas: list[bytes] = []
        self._addrs: list[Any] = []
        self._replies: list[bytes] = []
        self._to: list[Any] = []
        self._waiting: list[bytes] = []  # replies waiting for room in the socket, in order
        self._waiting_to: list[Any] = []
        self._writer = False
        self._relayed_replies: list[bytes] = []  # relayed answers of this loop pass, sent together
        self._relayed_addrs: list[Any] = []
        self._flush_soon = False
        self.send_drops = 0
        self.send_errors = 0
        self.closed = False
        self.reading_stopped = False
        self._relayed_to = self._relayed  # one bound method, not one per relayed query

    def _readable(self) -> None:
        recv = self.sock.recvfrom
        answer = self.answer
        resolver_clock = self.dispatcher.resolver.clock
        for _ in range(self.BATCH):
            try:
                data, addr = recv(MAX_UDP_QUERY + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error queued for an earlier reply: nothing to answer
            reply = answer(data, addr, clock(), resolver_clock())
            if reply is not None:
                self.send(reply, addr)

    def _readable_batched(self) -> None:
        recv_into = self._recv_into
        fd = self.fd
        count = self.MMSG_BATCH
        datas, addrs, replies, to = self._datas, self._addrs, self._replies, self._to
        answer = self.answer
        resolver_clock = self.dispatcher.resolver.clock
        for _ in range(self.MMSG_ROUNDS):
            got = recv_into(fd, datas, addrs, count, MAX_UDP_QUERY + 1)
            if got < 0:
                continue  # an ICMP error queued for an earlier reply: nothing to answer
            started = clock()  # every datagram of the batch had arrived by now: one reading for all
            now = resolver_clock()
            for i in range(len(datas)):
                try:
                    reply = answer(datas[i], addrs[i], started, now)
                except Exception as exc:  # a bug: this query only, never the rest of the batch
                    self.dispatcher.failed.note(client=str(addrs[i][0]), error=f"{type(exc).__name__}: {exc}")
                    continue
                if reply is not None:
                    replies.append(reply)
                    to.append(addrs[i])
            datas.clear()
            addrs.clear()
            if replies:
                self._send_batch(replies, to, 0)
                replies.clear()
                to.clear()
            if got < count:
                return  # the socket is drained

    def _send_batch(self, replies: list[bytes], to: list[Any], start: int) -> None:
        """``replies[start:]`` in as few ``sendmmsg`` calls as the kernel takes them, in order."""
        if self._waiting:
            self._wait(replies, to, start)  # behind the replies already waiting
            return
        send_from = self._send_from
        fd = self.fd
        i = start
        n = len(replies)
        while i < n:
            sent = send_from(fd, replies, to, i)
            if sent > 0:
                i += sent  # fewer than asked: the kernel stopped early, the rest goes next
            elif sent == -errno.EAGAIN or sent == -errno.ENOBUFS:
                self._wait(replies, to, i)
                return
            else:
                self.send_errors += 1  # this reply's own error (its address): the next one goes on
                i += 1

    def send(self, reply: bytes, addr: Any) -> None:
        """One reply outside a batch (relayed, finished by a task, or without the extension)."""
        if self._waiting:
            self._wait([reply], [addr], 0)
            return
        try:
            self.sock.sendto(reply, addr)
        except (BlockingIOError, InterruptedError):
            self._wait([reply], [addr], 0)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                self._wait([reply], [addr], 0)
            else:
                self.send_errors += 1

    def _wait(self, replies: list[bytes], to: list[Any], start: int) -> None:
        """Keep ``replies[start:]`` until the socket is writable again (``BACKLOG`` at most)."""
        if self.closed:
            return
        room = self.BACKLOG - len(self._waiting)
        end = len(replies)
        if end - start > room:
            self.send_drops += end - start - room  # the newest go: the clients ask again
            end = start + max(room, 0)
        self._waiting.extend(replies[start:end])
        self._waiting_to.extend(to[start:end])
        if not self._writer and self._waiting:
            self._writer = True
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        replies, to = self._waiting, self._waiting_to
        self._waiting, self._waiting_to = [], []
        self._writer = False
        cast(Any, self.loop).remove_writer(self.fd)
        if self.closed:
            return
        if self.batched:
            self._send_batch(replies, to, 0)
            return
        for i in range(len(replies)):
            if self._waiting:  # full again: the rest waits behind
                self._wait(replies, to, i)
                return
            self.send(replies[i], to[i])

    def answer(self, data: bytes, addr: Any, started: float, now: float) -> bytes | None:
        """The reply to send now, or None: not worth an answer, or relayed/awaited (sent later).
        ``started``: when it was received (``tally.clock``); ``now``: the resolver's clock."""
        d = self.dispatcher
        client = addr[0]
        if len(data) > MAX_UDP_QUERY:
            d.bad.note(client=client, problem=f"oversized query of more than {MAX_UDP_QUERY} bytes")
            return None
        seen = d.resolver.fast_packet(data, client, started, now)
        if seen is not None:
            return seen
        outcome = d.immediate(data, client, "udp", started)
        if outcome is None or type(outcome) is bytes:
            return outcome
        assert isinstance(outcome, Pending)
        outcome.context = addr
        if not d.resolver.relay(outcome, self._relayed_to):
            self._chain(outcome)
        return None

    def handle(self, data: bytes, addr: Any) -> None:
        """One datagram, answered now when it can be."""
        reply = self.answer(data, addr, clock(), self.dispatcher.resolver.clock())
        if reply is not None:
            self.send(reply, addr)

    def _relayed(self, pending: Pending, answer: Answer | None) -> None:
        if answer is None:
            self._chain(pending)  # the waiting step needs its coroutine after all (TCP retry)
        elif not self.closed:
            reply = self.dispatcher.resolver.reply(pending.query, answer)
            if not self.batched:
                self.send(reply, pending.context)
                return
            # Upstream replies arrive many per wake-up under load (one epoll pass over their
            # sockets): their answers go out together at the end of the loop's pass, in one
            # sendmmsg, rather than one sendto each. Same pass, so a lone answer waits for nothing.
            self._relayed_replies.append(reply)
            self._relayed_addrs.append(pending.context)
            if not self._flush_soon:
                self._flush_soon = True
                self.loop.call_soon(self._flush_relayed)

    def _flush_relayed(self) -> None:
        replies, to = self._relayed_replies, self._relayed_addrs
        self._relayed_replies, self._relayed_addrs = [], []
        self._flush_soon = False
        if not self.closed:
            self._send_batch(replies, to, 0)

    def _chain(self, pending: Pending) -> None:
        d = self.dispatcher
        if len(d.tasks) >= d.max_inflight:
            query = pending.query
            reply = servfail(query.raw)
            d.resolver.tally.note("udp", "overload", query.raw.qtype, reply, query.started, query.client_ip)
            self.send(reply, pending.context)
            return
        task = self.loop.create_task(self._answer(pending))
        d.tasks.add(task)
        task.add_done_callback(d.tasks.discard)

    async def _answer(self, pending: Pending) -> None:
        reply = await self.dispatcher.finish(pending)
        if not self.closed:
            self.send(reply, pending.context)

    def stop_reading(self) -> None:
        """Draining: take no new queries; answers to those in flight still go out."""
        if not self.reading_stopped and not self.closed:
            self.reading_stopped = True
            cast(Any, self.loop).remove_reader(self.fd)  # None on uvloop, a bool on asyncio: unchecked

    def close(self) -> None:
        if not self.closed:
            self.stop_reading()
            self.closed = True
            if self._writer:
                self._writer = False
                cast(Any, self.loop).remove_writer(self.fd)
            self._waiting, self._waiting_to = [], []
            self.sock.close()


class _Connection:
    __slots__ = ("client", "writer")

    def __init__(self, client: str, writer: asyncio.StreamWriter) -> None:
        self.client = client
        self.writer = writer


class TcpServer:
    """DNS over TCP (RFC 7766): length-prefixed messages, several per connection.

    Connection slots are shared so that no source can hold them: at most ``per_client``
    connections per client address; when every slot is taken, a new connection closes the one
    that has been idle longest (waiting for a query, or half-way through sending one), and only
    when none is idle is the newcomer turned away; once three quarters of the slots are taken,
    idle connections get ``pressure_timeout`` instead of ``idle_timeout``."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        idle_timeout: float = 10.0,
        max_connections: int = 512,
        per_client: int = 16,
        pressure_timeout: float = 1.0,
    ) -> None:
        self.dispatcher = dispatcher
        self.idle_timeout = idle_timeout
        self.pressure_timeout = min(pressure_timeout, idle_timeout)
        self.max_connections = max_connections
        self.open: set[_Connection] = set()
        self.idle: dict[_Connection, None] = {}  # insertion order: longest idle first
        self.by_client = ClientSlots(per_client)
        self.refused = ThrottledLog(log, "tcp_connection_refused")
        self.evicted = 0
        self.draining = False

    @property
    def connections(self) -> int:
        return len(self.open)

    def _admit(self, conn: _Connection) -> bool:
        if self.draining:
            return False
        if not self.by_client.take(conn.client):
            self.refused.note(client=conn.client, reason="per-client limit", limit=self.by_client.per_client)
            return False
        if len(self.open) >= self.max_connections:
            if not self.idle:
                self.by_client.give_back(conn.client)
                self.refused.note(client=conn.client, reason="every connection busy", limit=self.max_connections)
                return False
            oldest = next(iter(self.idle))
            del self.idle[oldest]
            oldest.writer.transport.abort()
            self.evicted += 1
        self.open.add(conn)
        return True

    def _release(self, conn: _Connection) -> None:
        if conn in self.open:
            self.open.discard(conn)
            self.idle.pop(conn, None)
            self.by_client.give_back(conn.client)

    def stop(self) -> None:
        """Draining: no new connections, idle ones closed now, busy ones after their answer."""
        self.draining = True
        for conn in list(self.idle):
            conn.writer.transport.abort()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        conn = _Connection(peer[0] if peer else "", writer)
        if not self._admit(conn):
            writer.transport.abort()
            return
        d = self.dispatcher
        try:
            while not self.draining:
                busy = len(self.open) * 4 >= self.max_connections * 3
                self.idle[conn] = None
                async with asyncio.timeout(self.pressure_timeout if busy else self.idle_timeout):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                self.idle.pop(conn, None)
                started = clock()
                outcome = d.immediate(data, conn.client, "tcp", started)
                if outcome is None:
                    return  # not worth an answer: close the connection
                reply = await d.finish(outcome) if isinstance(outcome, Pending) else outcome
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            self._release(conn)
            writer.close()
