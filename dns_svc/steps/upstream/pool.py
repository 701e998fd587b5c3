"""Recursion: relay the client's query to its own upstreams, then to the default ones.

The client's question goes upstream with its RD/CD bits and DO bit, a fresh random ID and source
port (``channel``), and the reply comes back unchanged but for the ID and the question's letter
case, so rcode, flags and TTLs are the upstream's. Each attempt has its own timeout; a truncated
UDP reply is retried over TCP on the same upstream; SERVFAIL, REFUSED and a reply whose records
cannot be walked move on to the next upstream; SERVFAIL is ours only when every upstream failed.

Over UDP the same walk runs with callbacks (``relay``) when every step above passes the query
on; over TCP and after a truncated reply the chain's
coroutine (``resolve``) does it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from dnslib import QTYPE, RR, DNSRecord

from dns_svc.answers import Upstream
from dns_svc.chain import WAIT, Answer, Done, Query, Source, Step, Verdict, failure
from dns_svc.steps.upstream.channel import Entropy, UdpChannel, UpstreamSockets, tcp_exchange
from dns_svc.wire import (
    FLAG_TC,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
    RawQuery,
    ReplyLayout,
    WireError,
    layout,
    parse_query,
)
from shared.logs import ThrottledLog, log_event

log = logging.getLogger("dns.upstream")


class UpstreamPool(Step):
    name = "upstream"

    def __init__(self, default: Sequence[Upstream], timeout: float, table_first: bool = False) -> None:
        self.default = tuple(default)
        self.timeout = timeout
        self._channels: dict[Upstream, UdpChannel] = {}
        self._down: set[Upstream] = set()
        self._orders: dict[tuple[tuple[Upstream, ...], tuple[Upstream, ...]], tuple[Upstream, ...]] = {}
        # True when ``default`` is only the host's resolv.conf: a table with upstreams of its own
        # (an answers file's ``recurse``) then replaces it, as in rancher-dns, which never read it.
        self.table_first = table_first
        self.closed = False
        self.failures: dict[Upstream, int] = {}
        self.entropy = Entropy()
        self.sockets = UpstreamSockets()
        self.malformed = ThrottledLog(log, "upstream_reply_malformed")

    def channel(self, upstream: Upstream) -> UdpChannel:
        ch = self._channels.get(upstream)
        if ch is None:
            ch = self._channels[upstream] = UdpChannel(upstream, self.entropy, self.sockets)
        return ch

    def in_flight(self) -> int:
        return sum(len(ch) for ch in self._channels.values())

    def counters(self) -> dict[str, int]:
        channels = self._channels.values()
        return {
            "sent": sum(ch.sent for ch in channels),
            "merged": sum(ch.merged for ch in channels),
            "mismatched": sum(ch.mismatched for ch in channels),
            "malformed": self.malformed.total,
        }

    def channels(self) -> list[tuple[str, UdpChannel]]:
        """Each upstream used so far (as ``host:port``) and its channel, for /metrics."""
        return [(_text(up), ch) for up, ch in self._channels.items()]

    def check(self, query: Query) -> Verdict:
        """Always a wait, with upstreams to ask or none (the walk over none answers SERVFAIL at
        once): a client outside ``--allow-recursion`` is refused by the chain's recursion gate
        (``Chain.walk``), whether there is an upstream to ask or not."""
        return WAIT

    def relay(self, query: Query, done: Done) -> bool:
        if query.transport != "udp" or self.closed:
            return False  # TCP clients, and a truncated reply's retry, go through ``wait``
        _Walk(self, query.raw, self.upstreams_for(query), 0, query=query, done=done).next()
        return True

    def upstreams_for(self, query: Query) -> tuple[Upstream, ...]:
        """The client's own upstreams, then the table's default ones (an answers file's
        ``default.recurse``, as rancher-dns tried them), then ``--recurse``/resolv.conf; each
        once (worked out once per combination)."""
        own, table_default = query.view.recurse, query.table.default.recurse
        key = (own, table_default)
        order = self._orders.get(key)
        if order is None:
            seen: list[Upstream] = []
            fallback = () if table_default and self.table_first else self.default
            for up in (*own, *table_default, *fallback):
                if up not in seen:
                    seen.append(up)
            if len(self._orders) >= 4096:
                self._orders.clear()
            order = self._orders[key] = tuple(seen)
        return order

    async def wait(self, query: Query) -> Answer:
        return answer_of(query.raw, await self.forward(query.raw, self.upstreams_for(query)))

    async def forward(self, raw: RawQuery, upstreams: Sequence[Upstream]) -> tuple[bytes, ReplyLayout] | None:
        """The first acceptable reply to ``raw`` (with its ID and letter case) and its layout.
        Over UDP whatever the client used, as unbound and dnsmasq do (and merged with the same
        question in flight); over TCP only when the UDP reply was truncated, from the upstream
        that truncated it. The walk over the upstreams, TCP retries included, is ``_Walk``'s,
        the relay's own."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        walk = _Walk(self, raw, upstreams, 0, future=future)
        walk.next()
        try:
            outcome = await future
        finally:
            walk.stop()  # whoever waited has gone (a deadline): a TCP retry in flight goes too
        assert not isinstance(outcome, Truncated)  # awaited walks retry over TCP themselves
        return outcome

    async def forward_packet(self, packet: bytes, upstreams: Sequence[Upstream]) -> bytes | None:
        """``forward`` for a query we built ourselves (a CNAME chase, a gathered sub-query)."""
        try:
            raw = parse_query(packet)
        except WireError:
            return None
        found = await self.forward(raw, upstreams)
        return None if found is None else found[0]

    def accepts(self, up: Upstream, reply: bytes) -> ReplyLayout | None:
        """The reply's layout when it is worth passing on. SERVFAIL and REFUSED send the query to
        the next upstream, and so does a reply whose records cannot be walked: it would reach the
        client malformed, and must never enter the cache."""
        rcode = reply[3] & 0xF
        if rcode in (RCODE_SERVFAIL, RCODE_REFUSED):
            log_event(log, logging.DEBUG, "upstream_refused", upstream=_text(up), rcode=rcode)
            return None
        try:
            lay = layout(reply)
        except ValueError as exc:
            self.malformed.note(upstream=_text(up), problem=str(exc))
            return None
        self.mark(up, True, "")
        return lay

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
            log_event(
                log,
                logging.WARNING,
                "upstream_down",
                upstream=_text(up),
                error=error or "timeout",
                timeout_s=self.timeout,
            )

    async def lookup(self, query: Query, name: str, qtype: int) -> list[RR] | None:
        """Resolve ``name`` upstream for a local CNAME that points outside the table."""
        packet = DNSRecord.question(name, QTYPE.get(qtype)).pack()
        reply = await self.forward_packet(bytes(packet), self.upstreams_for(query))
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
        self.sockets.close()


@dataclass(frozen=True, slots=True)
class Truncated:
    """The UDP reply of ``upstreams[index]`` was truncated: the walk stops, TCP takes over."""

    index: int


Outcome = tuple[bytes, ReplyLayout] | Truncated | None


def answer_of(raw: RawQuery, found: tuple[bytes, ReplyLayout] | None) -> Answer:
    """What a walk found, as the answer: the upstream's reply, or SERVFAIL when every upstream
    failed."""
    if found is None:
        return failure(raw)
    return Answer(found[0], Source.UPSTREAM, layout=found[1])


class _Walk:
    """One query walking the upstreams in order, one callback per UDP reply: the failover rule,
    written once. A reply is taken when ``accepts`` takes it; a timeout, an ICMP error, SERVFAIL,
    REFUSED or a reply that cannot be walked moves on to the next upstream. A truncated reply
    stops a relayed walk (``done(query, None)``: the chain's coroutine takes over, over TCP); an
    awaited walk (``forward``'s future) asks the upstream that truncated it again over TCP, and
    walks on over UDP when that fails too. The outcome goes to the relay's ``done`` or to the
    future (the reply and its layout, or None when every upstream failed)."""

    __slots__ = ("done", "future", "index", "pool", "query", "raw", "tcp", "upstreams")

    def __init__(
        self,
        pool: UpstreamPool,
        raw: RawQuery,
        upstreams: Sequence[Upstream],
        start: int,
        *,
        query: Query | None = None,
        done: Done | None = None,
        future: asyncio.Future[Outcome] | None = None,
    ) -> None:
        self.pool = pool
        self.raw = raw
        self.upstreams = upstreams
        self.index = start
        self.query = query
        self.done = done
        self.future = future
        self.tcp: asyncio.Task[None] | None = None  # a truncated reply's retry over TCP, in flight

    def next(self) -> None:
        pool = self.pool
        while self.index < len(self.upstreams):
            up = self.upstreams[self.index]
            self.index += 1
            try:
                pool.channel(up).send(self.raw, pool.timeout, self)
                return
            except (OSError, ValueError) as exc:
                pool.mark(up, False, _error_text(exc))
        self._finish(None)

    def on_reply(self, result: bytes | BaseException) -> None:
        if self.future is not None and self.future.done():
            return  # whoever waited has gone (a deadline): no more upstreams tried for it
        if self.pool.closed:
            if self.future is not None:  # relayed queries are dropped at shutdown, awaited ones end
                self.future.set_result(None)
            return
        up = self.upstreams[self.index - 1]
        if isinstance(result, BaseException):
            self.pool.mark(up, False, _error_text(result))
            self.next()
            return
        wire = self.raw.packet[:2] + result
        if wire[2] & (FLAG_TC >> 8):
            if self.future is None:
                self._finish(Truncated(self.index - 1))
            else:
                self.tcp = asyncio.ensure_future(self._over_tcp(up))
            return
        self._take(up, wire)

    def _take(self, up: Upstream, wire: bytes) -> None:
        lay = self.pool.accepts(up, wire)
        if lay is None:
            self.next()
        else:
            self._finish((wire, lay))

    async def _over_tcp(self, up: Upstream) -> None:
        """The truncated reply's question again, over TCP to the upstream that truncated it."""
        pool = self.pool
        try:
            reply = await tcp_exchange(up, self.raw, pool.timeout, pool.entropy)
        except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError) as exc:
            pool.mark(up, False, _error_text(exc))
            self.next()
            return
        self._take(up, reply)

    def stop(self) -> None:
        """The awaiting side has gone: a TCP retry in flight is cancelled."""
        if self.tcp is not None and not self.tcp.done():
            self.tcp.cancel()

    def _finish(self, outcome: Outcome) -> None:
        if self.future is not None:
            if not self.future.done():
                self.future.set_result(outcome)
            return
        assert self.query is not None
        assert self.done is not None
        if isinstance(outcome, Truncated):
            self.done(self.query, None)  # the chain's coroutine takes over: ``wait``, over TCP
        else:
            self.done(self.query, answer_of(self.raw, outcome))


def _error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _text(up: Upstream) -> str:
    host, port = up
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
