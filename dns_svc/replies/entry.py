"""A cached reply is finished wire bytes plus what to patch; a hit is a few slices joined,
never a parse. That is what lets a Python server keep up with dnsmasq: a parsed-object cache
costs 10x more per hit and its garbage collection pauses show up as p99 spikes.

Everything that does not depend on the query is prepared once: one wire variant per rotation
of the address records (at store time), the TTL-aged variants (at most once per second of age),
and the reply after the ID for each (rotation, RD/CD bits, letter case) actually seen.
"""

from __future__ import annotations

import struct

from dns_svc.respond import truncated, without_additional
from dns_svc.wire import (
    FLAG_CD,
    FLAG_RD,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    RCODE_SERVFAIL,
    RawQuery,
    ReplyLayout,
    layout,
    reply_tail,
)

_pack_ttl = struct.Struct("!I").pack_into
_COPIED = FLAG_RD | FLAG_CD


def _rotations(wire: bytes, rotate: tuple[int, int, int] | None) -> tuple[bytes, ...]:
    if rotate is None:
        return (wire,)
    start, count, size = rotate
    end = start + count * size
    return tuple(
        wire[:start] + wire[start + k * size : end] + wire[start : start + k * size] + wire[end:] for k in range(count)
    )


class CachedReply:
    # The layout's parts are kept as plain tuples of numbers rather than the layout object: the
    # garbage collector stops following those, and the global cache holds hundreds of thousands.
    __slots__ = (
        "_aged",
        "_aged_for",
        "_tails",
        "built_from",
        "countdown",
        "dropped",
        "expires_at",
        "shared",
        "slim",
        "stored_at",
        "ttl_offsets",
        "ttls",
        "turn",
        "variants",
        "wire",
    )

    def __init__(
        self, wire: bytes, layout: ReplyLayout | None, stored_at: float, expires_at: float, countdown: bool
    ) -> None:
        self.wire = wire
        self.stored_at = stored_at
        self.expires_at = expires_at
        self.countdown = countdown
        self.dropped = (
            False  # set when its cache lets it go: a reference kept elsewhere (the packet cache) must not serve it
        )
        self.turn = 0
        self.built_from: frozenset[str] | None = None  # local answers: the table names behind it
        self.shared = False  # kept in the shared partition: the same reply for every client
        self._aged_for = 0
        self._tails: dict[tuple[int, int, bytes], bytes] | None = None  # made on first use: 100k entries add up
        self.variants: tuple[bytes, ...] = (wire,)
        self._aged: tuple[bytes, ...] = (wire,)
        self.ttl_offsets: tuple[int, ...] = ()
        self.ttls: tuple[int, ...] = ()
        self.slim: CachedReply | None = None
        if layout is not None:
            self._read(layout)

    def servable(self, now: float) -> bool:
        """Whether this reply may still be served as it is: the one validity rule of every cache
        that holds it (the store's partitions, the packet cache). Not once its cache let it go
        (``dropped``: a reference kept elsewhere must not outlive it), nor from its expiry on."""
        return not self.dropped and now < self.expires_at

    def stale_within(self, now: float, stale_for: float) -> bool:
        """Expired, but less than ``stale_for`` ago: kept for serve-stale (RFC 8767)."""
        return self.expires_at <= now < self.expires_at + stale_for

    def _read(self, layout: ReplyLayout) -> None:
        self.ttl_offsets = layout.ttl_offsets
        self.ttls = layout.ttls
        self.variants = self._aged = _rotations(self.wire, layout.rotate)
        self.slim = self._without_additional() if len(self.wire) > 512 else None

    def _without_additional(self) -> CachedReply | None:
        """The same reply minus its additional records (OPT kept), for clients with a small budget."""
        wire = without_additional(self.wire)
        if wire is None:
            return None
        return CachedReply(wire, layout(wire), self.stored_at, self.expires_at, self.countdown)

    def _age(self, elapsed: int) -> tuple[bytes, ...]:
        if elapsed != self._aged_for:
            aged = []
            for variant in self.variants:
                buf = bytearray(variant)
                for offset, ttl in zip(self.ttl_offsets, self.ttls, strict=True):
                    _pack_ttl(buf, offset, ttl - elapsed if ttl > elapsed else 0)
                aged.append(bytes(buf))
            self._aged = tuple(aged)
            self._aged_for = elapsed
            self._tails = None
        return self._aged

    def render_stale(self, query: RawQuery, budget: int, ttl: int = 30) -> bytes:
        """The reply past its expiry, for serve-stale (RFC 8767): every TTL ``ttl``, so that the
        client asks again soon, when the upstream may be back."""
        buf = bytearray(self.variants[0])
        for offset in self.ttl_offsets:
            _pack_ttl(buf, offset, ttl)
        wire = query.packet[:2] + reply_tail(bytes(buf), query.qname, query.flags)
        if len(wire) > budget:
            return truncated(query, wire)
        return wire

    def render(self, query: RawQuery, now: float, budget: int = 65535) -> bytes:
        """The reply for ``query``: its ID, its RD/CD bits, its letter case, TTLs aged, A records rotated;
        without the additional section, or empty with TC, when it would not fit in ``budget`` bytes."""
        return query.packet[:2] + self.render_tail(query, now, budget)

    def render_tail(self, query: RawQuery, now: float, budget: int) -> bytes:
        """``render`` without the two ID bytes, so a packet cache can reuse one parsed query."""
        if len(self.wire) > budget:
            if self.slim is not None and len(self.slim.wire) <= budget:
                return self.slim.render_tail(query, now, budget)
            return truncated(query, self.wire)[2:]
        variants = self._age(int(now - self.stored_at)) if self.countdown else self.variants
        turn = 0
        if len(variants) > 1:
            self.turn = turn = (self.turn + 1) % len(variants)
        bits = query.flags & _COPIED
        qname = query.qname
        # Everything after the ID depends only on (rotation, RD/CD, the question's letter case):
        # remember the last few, so a hit is one concatenation.
        tails = self._tails
        if tails is None:
            tails = self._tails = {}
        tail = tails.get((turn, bits, qname))
        if tail is None:
            tail = reply_tail(variants[turn], qname, bits)
            if len(tails) >= 16:
                tails.clear()
            tails[(turn, bits, qname)] = tail
        return tail


def lifetime_of(lay: ReplyLayout, failure: bool, countdown: bool, max_ttl: float, servfail_ttl: float) -> float | None:
    """How long a reply may be cached; None or 0 when it must not be (RFC 2308 for negative
    answers: the SOA's TTL and minimum; SERVFAIL for a few seconds at most)."""
    if lay.truncated:
        return None
    if failure or lay.rcode == RCODE_SERVFAIL:
        lifetime: float | None = servfail_ttl
    elif lay.rcode not in (RCODE_NOERROR, RCODE_NXDOMAIN):
        lifetime = None
    elif not countdown:
        lifetime = max_ttl  # authoritative data: valid until the answers change (the cache is cleared)
    elif lay.answers:
        lifetime = min(max_ttl, lay.min_ttl or 0)
    else:
        lifetime = None if lay.negative_ttl is None else min(max_ttl, lay.negative_ttl)
    return lifetime if lifetime and lifetime > 0 else None


class _NotLocal:
    """Marker in a client cache: this name is not in the local answers for this client, so the
    global cache may answer it without asking the answers table again."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_LOCAL"


NOT_LOCAL = _NotLocal()
