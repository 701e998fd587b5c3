"""The packet cache: a repeat UDP query, byte for byte, answered without reading its question.

An entry points at a reply of the store's (``CachedReply``) and is valid exactly as long as that
reply is (``CachedReply.servable``): gone from its cache, expired, or of another answers
generation, it is a miss. A shared local answer (the same for every client, ``built_from`` set)
outlives a fleet change that did not touch the names it was built from, as it does in the client
cache, unless the client's own records now cover its name (``shared_serves``): a fleet change a
second then costs a refill of what changed, not of every entry.
"""

from __future__ import annotations

from dns_svc.answers import ClientView
from dns_svc.replies.entry import CachedReply
from dns_svc.replies.store import cache_key, shared_serves
from dns_svc.wire import RawQuery


class PacketEntry:
    """What a packet-cache hit needs: the reply, the query it was parsed from once (to render
    with), the budget it was rendered for, the answers generation it was last valid in, whether
    it is a recursive answer (which only some clients may have), and the question name (wire
    form, lower case) for the link-alias check. ``slot``: where its hits are counted
    (``ResponseTally.slot``: one reply, so one rcode and type), found on its first hit."""

    __slots__ = ("fixed", "generation", "name", "raw", "recursive", "reply", "size", "slot")

    def __init__(
        self, reply: CachedReply, raw: RawQuery, size: int, generation: int, recursive: bool, name: object
    ) -> None:
        self.reply = reply
        self.raw = raw
        self.size = size
        self.generation = generation
        self.recursive = recursive
        self.name = name
        self.slot: list[float] | None = None
        # The tail itself when it can never change: a reply that does not count its TTLs down
        # (a local answer), with one order of records, that fits the budget, rendered for this
        # one query. Its hits then skip the reply's own memo (a key tuple, a hash, a lookup).
        self.fixed: bytes | None = None

    def tail(self, now: float) -> bytes:
        """The reply to this exact query after its ID, at ``now``."""
        fixed = self.fixed
        if fixed is not None:
            return fixed
        reply = self.reply
        tail = reply.render_tail(self.raw, now, self.size)
        if not reply.countdown and len(reply.variants) == 1 and len(reply.wire) <= self.size:
            self.fixed = tail
        return tail


class PacketCache:
    """The exact bytes of a query (all but its ID) and the client's view, mapped to the cached
    reply that answers it (see the module's docstring for how long).

    One dict of queries per view rather than one dict keyed by (view, query): a hit then builds
    no key tuple, and its lookups compare a view key by identity and the query's bytes once,
    instead of a tuple hashed and compared element by element (the largest part of a hit's
    Python time with many clients: bench/RESULTS.md)."""

    def __init__(self, capacity: int = 65536) -> None:
        self.capacity = capacity
        self._views: dict[str, dict[bytes, PacketEntry]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def get(self, view: ClientView, data: bytes, generation: int, now: float) -> PacketEntry | None:
        """The entry that answers ``data`` for this view, while it may (``PacketEntry.tail``
        renders the reply; ``recursive`` says whether only some clients may have it)."""
        entries = self._views.get(view.key)
        if entries is None:
            return None
        k = data[2:]
        hit = entries.get(k)
        if hit is None:
            return None
        reply = hit.reply
        if not reply.servable(now):
            del entries[k]
            self._size -= 1
            return None
        if hit.generation != generation:
            if hit.recursive or (reply.shared and not shared_serves(view, hit.name)):
                del entries[k]
                self._size -= 1
                return None
            hit.generation = generation  # a local answer the change left alone: still this one
        return hit

    def put(
        self, view_key: str, raw: RawQuery, reply: CachedReply, size: int, generation: int, recursive: bool
    ) -> None:
        if self._size >= self.capacity:
            self._views.clear()  # cheap and rare: it refills from the caches behind it
            self._size = 0
        entries = self._views.get(view_key)
        if entries is None:
            entries = self._views[view_key] = {}
        k = raw.packet[2:]
        if k not in entries:
            self._size += 1
        entries[k] = PacketEntry(reply, raw, size, generation, recursive, cache_key(raw)[0])
