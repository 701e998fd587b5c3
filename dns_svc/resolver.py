"""From a query to reply bytes: the packet cache, the edge checks, then the chain.

A UDP query whose bytes were seen before is answered from the packet cache without reading its
question. Everything else goes down the chain's checks in plain code (``Chain.walk``): cache hits
and local answers come back at once, with no coroutine, no task and no dnslib on a hit. A query
a step must wait for (upstream, gather, a CNAME chased upstream) is finished with callbacks over
UDP (``relay``) or as a coroutine (``finish``: TCP, and the unusual cases).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Sequence

from dns_svc.answers import AnswersDelta, AnswersTable
from dns_svc.chain import Answer, Chain, Pending, Query, Settled, Source
from dns_svc.replies import ClientCaches, PacketCache
from dns_svc.respond import budget, fit
from dns_svc.tally import ResponseTally
from dns_svc.wire import (
    CLASS_IN,
    QTYPE_AXFR,
    QTYPE_IXFR,
    RCODE_BADVERS,
    RCODE_REFUSED,
    RawQuery,
    header_only_reply,
    with_question,
)
from shared.fleet_changes import ObjectChange
from shared.fleet_index import FleetView

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_ALLOW = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "fc00::/7",
    "fe80::/10",
)


class TableRef:
    """The current answers table, and the client caches kept in step with it.

    A new table is swapped in with one assignment; a fleet change is applied to the current
    table in place (``update``), on the event loop, in one synchronous piece. Either way a check
    (plain code, never awaiting) sees the table before the change or after it, never a mix. A
    query that awaits (a CNAME chased upstream) holds the table object, which may have been
    updated meanwhile: what a step reads after an await it reads again in one piece, never
    combining it with what it read before (``LocalAnswers.wait``), and an answer built by a query
    that started before a change is kept by no cache (``ClientCaches.generation``, which every
    change moves)."""

    def __init__(self, table: AnswersTable, client_caches: ClientCaches) -> None:
        self.current = table
        self.client_caches = client_caches

    def swap(self, table: AnswersTable, changed: bool | None = None, names: set[str] | None = None) -> bool:
        """Make ``table`` current; ``changed`` and the changed ``names`` may be precomputed off the
        event loop (``names=None`` with ``changed``: treat every name as changed)."""
        if changed is None:
            changed = not table.same_answers(self.current)
            names = table.changed_names(self.current) if changed else set()
        self.current = table
        if changed:
            self.client_caches.clear(names, None)  # a new table: every view is built again
        return changed

    def update(self, fleet: FleetView, changes: Sequence[ObjectChange], serial: int) -> AnswersDelta:
        """Apply a fleet change to the current table in place, and forget exactly what it made
        stale in the client caches: the entries built from a changed name, the partitions of the
        clients whose view changed."""
        delta = self.current.update(fleet, changes, serial)
        if delta.names is None or delta.views is None or delta.names or delta.views:
            self.client_caches.clear(delta.names, delta.views)
        return delta


class RecursionPolicy:
    """Which clients may use recursion (and the global cache): not an open resolver."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        # A plain dict emptied when full: every query asks, and an LRU's bookkeeping in Python
        # cost more than the rare rebuild of a few thousand entries.
        self._memo: dict[str, bool] = {}

    def allows(self, client_ip: str) -> bool:
        allowed = self._memo.get(client_ip)
        if allowed is None:
            if len(self._memo) >= 65536:
                self._memo.clear()
            try:
                addr = ipaddress.ip_address(client_ip)
                if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                    addr = addr.ipv4_mapped
                allowed = any(addr in net for net in self.networks)
            except ValueError:
                allowed = False
            self._memo[client_ip] = allowed
        return allowed


class Resolver:
    """The packet cache, the edge checks, then the chain's drivers, and every reply counted once."""

    def __init__(
        self,
        tables: TableRef,
        client_caches: ClientCaches,
        chain: Chain,
        policy: RecursionPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tables = tables
        self.client_caches = client_caches
        self.chain = chain
        self.policy = policy
        self.clock = clock
        self.relayed = 0  # waits finished with callbacks
        self.slow_calls = 0  # waits finished by a coroutine
        self.packets = PacketCache()
        self.tally = ResponseTally()

    @property
    def fast_hits(self) -> int:
        """Replies from a cache, the packet cache included (read off the tally)."""
        return sum(self.tally.total(source) for source in ("packet_cache", "client_cache", "global_cache"))

    def fast_packet(self, data: bytes, client_ip: str, started: float, now: float) -> bytes | None:
        """A UDP query seen before, byte for byte, from a client with the same view (``now``: the
        resolver's clock, read once for a whole batch of datagrams by the listener)."""
        hit = self.packets.get(self.tables.current.view(client_ip), data, self.client_caches.generation, now)
        if hit is None:
            return None
        if hit.recursive and not self.policy.allows(client_ip):
            return None  # a cached upstream answer: the chain answers REFUSED to this client
        reply = data[:2] + hit.tail(now)
        tally = self.tally
        if tally.log_queries:
            tally.note("udp", "packet_cache", hit.raw.qtype, reply, started, client_ip)
            return reply
        slot = hit.slot
        if slot is None:
            slot = hit.slot = tally.slot("udp", "packet_cache", hit.raw.qtype, reply[3] & 0xF)
        tally.observe(slot, started)
        return reply

    @staticmethod
    def edge(raw: RawQuery) -> bytes | None:
        """Replies decided by the question alone: BADVERS, non-IN classes, zone transfers."""
        if raw.edns and raw.edns_version != 0:
            return header_only_reply(raw, RCODE_BADVERS)
        if raw.qclass != CLASS_IN:
            return header_only_reply(raw, RCODE_REFUSED)
        if raw.qtype in (QTYPE_AXFR, QTYPE_IXFR):
            return header_only_reply(raw, RCODE_REFUSED)
        return None

    def answer_now(self, raw: RawQuery, client_ip: str, transport: str, started: float) -> bytes | Pending:
        """The reply, when no step must wait (``Chain.walk``); else the ``Pending`` to finish."""
        table = self.tables.current
        query = Query(
            raw,
            client_ip,
            transport,
            table,
            table.view(client_ip),
            self.policy.allows(client_ip),
            self.client_caches.generation,
            started,
        )
        outcome = self.chain.walk(query)
        if type(outcome) is Pending:
            return outcome
        assert isinstance(outcome, Answer)
        return self.reply(query, outcome)

    def relay(self, pending: Pending, reply_to: Settled) -> bool:
        """Finish ``pending`` with callbacks, when its waiting step can."""
        if pending.relay(reply_to):
            self.relayed += 1
            return True
        return False

    async def finish(self, pending: Pending) -> bytes:
        """Finish ``pending`` as a coroutine."""
        self.slow_calls += 1
        return self.reply(pending.query, await pending.answer())

    def reply(self, query: Query, answer: Answer) -> bytes:
        """The answer fitted to the client, counted, and a cache hit remembered in the packet cache."""
        raw = query.raw
        transport = query.transport
        cached = answer.cached
        if cached is not None:  # rendered for this very query and its budget already
            reply = answer.wire
            if transport == "udp":
                recursive = answer.source is Source.GLOBAL_CACHE
                self.packets.put(query.view.key, raw, cached, budget(raw, transport), query.generation, recursive)
        else:
            wire = answer.wire if raw.qname.isascii() else with_question(answer.wire, raw)
            reply = fit(wire, raw, transport)
        self.tally.note(transport, answer.source.value, raw.qtype, reply, query.started, query.client_ip)
        return reply
