"""Recursion: relay the client's query to its own upstreams, then to the default ones.

The query is forwarded as the client sent it (EDNS, DO and all) with a fresh ID, and the reply
comes back unchanged but for the ID, so rcode, flags and TTLs are the upstream's. Each attempt
has its own timeout; a truncated UDP reply is retried over TCP on the same upstream; SERVFAIL and
REFUSED move on to the next upstream; SERVFAIL is ours only when every upstream failed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from dnslib import QTYPE, RR, DNSRecord

from dns_svc.chain import Answer, CallNext, Query, Source
from dns_svc.steps.upstream.channel import UdpChannel, tcp_exchange
from dns_svc.wire import FLAG_TC, RCODE_REFUSED, RCODE_SERVFAIL, header_only_reply
from shared.answers import Upstream
from shared.logs import log_event

log = logging.getLogger("dns.upstream")


class UpstreamPool:
    name = "upstream"

    def __init__(self, default: Sequence[Upstream], timeout: float) -> None:
        self.default = tuple(default)
        self.timeout = timeout
        self._channels: dict[Upstream, UdpChannel] = {}
        self._down: set[Upstream] = set()
        self.failures: dict[Upstream, int] = {}

    def channel(self, upstream: Upstream) -> UdpChannel:
        ch = self._channels.get(upstream)
        if ch is None:
            ch = self._channels[upstream] = UdpChannel(upstream)
        return ch

    def upstreams_for(self, query: Query) -> list[Upstream]:
        seen: list[Upstream] = []
        for up in (*query.view.recurse, *self.default):
            if up not in seen:
                seen.append(up)
        return seen

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
                self.mark(up, False, type(exc).__name__ if not str(exc) else str(exc))
                continue
            rcode = reply[3] & 0xF
            if rcode in (RCODE_SERVFAIL, RCODE_REFUSED):
                log_event(log, logging.DEBUG, "upstream_refused", upstream=_text(up), rcode=rcode)
                continue
            self.mark(up, True, "")
            return reply
        return None

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
        for ch in self._channels.values():
            ch.close()


def _text(up: Upstream) -> str:
    host, port = up
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
