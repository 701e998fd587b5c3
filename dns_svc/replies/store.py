"""Reply caches as wire bytes: one store for every cached reply of the process, split into
partitions (the global cache, the shared local answers, one per client view), with one bound.

Keys are case-insensitive (the question name folded to lower case) and include type, class and
the EDNS/DO bits, because a reply with an OPT record is not the right reply to a query without
one. A full store drops its least recently used entry, never everything (rancher-dns's
``EvictRandom`` emptied the whole cache). The cache steps (``dns_svc/steps/cache``), the local
step's not-local memo and the resolver's packet cache all read these.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import cast

from dns_svc.answers import ClientView
from dns_svc.replies.entry import NOT_LOCAL, CachedReply, _NotLocal
from dns_svc.wire import RawQuery

# (question name in wire form, lower case; type; class; EDNS and DO bits). Typed as a tuple of
# any length on purpose: compiled, a fixed-length tuple type is unboxed into a C struct at every
# call that takes one and boxed into a new tuple at every return, several times per query.
CacheKey = tuple[object, ...]
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
        return (view.key.encode() + b"/" + cast(bytes, key[0]), *key[1:])
    return key


def shared_serves(view: ClientView, name: object) -> bool:
    """Whether a shared local answer (the same for every client) answers this client's question
    ``name`` (lower-case wire form, ``CacheKey[0]``): not when the client's own records, its link
    aliases, cover the name. The client cache and the packet cache both ask this."""
    return name not in view.overlay_wire


class ReplyStore:
    """Every cached reply of the process, in one LRU of ``capacity`` entries: the global cache,
    the shared local answers and every client's cache are partitions of it (their keys carry
    the partition's tag). One bound for all of them, whatever the number of clients: 10k
    clients with a cache each of their own could otherwise hold gigabytes. The least recently
    used entry goes first, whichever partition or client it belongs to."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[tuple[tuple[object, ...], CacheKey], CachedReply | _NotLocal] = OrderedDict()
        self.counts: dict[object, int] = {GLOBAL: 0, SHARED: 0, CLIENT: 0}  # per kind of partition
        self.shared_keys: set[CacheKey] = set()
        self.evictions = 0
        # What each local answer was built from (table names, its client's partition, ``ANY_CHANGE``)
        # and, per such source, the entries built from it: a fleet change drops exactly those.
        self.sources: dict[tuple[tuple[object, ...], CacheKey], tuple[object, ...]] = {}
        self.by_source: dict[object, set[tuple[tuple[object, ...], CacheKey]]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def put(
        self, tag: tuple[object, ...], key: CacheKey, entry: CachedReply | _NotLocal, sources: tuple[object, ...] = ()
    ) -> None:
        """Keep ``entry``; with ``sources``, until one of them changes (``drop_sources``)."""
        if self.capacity <= 0:
            return
        entries = self.entries
        k = (tag, key)
        previous = entries.get(k)
        if previous is None:
            counted = tag[0]
            self.counts[counted] = self.counts.get(counted, 0) + 1
            if tag[0] is SHARED:
                self.shared_keys.add(key)
        else:  # a new key goes in last by itself, as the most recently used; a known one is moved there
            _let_go(previous)
            entries.move_to_end(k)
            self._unindex(k)
        entries[k] = entry
        if sources:
            self.sources[k] = sources
            by_source = self.by_source
            for source in sources:
                built = by_source.get(source)
                if built is None:
                    by_source[source] = {k}
                else:
                    built.add(k)
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

    def drop_sources(self, sources: Iterable[object]) -> int:
        """Drop every entry built from one of ``sources``; how many went."""
        dropped = 0
        by_source = self.by_source
        for source in sources:
            built = by_source.pop(source, None)
            if built is not None:
                for tag, key in built:
                    self.delete(tag, key)
                dropped += len(built)
        return dropped

    def _forget(self, k: tuple[tuple[object, ...], CacheKey]) -> None:
        kind = k[0][0]
        self.counts[kind] -= 1
        if kind is SHARED:
            self.shared_keys.discard(k[1])
        self._unindex(k)

    def _unindex(self, k: tuple[tuple[object, ...], CacheKey]) -> None:
        sources = self.sources.pop(k, None)
        if sources is not None:
            by_source = self.by_source
            for source in sources:
                built = by_source.get(source)
                if built is not None:
                    built.discard(k)
                    if not built:
                        del by_source[source]


GLOBAL, SHARED, CLIENT = "global", "shared", "client"


def _let_go(entry: CachedReply | _NotLocal) -> None:
    if isinstance(entry, CachedReply):
        entry.dropped = True


ANY_CHANGE = "any change"
"""The source of a local answer whose table names are not known: it goes with every change."""


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
        return self.store.counts.get(self.tag[0], 0)  # every partition's of its kind

    @property
    def evictions(self) -> int:
        return self.store.evictions

    def get(self, key: CacheKey, now: float) -> CachedReply | _NotLocal | None:
        k = (self.tag, key)
        entries = self.store.entries
        entry = entries.get(k)
        if entry is None:
            return None
        if isinstance(entry, CachedReply) and not entry.servable(now):
            if not entry.stale_within(now, self.stale_for):
                self.store.delete(self.tag, key)  # past its serve-stale window too
            return None
        entries.move_to_end(k)
        return entry

    def stale(self, key: CacheKey, now: float) -> CachedReply | None:
        """An expired entry still within ``stale_for`` of its expiry, for serve-stale."""
        entry = self.store.entries.get((self.tag, key))
        if isinstance(entry, CachedReply) and entry.stale_within(now, self.stale_for):
            return entry
        return None

    def put(self, key: CacheKey, entry: CachedReply | _NotLocal) -> None:
        """Keep ``entry``; in a client's partition, until any change (its origin is not known:
        ``ClientCaches.keep`` says what it was built from)."""
        tag = self.tag
        self.store.put(tag, key, entry, (tag, ANY_CHANGE) if tag[0] is CLIENT else ())


class ClientCaches:
    """Local answers, kept until the answers they were built from change: one partition per
    client view, plus one ``shared`` partition for answers no view can change (an exact name from
    the shared records, with no search suffix and no link alias involved). Without the shared
    partition, N clients asking the same 1,000 names cost N x 1,000 rebuilds after every fleet
    change.

    Every entry is kept with what it was built from (``ReplyStore.drop_sources``): the table
    names it read (misses too: a search suffix tried in vain would answer once it has records),
    and, for a client's own, its client's partition, which goes whole when the client's view
    changes. An entry of unknown origin goes with any change (``ANY_CHANGE``). ``generation``
    moves with every change: an answer built by a query that started before it is not kept."""

    def __init__(self, store: ReplyStore | int, clock: Clock = time.monotonic) -> None:
        self.store = store if isinstance(store, ReplyStore) else ReplyStore(store)
        self.clock = clock
        self.views: dict[str, ReplyCache] = {}
        self.shared = ReplyCache(clock=clock, store=self.store, tag=(SHARED,))
        self.generation = 0

    def lookup(self, view: ClientView, key: CacheKey, now: float) -> CachedReply | None:
        """The client's own reply, else a shared one, unless the client's own records (a link
        alias) cover the name."""
        cache = self.views.get(view.key)
        entry = cache.get(key, now) if cache is not None else None
        if entry is None and shared_serves(view, key[0]):
            entry = self.shared.get(key, now)
        return entry if type(entry) is CachedReply else None

    def known_not_local(self, view: ClientView, key: CacheKey, now: float) -> bool:
        """True when the local step found nothing for this question in this view and generation."""
        cache = self.views.get(view.key)
        return cache is not None and cache.get(key, now) is NOT_LOCAL

    def remember_not_local(self, view: ClientView, key: CacheKey, names: Iterable[str] | None = None) -> None:
        """Remember that none of ``names`` (the question and its search candidates) is local for
        this client; None: until any change."""
        self.keep(view, key, NOT_LOCAL, names)

    def keep(
        self, view: ClientView, key: CacheKey, entry: CachedReply | _NotLocal, names: Iterable[str] | None
    ) -> None:
        """Keep a client's own ``entry``, built from the table ``names`` (None: unknown)."""
        cache = self.for_view(view.key)
        sources: tuple[object, ...] = (cache.tag, *names) if names is not None else (cache.tag, ANY_CHANGE)
        self.store.put(cache.tag, key, entry, sources)

    def keep_shared(self, key: CacheKey, entry: CachedReply, names: frozenset[str]) -> None:
        """Keep an answer every client gets, built from the table ``names``."""
        entry.built_from = names
        entry.shared = True
        self.store.put(self.shared.tag, key, entry, tuple(names))

    def for_view(self, key: str) -> ReplyCache:
        cache = self.views.get(key)
        if cache is None:
            cache = self.views[key] = ReplyCache(clock=self.clock, store=self.store, tag=(CLIENT, key))
        return cache

    def clear(self, changed: set[str] | None = None, views: set[str] | None = None) -> None:
        """Forget what an answers change made stale: the entries built from a ``changed`` name,
        the partitions of the clients whose view changed (``views``), and the entries of unknown
        origin. None: every name, or every client's view."""
        store = self.store
        if views is None:
            store.drop_sources([cache.tag for cache in self.views.values()])
            self.views = {}
        else:
            store.drop_sources([(CLIENT, key) for key in views])
            for key in views:
                self.views.pop(key, None)
        if changed is None:
            for shared_key in list(store.shared_keys):
                store.delete(self.shared.tag, shared_key)
        else:
            store.drop_sources(changed)
        store.drop_sources((ANY_CHANGE,))
        self.generation += 1

    def __len__(self) -> int:
        """Entries that can still be served: the clients' own and the shared ones."""
        return self.store.counts[CLIENT] + self.store.counts[SHARED]
