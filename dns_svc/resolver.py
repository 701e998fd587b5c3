"""From a parsed question to reply bytes: the edge checks, the synchronous fast path over the
caches, and the async chain for everything else.

The fast path is the chain's two cache steps done in plain code, with no coroutine, no task and no
dnslib: a finished local answer from the client's cache, or (when the client cache says the name
is not local and the client may recurse) a finished upstream answer from the global cache. Any
miss, expiry, or reply that would not fit goes to the chain, which fills the caches for next time.

A UDP query that every step would pass on to the upstreams is relayed with callbacks
(``relay``); only what is left, local answers to build and the unusual cases, runs the chain's
coroutines.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from typing import Any

from cachetools import LRUCache

from dns_svc.answers import AnswersTable, ClientView
from dns_svc.chain import Answer, Chain, Query, Source
from dns_svc.respond import budget, fit
from dns_svc.steps.cache import NOT_LOCAL, CachedReply, ReplyCache, cache_key
from dns_svc.steps.cache.step import ClientCaches, global_key
from dns_svc.tally import ResponseTally, clock
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
    """The current answers table. Swapping in a table with different answers clears the client
    caches (one assignment, so a query sees either the old table or the new one, never a mix)."""

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
            self.client_caches.clear(names)
        return changed


class RecursionPolicy:
    """Which clients may use recursion (and the global cache): not an open resolver."""

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self._memo: LRUCache[str, bool] = LRUCache(maxsize=65536)

    def allows(self, client_ip: str) -> bool:
        allowed = self._memo.get(client_ip)
        if allowed is None:
            try:
                addr = ipaddress.ip_address(client_ip)
                if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                    addr = addr.ipv4_mapped
                allowed = any(addr in net for net in self.networks)
            except ValueError:
                allowed = False
            self._memo[client_ip] = allowed
        return allowed


class PacketCache:
    """The exact bytes of a query (all but its ID) and the client, mapped to the cached reply that
    answers it: a repeat query skips even reading its question. An entry lives as long as the
    reply it points to: gone from its cache (``dropped``), expired, or of another answers
    generation, it is a miss. A shared local answer (the same for every client, ``built_from``
    set) outlives a fleet change that did not touch the names it was built from, as it does in
    the client cache, unless the client's own records now cover its name: a fleet change a second
    then costs a refill of what changed, not of every entry."""

    def __init__(self, capacity: int = 65536) -> None:
        self.capacity = capacity
        self._map: dict[tuple[str, bytes], list[Any]] = {}

    def __len__(self) -> int:
        return len(self._map)

    def get(self, view: ClientView, data: bytes, generation: int, now: float) -> tuple[bytes, bool, int] | None:
        """The reply, whether it is a recursive answer (which only some clients may have), and the
        question type."""
        hit = self._map.get((view.key, data[2:]))
        if hit is None:
            return None
        entry, raw, size, gen, recursive, name = hit
        if entry.dropped or entry.expires_at <= now:
            del self._map[(view.key, data[2:])]
            return None
        if gen != generation:
            if recursive or entry.built_from is None or name in view.overlay_wire:
                del self._map[(view.key, data[2:])]
                return None
            hit[3] = generation  # a shared answer the change left alone: still this one
        return data[:2] + entry.render_tail(raw, now, size), recursive, raw.qtype

    def put(
        self, view_key: str, raw: RawQuery, entry: CachedReply, size: int, generation: int, recursive: bool
    ) -> None:
        if len(self._map) >= self.capacity:
            self._map.clear()  # cheap and rare: it refills from the caches behind it
        self._map[(view_key, raw.packet[2:])] = [entry, raw, size, generation, recursive, cache_key(raw)[0]]


class Resolver:
    def __init__(
        self,
        tables: TableRef,
        client_caches: ClientCaches,
        global_cache: ReplyCache,
        chain: Chain,
        policy: RecursionPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tables = tables
        self.client_caches = client_caches
        self.global_cache = global_cache
        self.chain = chain
        self.policy = policy
        self.clock = clock
        self.fast_hits = 0
        self.relayed = 0
        self.slow_calls = 0
        self.packets = PacketCache()
        self.tally = ResponseTally()
        self.client_misses = 0
        self.global_misses = 0

    def fast_packet(self, data: bytes, client_ip: str, started: float) -> bytes | None:
        """A UDP query seen before, byte for byte, from a client with the same view."""
        hit = self.packets.get(self.tables.current.view(client_ip), data, self.client_caches.generation, self.clock())
        if hit is None:
            return None
        reply, recursive, qtype = hit
        if recursive and not self.policy.allows(client_ip):
            return None  # a cached upstream answer: the chain answers REFUSED to this client
        self.fast_hits += 1
        self.tally.note("udp", "packet_cache", qtype, reply, started, client_ip)
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

    def fast(self, raw: RawQuery, client_ip: str, transport: str, started: float) -> bytes | None:
        view = self.tables.current.view(client_ip)
        caches = self.client_caches
        key = cache_key(raw)
        now = self.clock()
        entry = caches.lookup(view, key, now)
        if entry is None:
            raw.missed_in = caches.generation  # the client cache step need not look again
            self.client_misses += 1
            return None
        recursive = entry is NOT_LOCAL
        if recursive:
            if not self.policy.allows(client_ip):
                return None
            entry = self.global_cache.get(global_key(view, key), now)
            raw.not_local_in = caches.generation
            raw.global_missed = entry is None
            if entry is None:
                self.global_misses += 1
        if not isinstance(entry, CachedReply):
            return None
        self.fast_hits += 1
        size = budget(raw, transport)
        if transport == "udp":
            self.packets.put(view.key, raw, entry, size, caches.generation, recursive)
        reply = entry.render(raw, now, size)
        source = Source.GLOBAL_CACHE if recursive else Source.CLIENT_CACHE
        self.tally.note(transport, source.value, raw.qtype, reply, started, client_ip)
        return reply

    def relay(
        self,
        raw: RawQuery,
        client_ip: str,
        reply_to: Callable[[Query, Answer | None], None],
        context: object,
        started: float,
    ) -> bool:
        """Relay a UDP query bound for the upstreams without a coroutine. True when it did:
        ``reply_to(query, answer)`` is then called later (``query.context`` is ``context``), with
        answer None when ``resolve`` must answer after all."""
        allowed = self.policy.allows(client_ip)
        if not allowed:
            return False  # the chain answers REFUSED
        table = self.tables.current
        query = Query(
            raw,
            client_ip,
            "udp",
            table,
            table.view(client_ip),
            allowed,
            reply_to=reply_to,
            context=context,
            started=started,
        )
        if self.chain.relay(query):
            self.relayed += 1
            return True
        return False

    async def resolve(self, raw: RawQuery, client_ip: str, transport: str, started: float = 0.0) -> bytes:
        self.slow_calls += 1
        started = started or clock()
        table = self.tables.current
        query = Query(
            raw, client_ip, transport, table, table.view(client_ip), self.policy.allows(client_ip), started=started
        )
        if raw.not_local_in == self.client_caches.generation and query.recursion_allowed:
            query.skip_local = True
            answer = await self.chain.resolve(query, self.chain.after_local)
        else:
            answer = await self.chain.resolve(query)
        wire = answer.wire if raw.qname.isascii() else with_question(answer.wire, raw)
        reply = fit(wire, raw, transport)
        self.tally.note(transport, answer.source.value, raw.qtype, reply, started, client_ip)
        return reply

    def relayed_reply(self, query: Query, answer: Answer) -> bytes:
        """The reply to a relayed query, counted."""
        reply = fit(answer.wire, query.raw, "udp")
        self.tally.note("udp", answer.source.value, query.raw.qtype, reply, query.started, query.client_ip)
        return reply
