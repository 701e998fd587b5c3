"""Local answers from the answers table, for this client's view.

The question name is tried as sent, then with each of the client's search suffixes
(rancher-dns's server-side search); the answer's owner is always the name as asked. A/AAAA
follow CNAME chains through the table (loop-safe, at most 10 links) and, when the chain leaves
the table, resolve its end upstream. A name that exists with other types gets NODATA, never
NXDOMAIN (AAAA for an A-only name is the classic case: nginx and musl choke on NXDOMAIN).
"""

from __future__ import annotations

from dnslib import AAAA, CNAME, PTR, QTYPE, RR, SRV, TXT, A, DNSRecord

from dns_svc.answers import NameRecords
from dns_svc.chain import Answer, CallNext, Chase, Query, Source, Step
from dns_svc.respond import reply_for
from dns_svc.wire import QTYPE_A, QTYPE_AAAA, QTYPE_ANY, QTYPE_CNAME, QTYPE_PTR, QTYPE_SRV, QTYPE_TXT
from dns_svc.zone import soa_rr

MAX_CNAME_DEPTH = 10


class LocalAnswers(Step):
    name = "local"

    def __init__(self, ttl: int, ndots: int = 0, chase: Chase | None = None) -> None:
        self.ttl = ttl
        self.ndots = ndots
        self.chase = chase

    async def resolve(self, query: Query, call_next: CallNext) -> Answer:
        found = None if query.skip_local else self.find(query)
        if found is None:
            return await call_next(query)
        return await self.answer(query, found)

    def passes(self, query: Query) -> bool:
        return query.skip_local or self.find(query) is None

    def find(self, query: Query) -> NameRecords | None:
        """The records the question names, as asked or with one of the client's search suffixes."""
        table, view = query.table, query.view
        for position, candidate in enumerate(table.candidates(view, query.raw.lower_text(), self.ndots)):
            found = table.lookup(view, candidate)
            if found is not None:
                query.shared_answer = position == 0 and candidate not in view.records
                query.built_from += (candidate,)
                return found
        return None

    @staticmethod
    def lookup(query: Query, name: str) -> NameRecords | None:
        """A lookup on behalf of the answer; a link alias makes the answer this client's own."""
        if name in query.view.records:
            query.shared_answer = False
        query.built_from += (name,)
        return query.table.lookup(query.view, name)

    async def answer(self, query: Query, rec: NameRecords) -> Answer:
        reply = reply_for(query)
        owner = query.request.q.qname
        qtype = query.raw.qtype
        if qtype == QTYPE_ANY:
            qtype = self.one_type_for_any(rec)
        countdown = False
        if qtype in (QTYPE_A, QTYPE_AAAA):
            countdown = await self.addresses(query, reply, owner, rec, qtype)
        if qtype == QTYPE_CNAME and rec.cname:
            reply.add_answer(RR(owner, QTYPE.CNAME, ttl=self.ttl_of(rec), rdata=CNAME(rec.cname)))
        if qtype == QTYPE_TXT:
            for text in rec.txt:
                reply.add_answer(RR(owner, QTYPE.TXT, ttl=self.ttl_of(rec), rdata=TXT(text)))
        if qtype == QTYPE_PTR and rec.ptr:
            reply.add_answer(RR(owner, QTYPE.PTR, ttl=self.ttl_of(rec), rdata=PTR(rec.ptr)))
        if qtype == QTYPE_SRV:
            self.services(query, reply, owner, rec)
        if not reply.rr:
            zone = query.table.zone_of(query.raw.lower_text())
            if zone is not None:
                reply.add_auth(soa_rr(query.table, zone, self.ttl))
        return Answer(bytes(reply.pack()), Source.LOCAL, countdown)

    @staticmethod
    def one_type_for_any(rec: NameRecords) -> int:
        """ANY gets one kind of record, not all of them (RFC 8482): a full ANY answer for a big
        service is a 20 KB reply to a 40-byte query, an amplifier for anyone who can spoof."""
        if rec.a or rec.aaaa or rec.cname:
            return QTYPE_A
        if rec.srv:
            return QTYPE_SRV
        if rec.txt:
            return QTYPE_TXT
        return QTYPE_PTR

    def ttl_of(self, rec: NameRecords) -> int:
        return rec.ttl if rec.ttl is not None else self.ttl

    async def addresses(self, query: Query, reply: DNSRecord, owner: object, rec: NameRecords, qtype: int) -> bool:
        """Add the CNAME chain and the addresses; True when upstream data (with its own TTLs) was added."""
        seen: set[str] = set()
        name = owner
        current = rec
        for _ in range(MAX_CNAME_DEPTH):
            if not current.cname or current.a or current.aaaa:
                break
            target = current.cname
            reply.add_answer(RR(name, QTYPE.CNAME, ttl=self.ttl_of(current), rdata=CNAME(target)))
            if target in seen:
                return False  # a loop: the chain so far is the answer
            seen.add(target)
            following = self.lookup(query, target)
            if following is None:
                return await self.chase_upstream(query, reply, target, qtype)
            name, current = target, following
        if current.cname and not (current.a or current.aaaa):
            return False  # too long: stop at the depth limit
        ttl = self.ttl_of(current)
        if qtype == QTYPE_A:
            for ip in current.a:
                reply.add_answer(RR(name, QTYPE.A, ttl=ttl, rdata=A(ip)))
        if qtype == QTYPE_AAAA:
            for ip in current.aaaa:
                reply.add_answer(RR(name, QTYPE.AAAA, ttl=ttl, rdata=AAAA(ip)))
        return False

    async def chase_upstream(self, query: Query, reply: DNSRecord, target: str, qtype: int) -> bool:
        if self.chase is None or not query.recursion_allowed:
            return False
        if query.view.recurse:
            query.shared_answer = False  # resolved by this client's own upstreams: not for the others
        records = await self.chase(query, target, QTYPE_AAAA if qtype == QTYPE_AAAA else QTYPE_A)
        if not records:
            return False
        for rr in records:
            reply.add_answer(rr)
        return True

    def services(self, query: Query, reply: DNSRecord, owner: object, rec: NameRecords) -> None:
        ttl = self.ttl_of(rec)
        extra_done: set[str] = set()
        for srv in rec.srv:
            reply.add_answer(
                RR(
                    owner,
                    QTYPE.SRV,
                    ttl=ttl,
                    rdata=SRV(priority=srv.priority, weight=srv.weight, port=srv.port, target=srv.target),
                )
            )
            if srv.target in extra_done:
                continue
            extra_done.add(srv.target)
            target = self.lookup(query, srv.target)
            if target is None:
                continue
            for ip in target.a:
                reply.add_ar(RR(srv.target, QTYPE.A, ttl=self.ttl_of(target), rdata=A(ip)))
            for ip in target.aaaa:
                reply.add_ar(RR(srv.target, QTYPE.AAAA, ttl=self.ttl_of(target), rdata=AAAA(ip)))
