"""A cached reply is finished wire bytes plus where to patch them; a hit is a copy and a few
writes, never a parse. That is what lets a Python server keep up with dnsmasq: a parsed-object
cache costs 10x more per hit and its garbage collection pauses show up as p99 spikes."""

from __future__ import annotations

import struct

from dns_svc.wire import FLAG_CD, FLAG_RD, RawQuery, ReplyLayout

_pack_ttl = struct.Struct("!I").pack_into


class CachedReply:
    __slots__ = ("countdown", "expires_at", "layout", "stored_at", "turn", "wire")

    def __init__(self, wire: bytes, layout: ReplyLayout, stored_at: float, expires_at: float,
                 countdown: bool) -> None:
        self.wire = wire
        self.layout = layout
        self.stored_at = stored_at
        self.expires_at = expires_at
        self.countdown = countdown
        self.turn = 0

    def render(self, query: RawQuery, now: float) -> bytes:
        """The reply for ``query``: its ID, its RD/CD bits, its letter case, TTLs aged, A records rotated."""
        buf = bytearray(self.wire)
        buf[0:2] = query.packet[0:2]
        keep = buf[2] << 8 | buf[3]
        flags = (keep & ~(FLAG_RD | FLAG_CD)) | (query.flags & (FLAG_RD | FLAG_CD))
        buf[2] = flags >> 8
        buf[3] = flags & 0xFF
        buf[12:12 + len(query.qname)] = query.qname
        lay = self.layout
        if self.countdown:
            elapsed = int(now - self.stored_at)
            if elapsed > 0:
                for offset, ttl in zip(lay.ttl_offsets, lay.ttls, strict=True):
                    _pack_ttl(buf, offset, ttl - elapsed if ttl > elapsed else 0)
        if lay.rotate is not None:
            start, count, size = lay.rotate
            self.turn = (self.turn + 1) % count
            if self.turn:
                cut = start + self.turn * size
                end = start + count * size
                buf[start:end] = buf[cut:end] + buf[start:cut]
        return bytes(buf)


class _NotLocal:
    """Marker in a client cache: this name is not in the local answers for this client, so the
    global cache may answer it without asking the answers table again."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_LOCAL"


NOT_LOCAL = _NotLocal()
