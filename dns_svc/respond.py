"""Fit a reply to what the client can take: 512 bytes over UDP without EDNS, the advertised
EDNS size with it, 65535 over TCP. Too big for UDP: drop the additional section first (SRV
glue), then answer empty with TC so the client retries over TCP (rancher-dns's respond.go)."""

from __future__ import annotations

from collections.abc import Sequence

from dnslib import EDNS0, QTYPE, DNSRecord, EDNSOption

from dns_svc.query import Query
from dns_svc.wire import EDNS_UDP_SIZE, FLAG_AA, RawQuery, header_only_reply, servfail


def budget(raw: RawQuery, transport: str) -> int:
    if transport == "tcp":
        return 65535
    return raw.udp_size if raw.edns else 512


def without_additional(wire: bytes) -> bytes | None:
    """The reply minus its additional records (OPT kept); None when there are none to drop or
    the reply cannot be read."""
    try:
        record = DNSRecord.parse(wire)
    except Exception:
        return None
    kept = [rr for rr in record.ar if rr.rtype == QTYPE.OPT]
    if len(kept) == len(record.ar):
        return None
    record.ar = kept
    return bytes(record.pack())


def truncated(raw: RawQuery, wire: bytes) -> bytes:
    """An empty reply with TC for ``raw``, keeping the rcode and AA bit of ``wire``."""
    aa = bool(wire[2] << 8 & FLAG_AA) if len(wire) > 3 else False
    return header_only_reply(raw, wire[3] & 0xF if len(wire) > 3 else 0, tc=True, aa=aa)


def fit(wire: bytes, raw: RawQuery, transport: str) -> bytes:
    limit = budget(raw, transport)
    if len(wire) <= limit:
        return wire
    if transport == "tcp":
        return servfail(raw)
    slim = without_additional(wire)
    if slim is not None and len(slim) <= limit:
        return slim
    return truncated(raw, wire)


def reply_for(query: Query, options: Sequence[EDNSOption] = ()) -> DNSRecord:
    """An empty authoritative reply to ``query``, with OPT (carrying ``options``) when the query
    had one: RFC 6891 7, no OPT in a reply to a query without."""
    reply = query.request.reply(ra=1, aa=1)
    # dnslib's reply copies the query's flag bits, AD among them; we validate nothing, and a client
    # with glibc's trust-ad would believe it (RFC 4035 3.1.6): only RD and CD come from the query
    reply.header.ad = 0
    if query.raw.edns:
        reply.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE, flags="do" if query.raw.do else "", opts=list(options)))
    return reply
