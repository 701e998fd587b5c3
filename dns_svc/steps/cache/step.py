"""The two cache steps: the client cache (local answers, per client view or shared) and the
global cache (upstream answers), both partitions of one ``ReplyStore`` (``dns_svc.replies``).

Entries live for min(cap, smallest answer TTL); negative answers for the SOA minimum
(RFC 2308); SERVFAIL for a few seconds at most; local answers until the answers change.
"""

from __future__ import annotations

from dns_svc.chain import PASS, Answer, Pass, Query, Source, Step, Verdict, failure
from dns_svc.replies import CachedReply, ClientCaches, ReplyCache, cache_key, global_key
from dns_svc.replies.entry import lifetime_of
from dns_svc.respond import budget
from dns_svc.wire import ReplyLayout, cap_ttls, layout


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


class ClientCacheStep(Step):
    """First step: finished local answers for this client (or shared by every client)."""

    name = "client_cache"

    def __init__(self, caches: ClientCaches, local_ttl_cap: float = 86400.0) -> None:
        self.caches = caches
        self.local_ttl_cap = local_ttl_cap

    def check(self, query: Query) -> Verdict:
        caches = self.caches
        now = caches.clock()
        raw = query.raw
        entry = caches.lookup(query.view, cache_key(raw), now)
        if entry is None:
            return PASS
        size = budget(raw, query.transport)
        return Answer(entry.render(raw, now, size), Source.CLIENT_CACHE, entry.countdown, cached=entry)

    def back(self, query: Query, answer: Answer) -> Answer:
        caches = self.caches
        if query.generation != caches.generation or answer.source not in (Source.LOCAL, Source.AUTHORITY):
            return answer  # not ours to keep, or the answers changed while it was built: stale
        stored = entry_for(answer, caches.clock(), self.local_ttl_cap, 0)
        if stored is not None:
            key = cache_key(query.raw)
            built_from = answer.built_from
            if answer.shared and built_from is not None:
                caches.keep_shared(key, stored, built_from)
            else:
                stored.built_from = built_from
                caches.keep(query.view, key, stored, built_from)
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
        self._stale_pass = Pass(self.stale_answer, stale_after)  # one per step, not one per query

    def check(self, query: Query) -> Verdict:
        if not query.recursion_allowed:
            return PASS  # recursive answers are for the clients that may recurse, cached or not
        cache = self.cache
        now = cache.clock()
        raw = query.raw
        key = global_key(query.view, cache_key(raw))
        entry = cache.get(key, now)
        if type(entry) is CachedReply:
            return Answer(entry.render(raw, now, budget(raw, query.transport)), Source.GLOBAL_CACHE, cached=entry)
        if cache.stale_for and cache.stale(key, now) is not None:
            return self._stale_pass  # the client-response timer: stale if the upstreams are slow
        return PASS

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
            return failure(query.raw)
        self.stale_served += 1
        ttl = min(self.stale_ttl, int(self.max_ttl))
        return Answer(entry.render_stale(query.raw, budget(query.raw, query.transport), ttl), Source.STALE)

    def back(self, query: Query, answer: Answer) -> Answer:
        # A client outside --allow-recursion never brings one of these up: the recursion gate
        # (``Chain.walk``) answers it with ``Source.REFUSED`` before anything is sent.
        if answer.source not in (Source.UPSTREAM, Source.GATHER, Source.FAILURE):
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
