"""Reply caches: one per client view for local answers, one global for upstream answers.

Keys are case-insensitive (the question name folded to lower case) and include type, class and
the EDNS/DO bits, because a reply with an OPT record is not the right reply to a query without
one. Entries live for min(cap, smallest answer TTL); negative answers for the SOA minimum
(RFC 2308); SERVFAIL for a few seconds at most. A full cache drops its least recently used entry,
never everything (rancher-dns's ``EvictRandom`` emptied the whole cache).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

from dns_svc.answers import ClientView
from dns_svc.chain import Answer, CallNext, Query, Source, Step
from dns_svc.respond import budget
from dns_svc.steps.cache.entry import NOT_LOCAL, CachedReply, _NotLocal, lifetime_of
from dns_svc.wire import RCODE_SERVFAIL, RawQuery, ReplyLayout, cap_ttls, header_only_reply, layout

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


class ReplyStore:
    """Every cached reply of the process, in one LRU of ``capacity`` entries: the global cache,
    the shared local answers and every client's cache are partitions of it (their keys carry
    the partition's tag). One bound for all of them, whatever the number of clients: 10k
    clients with a cache each of their own could otherwise hold gigabytes. The least recently
    used entry goes first, whichever partition or client it belongs to."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[tuple[tuple[object, ...], CacheKey], CachedReply | _NotLocal] = OrderedDict()
        self.counts: dict[object, int] = {GLOBAL: 0, SHARED: 0}  # client partitions: (CLIENT, generation)
        self.shared_keys: set[CacheKey] = set()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.entries)

    def put(self, tag: tuple[object, ...], key: CacheKey, entry: CachedReply | _NotLocal) -> None:
        if self.capacity <= 0:
            return
        entries = self.entries
        k = (tag, key)
        if k not in entries:
            counted = _counted(tag)
            self.counts[counted] = self.counts.get(counted, 0) + 1
            if tag[0] is SHARED:
                self.shared_keys.add(key)
        else:
            _let_go(entries[k])
        entries[k] = entry
        entries.move_to_end(k)
        while len(entries) > self.capacity:  # drop the least recently used one, never everything
            old, gone = entries.popitem(last=False)
            _let_go(gone)
            self._forget(old)
            self.evictions += 1

    def delete(self, tag: tuple[object, ...], key: CacheKey) -> None:
        k = (tag, key)
        gone = self.entries.pop(k, None)
        if gone is not None:
            _let_go(gone)
            self._forget(k)

    def _forget(self, k: tuple[tuple[object, ...], CacheKey]) -> None:
        kind = k[0][0]
        counted = _counted(k[0])
        left = self.counts[counted] - 1
        if left or kind is not CLIENT:
            self.counts[counted] = left
        else:
            del self.counts[counted]
        if kind is SHARED:
            self.shared_keys.discard(k[1])


GLOBAL, SHARED, CLIENT = "global", "shared", "client"


def _let_go(entry: CachedReply | _NotLocal) -> None:
    if isinstance(entry, CachedReply):
        entry.dropped = True


def _counted(tag: tuple[object, ...]) -> object:
    """What a partition's entries are counted under: the kind, and for a client's the generation
    too (an answers change makes the older generation's entries unreachable at once)."""
    return tag[:2] if tag[0] is CLIENT else tag[0]


class ReplyCache:
    """One partition of a ``ReplyStore``: finished replies with per-entry expiry.

    Built on ``OrderedDict`` (whose lookups and reordering run in C) rather than on
    ``cachetools.LRUCache``: this is the hot path, and cachetools' Python-level bookkeeping cost
    a measured 7% of server CPU per cache hit (bench/RESULTS.md).

    With ``stale_for``, an expired entry is kept that much longer for serve-stale (RFC 8767):
    ``get`` no longer returns it, ``stale`` does."""

    def __init__(
        self,
        capacity: int = 0,
        clock: Clock = time.monotonic,
        *,
        store: ReplyStore | None = None,
        tag: tuple[object, ...] = (GLOBAL,),
        stale_for: float = 0.0,
    ) -> None:
        self.store = store if store is not None else ReplyStore(capacity)
        self.tag = tag
        self.clock = clock
        self.stale_for = stale_for

    def __len__(self) -> int:
        return self.store.counts.get(_counted(self.tag), 0)

    @property
    def evictions(self) -> int:
        return self.store.evictions

    def get(self, key: CacheKey, now: float) -> CachedReply | _NotLocal | None:
        k = (self.tag, key)
        entries = self.store.entries
        entry = entries.get(k)
        if entry is None:
            return None
        if isinstance(entry, CachedReply) and entry.expires_at <= now:
            if entry.expires_at + self.stale_for <= now:
                self.store.delete(self.tag, key)
            return None
        entries.move_to_end(k)
        return entry

    def stale(self, key: CacheKey, now: float) -> CachedReply | None:
        """An expired entry still within ``stale_for`` of its expiry, for serve-stale."""
        entry = self.store.entries.get((self.tag, key))
        if isinstance(entry, CachedReply) and entry.expires_at <= now < entry.expires_at + self.stale_for:
            return entry
        return None

    def put(self, key: CacheKey, entry: CachedReply | _NotLocal) -> None:
        self.store.put(self.tag, key, entry)

    def drop_built_from(self, names: set[str]) -> int:
        """Drop the shared entries built from any of ``names`` (or from unknown names)."""
        entries = self.store.entries
        stale = []
        for key in self.store.shared_keys:
            entry = entries.get((self.tag, key))
            if not isinstance(entry, CachedReply) or entry.built_from is None or entry.built_from & names:
                stale.append(key)
        for key in stale:
            self.store.delete(self.tag, key)
        return len(stale)


def layout_of(answer: Answer) -> ReplyLayout | None:
    """The answer's layout (walked once, when it was not yet); None when it cannot be walked."""
    if answer.layout is not None:
        return answer.layout
    try:
        return layout(answer.wire)
    except ValueError:
        return None


def entry_for(answer: Answer, now: float, max_ttl: float, servfail_ttl: float) -> CachedReply | None:
    """How long ``answer`` may be cached, as an entry; None when it must not be cached (a reply
    whose records cannot be walked never is)."""
    lay = layout_of(answer)
    if lay is None:
        return None
    lifetime = lifetime_of(lay, answer.source is Source.FAILURE, answer.countdown, max_ttl, servfail_ttl)
    if lifetime is None:
        return None
    return CachedReply(answer.wire, lay, now, now + lifetime, answer.countdown)


class ClientCaches:
    """Local answers, dropped whenever the answers change: one partition per client view, plus
    one ``shared`` partition for answers no view can change (an exact name from the shared
    records, with no search suffix and no link alias involved). Without the shared partition, N
    clients asking the same 1,000 names cost N x 1,000 rebuilds after every fleet change.

    The per-client partitions carry the answers generation in their tag: an answers change
    makes them unreachable at once, and the store's LRU drops their entries first."""

    def __init__(self, store: ReplyStore | int, clock: Clock = time.monotonic) -> None:
        self.store = store if isinstance(store, ReplyStore) else ReplyStore(store)
        self.clock = clock
        self.views: dict[str, ReplyCache] = {}
        self.shared = ReplyCache(clock=clock, store=self.store, tag=(SHARED,))
        self.generation = 0

    def lookup(self, view: ClientView, key: CacheKey, now: float) -> CachedReply | _NotLocal | None:
        """The client's own entry, else a shared one, unless the client's own records (a link alias)
        cover the name. The fast path and the client cache step both ask here."""
        cache = self.views.get(view.key)
        entry = cache.get(key, now) if cache is not None else None
        if entry is None and key[0] not in view.overlay_wire:
            entry = self.shared.get(key, now)
        return entry

    def for_view(self, key: str) -> ReplyCache:
        cache = self.views.get(key)
        if cache is None:
            cache = self.views[key] = ReplyCache(clock=self.clock, store=self.store, tag=(CLIENT, self.generation, key))
        return cache

    def clear(self, changed: set[str] | None = None) -> None:
        """Forget what the answers change made stale. Per-client caches go whole (a client's
        search list or links may have changed); from the shared cache only the replies built from
        a ``changed`` name go, so one moved container does not cost 1,000 rebuilds.
        ``changed=None``: everything goes."""
        self.views = {}
        if changed is None:
            for key in list(self.store.shared_keys):
                self.store.delete(self.shared.tag, key)
        else:
            self.shared.drop_built_from(changed)
        self.generation += 1

    def __len__(self) -> int:
        """Entries that can still be served: this generation's and the shared ones."""
        return self.store.counts.get((CLIENT, self.generation), 0) + self.store.counts[SHARED]


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
            return Answer(
                entry.render(query.raw, now, budget(query.raw, query.transport)), Source.CLIENT_CACHE, entry.countdown
            )
        return self.answered(query, await call_next(query))

    def passes(self, query: Query) -> bool:
        raw = query.raw
        generation = self.caches.generation
        if raw.missed_in == generation or raw.not_local_in == generation:
            # the fast path looked a moment ago, in this generation: nothing, or "not local"
            query.generation = generation
            query.skip_local = raw.not_local_in == generation
            return True
        return not isinstance(self._look(query, self.caches.clock()), CachedReply)

    def answered(self, query: Query, answer: Answer) -> Answer:
        caches = self.caches
        if query.generation != caches.generation:
            return answer  # the answers changed while we waited: do not store a stale reply
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
        return answer


class GlobalCacheStep(Step):
    """Upstream replies, shared by clients that use the default upstreams; clients with their
    own upstreams get a partition of their own, so one client's resolver never answers another.

    Serve-stale (RFC 8767): an expired reply is kept for ``cache.stale_for`` seconds. When every
    upstream fails, or none has answered within ``stale_after`` seconds (the client-response
    timer), the client gets the expired reply with TTL ``stale_ttl``, and the upstream answer,
    when it comes, refreshes the cache."""

    name = "global_cache"

    def __init__(
        self, cache: ReplyCache, max_ttl: float, servfail_ttl: float, stale_after: float = 1.8, stale_ttl: int = 30
    ) -> None:
        self.cache = cache
        self.max_ttl = max_ttl
        self.servfail_ttl = servfail_ttl
        self.stale_after = stale_after
        self.stale_ttl = stale_ttl
        self.stale_served = 0
        self._fallback = self.stale_answer  # one bound method, not one per query

    async def resolve(self, query: Query, call_next: CallNext) -> Answer:
        if not query.recursion_allowed:
            return await call_next(query)
        now = self.cache.clock()
        key = global_key(query.view, cache_key(query.raw))
        entry = self.cache.get(key, now)
        if isinstance(entry, CachedReply):
            return Answer(entry.render(query.raw, now, budget(query.raw, query.transport)), Source.GLOBAL_CACHE)
        if self.cache.stale(key, now) is None:
            return self.answered(query, await call_next(query))
        below = asyncio.ensure_future(call_next(query))
        done, _ = await asyncio.wait({below}, timeout=self.stale_after)
        if not done:  # the client-response timer: stale now, the cache refreshed when it comes
            below.add_done_callback(lambda task: self._refreshed(query, task))
            return self.stale_answer(query)
        return self.answered(query, below.result())

    def _refreshed(self, query: Query, task: asyncio.Future[Answer]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.answered(query, task.result())

    def passes(self, query: Query) -> bool:
        if not query.recursion_allowed:
            return True
        now = self.cache.clock()
        key = global_key(query.view, cache_key(query.raw))
        if not query.raw.global_missed and isinstance(self.cache.get(key, now), CachedReply):
            return False
        if self.cache.stale_for and self.cache.stale(key, now) is not None:
            query.fallback, query.fallback_after = self._fallback, self.stale_after
        return True

    def capped(self, answer: Answer) -> Answer:
        """The upstream answer with no TTL above ``--cache-max-ttl``, as served and as cached."""
        lay = layout_of(answer)
        if lay is None:
            return answer
        wire, lay = cap_ttls(answer.wire, lay, int(self.max_ttl))
        if wire is answer.wire:
            return answer
        return Answer(wire, answer.source, answer.countdown, lay)

    def stale_answer(self, query: Query) -> Answer:
        """The expired reply for ``query`` (if it is still there), else SERVFAIL."""
        entry = self.cache.stale(global_key(query.view, cache_key(query.raw)), self.cache.clock())
        if entry is None:
            return Answer(header_only_reply(query.raw, RCODE_SERVFAIL), Source.FAILURE)
        self.stale_served += 1
        ttl = min(self.stale_ttl, int(self.max_ttl))
        return Answer(entry.render_stale(query.raw, budget(query.raw, query.transport), ttl), Source.STALE)

    def answered(self, query: Query, answer: Answer) -> Answer:
        if not query.recursion_allowed or answer.source not in (Source.UPSTREAM, Source.GATHER, Source.FAILURE):
            return answer
        now = self.cache.clock()
        key = global_key(query.view, cache_key(query.raw))
        if answer.source is Source.FAILURE and self.cache.stale_for and self.cache.stale(key, now) is not None:
            return self.stale_answer(query)  # keep the expired reply: it beats a SERVFAIL
        if answer.source is not Source.FAILURE:
            answer = self.capped(answer)
        stored = entry_for(answer, now, self.max_ttl, self.servfail_ttl)
        if stored is not None:
            self.cache.put(key, stored)
        return answer
