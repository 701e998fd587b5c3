"""Names inside our zones never go upstream: the apex answers SOA and NS, a name that exists
(or has names below it) gets NODATA, anything else NXDOMAIN, each with the SOA (RFC 2308) so
resolvers know how long to remember it. rancher-dns answered SERVFAIL here in some paths, which
made musl abandon its search list and lookups take five seconds."""

from __future__ import annotations

from dns_svc.chain import PASS, Answer, Query, Source, Step, Verdict
from dns_svc.respond import reply_for
from dns_svc.wire import QTYPE_ANY, QTYPE_NS, QTYPE_SOA, RCODE_NXDOMAIN
from dns_svc.zone import ns_rr, soa_rr, soa_when_empty


class Authority(Step):
    name = "authority"

    def __init__(self, ttl: int, ndots: int = 0) -> None:
        self.ttl = ttl
        self.ndots = ndots  # the local step's: which search candidates it tried before passing

    def check(self, query: Query) -> Verdict:
        name = query.raw.lower_text()
        zone = query.table.zone_of(name)
        if zone is None:
            return PASS
        reply = reply_for(query)
        qtype = query.raw.qtype
        if name == zone and qtype in (QTYPE_SOA, QTYPE_ANY):
            reply.add_answer(soa_rr(query.table, zone, self.ttl))
        if name == zone and qtype in (QTYPE_NS, QTYPE_ANY):
            reply.add_answer(ns_rr(zone, self.ttl))
        if not reply.rr and not query.table.exists(name):
            reply.header.rcode = RCODE_NXDOMAIN
        soa_when_empty(reply, query.table, zone, self.ttl)
        # Kept until one of the names the local step tried in vain has records, or this name
        # gains names below it; the apex's SOA carries the serial, which moves with every change.
        table = query.table
        built_from = None if name == zone else frozenset(table.candidates(query.view, name, self.ndots))
        return Answer(bytes(reply.pack()), Source.AUTHORITY, countdown=False, built_from=built_from)
