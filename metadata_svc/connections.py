"""Connection slots of the HTTP server: in total, per peer, and idle keep-alive under pressure.

Every container of a host talks to this one service. Without limits a single client that opens
connections and leaves them idle (keep-alive lasted ~73 s) fills the open-files limit, after which
every request from everyone fails, with no log line. Here each connection passes a gate: at most
``max_total`` in all (set below the open-files limit, which is raised to its hard maximum at
start) and ``per_peer`` from one socket address; once three quarters of the slots are taken,
connections idle between requests for longer than ``pressure_idle`` seconds are closed, the
longest idle first. Long-polls are requests in progress, never idle: they are not closed.

A peer that is a trusted proxy (``--xff``) speaks for many clients, so the per-peer cap does not
apply to it: its clients are limited one by one, as identified, by the long-poll slots
(``LongPollSlots``), which are what a client can hold for long.

A connection over a limit is not reset: it is held (at most ``max_refusing`` at a time) until its
first request arrives, answered ``429`` (its own limit) or ``503`` (the server's) with
``Retry-After``, and closed. Only a connection that sends nothing within ``refusal_wait``
seconds, or one beyond ``max_refusing``, is aborted unanswered.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from metadata_svc.identity import ClientIdentity, normalize_ip
from shared.client_slots import ClientSlots
from shared.logs import ThrottledLog, log_event

log = logging.getLogger("metadata")

RETRY_AFTER_S = 1


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (a container's default soft limit is often
    1,024); return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log_event(log, logging.INFO, "open_files_limit_raised", soft_was=soft, now=hard)
            soft = hard
        except (ValueError, OSError) as exc:
            log_event(log, logging.WARNING, "open_files_limit_unchanged", soft=soft, hard=hard, error=str(exc))
    return soft


def refusal_room(max_total: int) -> int:
    """How many refused connections may wait for their first request at once."""
    return max(8, max_total // 16)


def connections_within(open_files: int, wanted: int) -> int:
    """The largest total of connections, at most ``wanted``, whose slots and refusal room fit
    under ``open_files`` with 64 descriptors left for the fleet file, the kept copy and the loop."""
    room = max(open_files - 64, 2)
    total = min(wanted, room * 16 // 17)
    while total > 1 and total + refusal_room(total) > room:
        total -= 1
    return max(total, 1)


def http_refusal(status: int, reason: str) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection."""
    phrase = "Too Many Requests" if status == 429 else "Service Unavailable"
    body = f"{status} {phrase}: {reason}; retry in {RETRY_AFTER_S} s\n".encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nRetry-After: {RETRY_AFTER_S}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGate:
    def __init__(
        self,
        per_peer: int = 1280,
        max_total: int = 16384,
        pressure_idle: float = 1.0,
        identity: ClientIdentity | None = None,
        refusal_wait: float = 2.0,
    ) -> None:
        self.max_total = max_total
        self.pressure_idle = pressure_idle
        self.identity = identity or ClientIdentity(False, ())
        self.refusal_wait = refusal_wait
        self.max_refusing = refusal_room(max_total)
        self.open: dict[GatedConnection, None] = {}
        self.refusing = 0
        self.by_peer = ClientSlots(per_peer)
        self.refused = ThrottledLog(log, "connection_refused")
        self.aborted = 0
        self.closed_idle = 0

    def protocol_factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: GatedConnection(self, make)

    def admit(self, conn: GatedConnection) -> tuple[int, str] | None:
        """Take a slot for ``conn``; or the status and reason of its refusal (nothing taken)."""
        peer = conn.peer
        capped = not self.identity.speaks_for_others(peer)
        if capped and not self.by_peer.take(peer):
            self.refused.note(client=peer, reason="per-client limit", limit=self.by_peer.per_client)
            return 429, "too many connections from this address"
        if len(self.open) * 4 >= self.max_total * 3:
            self.close_idle()
        if len(self.open) >= self.max_total:
            if capped:
                self.by_peer.give_back(peer)
            self.refused.note(client=peer, reason="every connection busy", limit=self.max_total)
            return 503, "every connection is busy"
        conn.capped = capped
        self.open[conn] = None
        return None

    def release(self, conn: GatedConnection) -> None:
        if conn in self.open:
            del self.open[conn]
            if conn.capped:
                self.by_peer.give_back(conn.peer)

    def close_idle(self) -> None:
        """Under pressure: close keep-alive connections idle for ``pressure_idle`` seconds or
        more, longest idle first, until a quarter of the slots is free."""
        now = time.monotonic()
        idle = sorted((c for c in self.open if c.idle_since(now) >= self.pressure_idle), key=lambda c: c.last_active)
        for conn in idle:
            if len(self.open) * 4 < self.max_total * 3:
                break
            conn.close_idle()
            self.closed_idle += 1


class GatedConnection(asyncio.Protocol):
    """Stands in front of aiohttp's protocol for one connection: admits it, or answers its first
    request with a refusal; passes everything else through. ``requests`` counts the requests in
    progress on it (``request_tracker``), so that a long-poll is never taken for idle."""

    def __init__(self, gate: ConnectionGate, make: Callable[[], asyncio.Protocol]) -> None:
        self.gate = gate
        self.make = make
        self.inner: Any = None
        self.transport: Any = None
        self.peer = ""
        self.capped = True
        self.requests = 0
        self.last_active = time.monotonic()
        self.refusal: bytes | None = None
        self.refusal_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio.Transport
        self.transport = transport
        peername = transport.get_extra_info("peername")
        self.peer = normalize_ip(str(peername[0])) if peername else ""
        refused = self.gate.admit(self)
        if refused is None:
            self.inner = self.make()
            self.inner.connection_made(transport)
            return
        gate = self.gate
        if gate.refusing >= gate.max_refusing:
            gate.aborted += 1
            transport.abort()
            return
        gate.refusing += 1
        self.refusal = http_refusal(*refused)
        self.refusal_timer = asyncio.get_running_loop().call_later(gate.refusal_wait, self.give_up)

    def give_up(self) -> None:
        """A refused connection that never sent a request: nothing to answer."""
        self.gate.aborted += 1
        self.transport.abort()

    def idle_since(self, now: float) -> float:
        """Seconds since the last request ended; 0 while one is in progress (a long-poll too)."""
        if self.inner is None or self.requests:
            return 0.0
        return now - self.last_active

    def close_idle(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.inner is not None:
            self.inner.data_received(data)
        elif self.refusal is not None:
            if self.refusal_timer is not None:
                self.refusal_timer.cancel()
            self.transport.write(self.refusal)
            self.refusal = None
            self.transport.close()

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.gate.release(self)
            self.inner.connection_lost(exc)
            return
        if self.refusal_timer is not None:
            self.refusal_timer.cancel()
            self.refusal_timer = None
            self.gate.refusing -= 1

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


@web.middleware
async def request_tracker(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """Marks the request's connection busy while the handler runs: the idle sweep under pressure
    must never close a connection that is waiting for its answer (a long-poll)."""
    transport = request.transport
    conn = transport.get_protocol() if transport is not None else None
    if not isinstance(conn, GatedConnection):
        return await handler(request)  # type: ignore[no-any-return]
    conn.requests += 1
    try:
        return await handler(request)  # type: ignore[no-any-return]
    finally:
        conn.requests -= 1
        conn.last_active = time.monotonic()


class GatedListener:
    """The listening socket of the HTTP server, with every connection passing ``gate`` first,
    serving ``runner``'s application. Stop it before ``runner.cleanup()``, which then closes the
    connections it accepted."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, gate: ConnectionGate) -> None:
        self.runner = runner
        self.host = host
        self.port = port
        self.gate = gate
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        server = self.runner.server
        assert server is not None, "runner.setup() first"
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.server = await loop.create_server(
            self.gate.protocol_factory(server), self.host, self.port, family=family, reuse_address=True, backlog=4096
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
