"""Recursion: relay the client's query to its own upstreams, then to the default ones.

The query is forwarded as the client sent it (EDNS, DO and all) with a fresh ID, and the reply
comes back unchanged but for the ID, so rcode, flags and TTLs are the upstream's. Each attempt
has its own timeout; a truncated UDP reply is retried over TCP on the same upstream; SERVFAIL and
REFUSED move on to the next upstream; SERVFAIL is ours only when every upstream failed.

Over UDP the same walk runs with callbacks (``relay``) when every step above passes the query
on; over TCP, after a truncated reply, or while the first upstream is down, the chain's
coroutine (``resolve``) does it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from dnslib import QTYPE, RR, DNSRecord

from dns_svc.chain import Answer, CallNext, Done, Query, Source, Step
from dns_svc.steps.upstream.channel import UdpChannel, tcp_exchange
from dns_svc.wire import FLAG_TC, RCODE_REFUSED, RCODE_SERVFAIL, header_only_reply
from shared.answers import Upstream
from shared.logs import log_event

log = logging.getLogger("dns.upstream")


class UpstreamPool(Step):
    name = "upstream"

    def __init__(self, default: Sequence[Upstream], timeout: float) -> None:
        self.default = tuple(default)
        self.timeout = timeout
        self._channels: dict[Upstream, UdpChannel] = {}
        self._down: set[Upstream] = set()
        self._orders: dict[tuple[Upstream, ...], tuple[Upstream, ...]] = {}
        self.closed = False
        self.failures: dict[Upstream, int] = {}

    def channel(self, upstream: Upstream) -> UdpChannel:
        ch = self._channels.get(upstream)
        if ch is None:
            ch = self._channels[upstream] = UdpChannel(upstream)
        return ch

    def relay(self, query: Query, done: Done) -> bool:
        if query.transport != "udp" or not query.recursion_allowed or self.closed:
            return False
        upstreams = self.upstreams_for(query)
        if not upstreams or upstreams[0] in self._down:
            return False  # the chain's path: it waits on each upstream in turn, with its own timeouts
        _Relay(self, query, upstreams, done).next()
        return True

    def upstreams_for(self, query: Query) -> tuple[Upstream, ...]:
        """The client's own upstreams, then the defaults, each once (worked out once per list)."""
        own = query.view.recurse
        order = self._orders.get(own)
        if order is None:
            seen: list[Upstream] = []
            for up in (*own, *self.default):
                if up not in seen:
                    seen.append(up)
            if len(self._orders) >= 4096:
                self._orders.clear()
            order = self._orders[own] = tuple(seen)
        return order

    async def resolve(self, query: Query, call_next: CallNext) -> Answer:
        if not query.recursion_allowed:
            return Answer(header_only_reply(query.raw, RCODE_REFUSED, ra=False), Source.REFUSED)
        reply = await self.forward(query.raw.packet, self.upstreams_for(query), query.transport)
        if reply is None:
            return Answer(header_only_reply(query.raw, RCODE_SERVFAIL), Source.FAILURE)
        return Answer(reply, Source.UPSTREAM)

    async def forward(self, packet: bytes, upstreams: Sequence[Upstream], transport: str = "udp") -> bytes | None:
        for up in upstreams:
            try:
                if transport == "tcp":
                    reply = await tcp_exchange(up, packet, self.timeout)
                else:
                    reply = await self.channel(up).exchange(packet, self.timeout)
                    if reply[2] & (FLAG_TC >> 8):
                        reply = await tcp_exchange(up, packet, self.timeout)
            except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
                self.mark(up, False, _error_text(exc))
                continue
            if self.accepts(up, reply):
                return reply
        return None

    def accepts(self, up: Upstream, reply: bytes) -> bool:
        """A reply worth passing on; SERVFAIL and REFUSED send the query to the next upstream."""
        rcode = reply[3] & 0xF
        if rcode in (RCODE_SERVFAIL, RCODE_REFUSED):
            log_event(log, logging.DEBUG, "upstream_refused", upstream=_text(up), rcode=rcode)
            return False
        self.mark(up, True, "")
        return True

    def mark(self, up: Upstream, ok: bool, error: str) -> None:
        """Log an upstream going down or coming back once, not once per query."""
        if ok:
            if up in self._down:
                self._down.discard(up)
                log_event(log, logging.WARNING, "upstream_up", upstream=_text(up))
            return
        self.failures[up] = self.failures.get(up, 0) + 1
        if up not in self._down:
            self._down.add(up)
            log_event(log, logging.WARNING, "upstream_down", upstream=_text(up), error=error or "timeout",
                      timeout_s=self.timeout)

    async def lookup(self, query: Query, name: str, qtype: int) -> list[RR] | None:
        """Resolve ``name`` upstream for a local CNAME that points outside the table."""
        packet = DNSRecord.question(name, QTYPE.get(qtype)).pack()
        reply = await self.forward(bytes(packet), self.upstreams_for(query))
        if reply is None:
            return None
        try:
            return list(DNSRecord.parse(reply).rr)
        except Exception:
            return None

    def close(self) -> None:
        """Shut down: queries still in flight are dropped, not failed over (no new sockets, no
        "upstream down" lines for a server that is only stopping)."""
        self.closed = True
        for ch in self._channels.values():
            ch.close()


class _Relay:
    """One query walking the upstreams over UDP, one callback per reply (``forward`` without the
    coroutine). A truncated reply hands the query back to the chain, which retries over TCP."""

    __slots__ = ("done", "index", "pool", "query", "upstreams")

    def __init__(self, pool: UpstreamPool, query: Query, upstreams: tuple[Upstream, ...], done: Done) -> None:
        self.pool = pool
        self.query = query
        self.upstreams = upstreams
        self.done = done
        self.index = 0

    def next(self) -> None:
        pool = self.pool
        while self.index < len(self.upstreams):
            up = self.upstreams[self.index]
            self.index += 1
            try:
                raw = self.query.raw
                pool.channel(up).send(raw.packet, pool.timeout, self, raw.question_end)
                return
            except (OSError, ValueError) as exc:
                pool.mark(up, False, _error_text(exc))
        self.done(self.query, Answer(header_only_reply(self.query.raw, RCODE_SERVFAIL), Source.FAILURE))

    def on_reply(self, result: bytes | BaseException) -> None:
        if self.pool.closed:
            return
        up = self.upstreams[self.index - 1]
        if isinstance(result, BaseException):
            self.pool.mark(up, False, _error_text(result))
            self.next()
        elif result[2] & (FLAG_TC >> 8):
            self.done(self.query, None)
        elif self.pool.accepts(up, result):
            self.done(self.query, Answer(self.query.raw.packet[:2] + result[2:], Source.UPSTREAM))
        else:
            self.next()


def _error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _text(up: Upstream) -> str:
    host, port = up
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
