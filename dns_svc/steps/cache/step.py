"""Reply caches: one per client view for local answers, one global for upstream answers.

Keys are case-insensitive (the question name folded to lower case) and include type, class and
the EDNS/DO bits, because a reply with an OPT record is not the right reply to a query without
one. Entries live for min(cap, smallest answer TTL); negative answers for the SOA minimum
(RFC 2308); SERVFAIL for a few seconds at most. A full cache drops its least recently used entry,
never everything (rancher-dns's ``EvictRandom`` emptied the whole cache).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from dns_svc.chain import Answer, CallNext, Query, Source, Step
from dns_svc.respond import budget
from dns_svc.steps.cache.entry import NOT_LOCAL, CachedReply, _NotLocal, lifetime_of
from dns_svc.wire import FLAG_TC, RCODE_NOERROR, RCODE_NXDOMAIN, RawQuery, layout
from shared.answers import ClientView

CacheKey = tuple[bytes, int, int, int]
Clock = Callable[[], float]


def cache_key(raw: RawQuery) -> CacheKey:
    key = raw.key
    if key is None:
        # ``bytes.lower`` only touches A-Z; label lengths are at most 63, below 'A' (65), so the
        # wire form of the name stays intact.
        key = raw.key = (raw.qname.lower(), raw.qtype, raw.qclass, (1 if raw.edns else 0) | (2 if raw.do else 0))
    return key


def global_key(view: ClientView, key: CacheKey) -> CacheKey:
    """The global cache key: clients with their own upstreams get a partition of their own."""
    if view.recurse:
        return (view.key.encode() + b"/" + key[0], *key[1:])
    return key


class ReplyCache:
    """An LRU of finished replies with per-entry expiry.

    Built on ``OrderedDict`` (whose lookups and reordering run in C) rather than on
    ``cachetools.LRUCache``: this is the hot path, and cachetools' Python-level bookkeeping cost
    a measured 7% of server CPU per cache hit (bench/RESULTS.md)."""

    def __init__(self, capacity: int, clock: Clock = time.monotonic) -> None:
        self.capacity = capacity
        self.clock = clock
        self._entries: OrderedDict[CacheKey, CachedReply | _NotLocal] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey, now: float) -> CachedReply | _NotLocal | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if isinstance(entry, CachedReply):
            if not entry.variants:
                entry.settle()
            if entry.expires_at <= now:
                del self._entries[key]
                self.misses += 1
                return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: CacheKey, entry: CachedReply | _NotLocal) -> None:
        if self.capacity <= 0:
            return
        entries = self._entries
        entries[key] = entry
        entries.move_to_end(key)
        if len(entries) > self.capacity:  # drop the least recently used one, never everything
            entries.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        self._entries.clear()

    def drop_built_from(self, names: set[str]) -> int:
        """Drop the entries built from any of ``names`` (or from unknown names); keep the rest."""
        stale = [key for key, entry in self._entries.items()
                 if not isinstance(entry, CachedReply) or entry.built_from is None or entry.built_from & names]
        for key in stale:
            del self._entries[key]
        return len(stale)


def entry_for(answer: Answer, now: float, max_ttl: float, servfail_ttl: float) -> CachedReply | None:
    """How long ``answer`` may be cached, as an entry; None when it must not be cached."""
    try:
        lay = layout(answer.wire)
    except (ValueError, IndexError):
        return None
    lifetime = lifetime_of(lay, answer.source is Source.FAILURE, answer.countdown, max_ttl, servfail_ttl)
    if lifetime is None:
        return None
    return CachedReply(answer.wire, lay, now, now + lifetime, answer.countdown)


def upstream_entry(answer: Answer, now: float, max_ttl: float, servfail_ttl: float) -> CachedReply | None:
    """``entry_for`` an upstream answer, stored unread when its header says it is an ordinary
    NOERROR/NXDOMAIN reply (its TTLs are read on its first hit)."""
    wire = answer.wire
    if (answer.source is Source.UPSTREAM and len(wire) >= 12 and not wire[2] & (FLAG_TC >> 8)
            and wire[3] & 0xF in (RCODE_NOERROR, RCODE_NXDOMAIN)):
        return CachedReply.unread(wire, now, max_ttl)
    return entry_for(answer, now, max_ttl, servfail_ttl)


class ClientCaches:
    """Local answers, dropped whenever the answers change: one ReplyCache per client view, plus
    one ``shared`` cache for answers no view can change (an exact name from the shared records,
    with no search suffix and no link alias involved). Without the shared cache, N clients
    asking the same 1,000 names cost N x 1,000 rebuilds after every fleet change."""

    def __init__(self, capacity: int, clock: Clock = time.monotonic, shared_capacity: int = 10000) -> None:
        self.capacity = capacity
        self.clock = clock
        self.shared_capacity = shared_capacity
        self.by_view: dict[str, ReplyCache] = {}
        self.shared = ReplyCache(shared_capacity, clock)
        self.generation = 0

    def lookup(self, view: ClientView, key: CacheKey, now: float) -> CachedReply | _NotLocal | None:
        """This client's entry, else a shared one, unless the client's own records (a link alias)
        cover the name. The fast path and the client cache step both ask here."""
        cache = self.by_view.get(view.key)
        entry = cache.get(key, now) if cache is not None else None
        if entry is None and key[0] not in view.overlay_wire:
            entry = self.shared.get(key, now)
        return entry

    def for_view(self, key: str) -> ReplyCache:
        cache = self.by_view.get(key)
        if cache is None:
            cache = self.by_view[key] = ReplyCache(self.capacity, self.clock)
        return cache

    def clear(self, changed: set[str] | None = None) -> None:
        """Forget what the answers change made stale. Per-client caches go whole (a client's
        search list or links may have changed); from the shared cache only the replies built from
        a ``changed`` name go, so one moved container does not cost 1,000 rebuilds.
        ``changed=None``: everything goes."""
        self.by_view = {}
        if changed is None:
            self.shared = ReplyCache(self.shared_capacity, self.clock)
        else:
            self.shared.drop_built_from(changed)
        self.generation += 1

    def __len__(self) -> int:
        return sum(len(c) for c in self.by_view.values()) + len(self.shared)


class ClientCacheStep(Step):
    """First step: finished local answers for this client, or a marker that the name is not local."""

    name = "client_cache"

    def __init__(self, caches: ClientCaches, local_ttl_cap: float = 86400.0) -> None:
        self.caches = caches
        self.local_ttl_cap = local_ttl_cap

    def _look(self, query: Query, now: float) -> CachedReply | _NotLocal | None:
        query.generation = self.caches.generation
        entry = self.caches.lookup(query.view, cache_key(query.raw), now)
        if entry is NOT_LOCAL:
            query.skip_local = True
        return entry

    async def resolve(self, query: Query, call_next: CallNext) -> Answer:
        now = self.caches.clock()
        entry = self._look(query, now)
        if isinstance(entry, CachedReply):
            return Answer(entry.render(query.raw, now, budget(query.raw, query.transport)), Source.LOCAL,
                          entry.countdown)
        answer = await call_next(query)
        self.answered(query, answer)
        return answer

    def passes(self, query: Query) -> bool:
        return not isinstance(self._look(query, self.caches.clock()), CachedReply)

    def answered(self, query: Query, answer: Answer) -> None:
        caches = self.caches
        if query.generation != caches.generation:
            return  # the answers changed while we waited: do not store a stale reply
        key = cache_key(query.raw)
        if answer.source in (Source.LOCAL, Source.AUTHORITY):
            stored = entry_for(answer, caches.clock(), self.local_ttl_cap, 0)
            if stored is not None:
                if query.shared_answer:
                    stored.built_from = frozenset(query.built_from)
                    caches.shared.put(key, stored)
                else:
                    caches.for_view(query.view.key).put(key, stored)
        elif not query.skip_local:
            caches.for_view(query.view.key).put(key, NOT_LOCAL)


class GlobalCacheStep(Step):
    """Upstream replies, shared by clients that use the default upstreams; clients with their
    own upstreams get a partition of their own, so one client's resolver never answers another."""

    name = "global_cache"

    def __init__(self, cache: ReplyCache, max_ttl: float, servfail_ttl: float) -> None:
        self.cache = cache
        self.max_ttl = max_ttl
        self.servfail_ttl = servfail_ttl

    async def resolve(self, query: Query, call_next: CallNext) -> Answer:
        if not query.recursion_allowed:
            return await call_next(query)
        now = self.cache.clock()
        entry = self.cache.get(global_key(query.view, cache_key(query.raw)), now)
        if isinstance(entry, CachedReply):
            return Answer(entry.render(query.raw, now, budget(query.raw, query.transport)), Source.UPSTREAM)
        answer = await call_next(query)
        self.answered(query, answer)
        return answer

    def passes(self, query: Query) -> bool:
        if not query.recursion_allowed:
            return True
        entry = self.cache.get(global_key(query.view, cache_key(query.raw)), self.cache.clock())
        return not isinstance(entry, CachedReply)

    def answered(self, query: Query, answer: Answer) -> None:
        if query.recursion_allowed and answer.source in (Source.UPSTREAM, Source.FAILURE):
            stored = upstream_entry(answer, self.cache.clock(), self.max_ttl, self.servfail_ttl)
            if stored is not None:
                self.cache.put(global_key(query.view, cache_key(query.raw)), stored)
