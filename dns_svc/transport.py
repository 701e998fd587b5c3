"""UDP and TCP listeners: bytes in, bytes out. Bad packets cost one counter and, at most once
per interval, one log line; they never reach the resolver and never stop good queries."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from dns_svc.chain import Answer, Query
from dns_svc.resolver import Resolver
from dns_svc.respond import fit
from dns_svc.wire import (
    MAX_UDP_QUERY,
    RCODE_SERVFAIL,
    RawQuery,
    WireError,
    error_reply,
    header_only_reply,
    parse_query,
)
from shared.logs import log_event

log = logging.getLogger("dns")


class BadPacketLog:
    """Says what was wrong with a bad packet, once per ``interval`` seconds, with a count."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.last = -interval
        self.suppressed = 0
        self.total = 0

    def note(self, client: str, problem: str) -> None:
        self.total += 1
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return
        log_event(log, logging.WARNING, "bad_packet", client=client, problem=problem, since_last=self.suppressed)
        self.last = now
        self.suppressed = 0


class Dispatcher:
    """Shared by both transports: edge checks, fast path, then a tracked task for the chain."""

    def __init__(self, resolver: Resolver, max_inflight: int = 2048) -> None:
        self.resolver = resolver
        self.max_inflight = max_inflight
        self.tasks: set[asyncio.Task[None]] = set()
        self.bad = BadPacketLog()

    def immediate(self, data: bytes, client: str, transport: str) -> tuple[RawQuery | None, bytes | None]:
        """Everything answered without waiting: a bad packet (its error reply, or None to drop
        it), the edge rcodes, and cache hits. ``(raw, None)`` means the chain must answer."""
        try:
            raw = parse_query(data)
        except WireError as exc:
            self.bad.note(client, str(exc))
            return None, error_reply(data, exc.rcode) if exc.rcode is not None else None
        return raw, self.resolver.edge(raw) or self.resolver.fast(raw, client, transport)

    async def slow(self, raw: Any, client: str, transport: str) -> bytes:
        try:
            return await self.resolver.resolve(raw, client, transport)
        except Exception:
            log.exception("resolve failed", extra={"fields": {"event": "resolve_failed", "client": client,
                                                              "qname": raw.text_name(), "qtype": raw.qtype}})
            return header_only_reply(raw, RCODE_SERVFAIL)


class UdpListener:
    """DNS over UDP without asyncio's per-datagram protocol dispatch: on each readiness event it
    drains up to ``BATCH`` datagrams with ``recvfrom`` and answers cache hits with ``sendto`` at
    once. Under load one wake-up serves many queries; that, not the Python code, is most of what
    separates a Python resolver from dnsmasq (the profile is in bench/RESULTS.md)."""

    BATCH = 64

    def __init__(self, dispatcher: Dispatcher, sock: socket.socket) -> None:
        self.dispatcher = dispatcher
        self.sock = sock
        sock.setblocking(False)
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._readable)
        self.send_drops = 0
        self.closed = False
        self._relayed_to = self._relayed  # one bound method, not one per relayed query

    def _readable(self) -> None:
        recv = self.sock.recvfrom
        handle = self.handle
        for _ in range(self.BATCH):
            try:
                data, addr = recv(MAX_UDP_QUERY + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error queued for an earlier reply: nothing to answer
            handle(data, addr)

    def send(self, reply: bytes, addr: Any) -> None:
        try:
            self.sock.sendto(reply, addr)
        except (BlockingIOError, InterruptedError):
            self.send_drops += 1  # the socket buffer is full: UDP may drop, the client retries
        except OSError:
            pass

    def handle(self, data: bytes, addr: Any) -> None:
        d = self.dispatcher
        client = addr[0]
        if len(data) > MAX_UDP_QUERY:
            d.bad.note(client, f"oversized query of more than {MAX_UDP_QUERY} bytes")
            return
        seen = d.resolver.fast_packet(data, client)
        if seen is not None:
            self.send(seen, addr)
            return
        raw, reply = d.immediate(data, client, "udp")
        if reply is not None:
            self.send(reply, addr)
            return
        if raw is None:
            return  # not worth an answer
        if not d.resolver.relay(raw, client, self._relayed_to, addr):
            self._chain(raw, client, addr)

    def _relayed(self, query: Query, answer: Answer | None) -> None:
        if answer is None:
            self._chain(query.raw, query.client_ip, query.context)
        elif not self.closed:
            self.send(fit(answer.wire, query.raw, "udp"), query.context)

    def _chain(self, raw: RawQuery, client: str, addr: Any) -> None:
        d = self.dispatcher
        if len(d.tasks) >= d.max_inflight:
            self.send(header_only_reply(raw, RCODE_SERVFAIL), addr)
            return
        task = self.loop.create_task(self._answer(raw, client, addr))
        d.tasks.add(task)
        task.add_done_callback(d.tasks.discard)

    async def _answer(self, raw: Any, client: str, addr: Any) -> None:
        reply = await self.dispatcher.slow(raw, client, "udp")
        if not self.closed:
            self.send(reply, addr)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class TcpServer:
    """DNS over TCP (RFC 7766): length-prefixed messages, several per connection, idle timeout."""

    def __init__(self, dispatcher: Dispatcher, idle_timeout: float = 10.0, max_connections: int = 512) -> None:
        self.dispatcher = dispatcher
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else ""
        d = self.dispatcher
        self.connections += 1
        try:
            if self.connections > self.max_connections:
                return
            while True:
                async with asyncio.timeout(self.idle_timeout):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                raw, reply = d.immediate(data, client, "tcp")
                if reply is None:
                    if raw is None:
                        return  # not worth an answer: close the connection
                    reply = await d.slow(raw, client, "tcp")
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            self.connections -= 1
            writer.close()
