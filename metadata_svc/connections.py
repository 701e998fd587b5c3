"""Connection slots of the HTTP server: per client, in total, and idle keep-alive under pressure.

Every container of a host talks to this one service. Without limits a single client that opens
connections and leaves them idle (keep-alive lasted ~73 s) fills the open-files limit, after which
every request from everyone fails, with no log line. Here each connection passes a gate: at most
``per_client`` from one address and ``max_total`` in all (set below the open-files limit, which is
raised to its hard maximum at start); once three quarters of the slots are taken, connections that
are idle between requests for longer than ``pressure_idle`` seconds are closed, the longest idle
first; a connection refused is logged, once per 10 s with a count. Long-polls are requests in
progress, never idle: they are not closed.
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

from shared.client_slots import ClientSlots
from shared.logs import ThrottledLog, log_event

log = logging.getLogger("metadata")


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


class ConnectionGate:
    def __init__(self, per_client: int = 64, max_total: int = 4096, pressure_idle: float = 1.0) -> None:
        self.max_total = max_total
        self.pressure_idle = pressure_idle
        self.open: dict[GatedConnection, None] = {}
        self.by_client = ClientSlots(per_client)
        self.refused = ThrottledLog(log, "connection_refused")
        self.closed_idle = 0

    def protocol_factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: GatedConnection(self, make)

    def admit(self, conn: GatedConnection) -> bool:
        client = conn.client
        if not self.by_client.take(client):
            self.refused.note(client=client, reason="per-client limit", limit=self.by_client.per_client)
            return False
        if len(self.open) * 4 >= self.max_total * 3:
            self.close_idle()
        if len(self.open) >= self.max_total:
            self.by_client.give_back(client)
            self.refused.note(client=client, reason="every connection busy", limit=self.max_total)
            return False
        self.open[conn] = None
        return True

    def release(self, conn: GatedConnection) -> None:
        if conn in self.open:
            del self.open[conn]
            self.by_client.give_back(conn.client)

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
    """Stands in front of aiohttp's protocol for one connection: admits it or closes it at once,
    and passes everything else through."""

    def __init__(self, gate: ConnectionGate, make: Callable[[], asyncio.Protocol]) -> None:
        self.gate = gate
        self.make = make
        self.inner: Any = None
        self.transport: Any = None
        self.client = ""
        self.last_active = time.monotonic()

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio.Transport
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else ""
        if not self.gate.admit(self):
            transport.abort()
            return
        self.inner = self.make()
        self.inner.connection_made(transport)

    def idle_since(self, now: float) -> float:
        """Seconds since the last request ended; 0 while one is in progress (a long-poll too)."""
        if self.inner is None or getattr(self.inner, "_request_in_progress", True):
            return 0.0
        return now - self.last_active

    def close_idle(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.release(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class GatedSite(web.BaseSite):
    """aiohttp's TCP site with every connection passing ``gate`` first."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, gate: ConnectionGate) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self.gate = gate

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]  # type: ignore[attr-defined]
        return str(host), int(port)

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        self._server = await loop.create_server(
            self.gate.protocol_factory(server), self._host, self._port, family=family, reuse_address=True, backlog=1024
        )
