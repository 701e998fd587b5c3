"""Local answers from the answers table, for this client's view.

The question name is tried as sent, then with each of the client's search suffixes
(rancher-dns's server-side search); the answer's owner is always the name as asked. A/AAAA
follow CNAME chains through the table (loop-safe, at most 10 links) and, when the chain leaves
the table, resolve its end upstream (for a client outside ``--allow-recursion``: the chain
without its end, ``refused``). A name that exists with other types gets NODATA, never
NXDOMAIN (AAAA for an A-only name is the classic case: nginx and musl choke on NXDOMAIN).
"""

from __future__ import annotations

from dnslib import AAAA, CNAME, PTR, QTYPE, RR, SRV, TXT, A, DNSRecord

from dns_svc.answers import NameRecords
from dns_svc.chain import PASS, WAIT, Answer, Chase, Query, Source, Step, Verdict, failure
from dns_svc.replies import ClientCaches, cache_key
from dns_svc.respond import reply_for
from dns_svc.wire import (
    QTYPE_A,
    QTYPE_AAAA,
    QTYPE_ANY,
    QTYPE_CNAME,
    QTYPE_PTR,
    QTYPE_SRV,
    QTYPE_TXT,
)
from dns_svc.zone import soa_when_empty

MAX_CNAME_DEPTH = 10
# A CNAME chain through the table: each link (its records, its target), the records that end it
# with addresses (None: a loop, too long, or it leaves the table), and where it leaves the table.
Followed = tuple[list[tuple[NameRecords, str]], NameRecords | None, str | None]


class _Build:
    """What one answer was built from: the table names read, and whether every client would get
    the same reply (no search suffix, no link alias, no client's own upstreams)."""

    __slots__ = ("names", "shared")

    def __init__(self, name: str, shared: bool) -> None:
        self.names = [name]
        self.shared = shared

    def lookup(self, query: Query, name: str) -> NameRecords | None:
        """A lookup on behalf of the answer; a link alias makes the answer this client's own."""
        if name in query.view.records:
            self.shared = False
        self.names.append(name)
        return query.table.lookup(query.view, name)


class LocalAnswers(Step):
    name = "local"

    def __init__(self, ttl: int, ndots: int = 0, chase: Chase | None = None, memo: ClientCaches | None = None) -> None:
        self.ttl = ttl
        self.ndots = ndots
        self.chase = chase
        # Where "nothing local for this question, in this view" is remembered until the answers
        # change, so that a name bound upstream costs one lookup instead of one per search suffix.
        # Only a name asked again (answered from the global cache) is remembered: a name asked
        # once (a CDN's random label, a telemetry beacon) would take a slot of the caches' one
        # memory budget, and the time to fill it, for nothing.
        self.memo = memo

    def check(self, query: Query) -> Verdict:
        found = self.find(query)
        if found is None:
            return PASS
        rec, build = found
        followed = self.followed(query, rec, build)
        if followed is not None and followed[2] is not None and self.chase is not None:
            return WAIT  # the chain leaves the table: its end is resolved upstream (``refused``: not)
        return self.build(query, rec, build, followed, None)

    def refused(self, query: Query) -> Answer:
        """A chain that leaves the table, for a client outside ``--allow-recursion``: the chain
        through the table without its end, which is not chased (what an authoritative server
        answers; the client's own resolver may follow the last CNAME). ``Source.REFUSED``, so that
        no cache keeps it: shared, this client's answer would have stood for every client's, the
        chase skipped for all of them until the answers changed."""
        found = self.find(query)
        assert found is not None  # the query's table and generation are the ones check saw
        rec, build = found
        answer = self.build(query, rec, build, self.followed(query, rec, build), None)
        return Answer(answer.wire, Source.REFUSED, countdown=False)

    async def wait(self, query: Query) -> Answer:
        """A CNAME chain that leaves the table (``check`` said so): its end resolved upstream,
        then the answer."""
        # The table is updated in place between queries: read again now, in one piece, it may
        # have changed since ``check`` (see ``TableRef``).
        found = self.find(query)
        if found is None:
            return failure(query.raw)  # the name left the table since: kept by no cache, asked again
        assert self.chase is not None
        rec, build = found
        followed = self.followed(query, rec, build)
        if followed is None or followed[2] is None:
            return self.build(query, rec, build, followed, None)  # it no longer leaves the table
        if query.view.recurse:
            build.shared = False  # resolved by this client's own upstreams: not for the others
        qtype = QTYPE_AAAA if self.qtype_of(query, rec) == QTYPE_AAAA else QTYPE_A
        chased = await self.chase(query, followed[2], qtype) or []
        return self.build(query, rec, build, followed, chased)

    def back(self, query: Query, answer: Answer) -> Answer:
        memo = self.memo
        if memo is not None and answer.source is Source.GLOBAL_CACHE and query.generation == memo.generation:
            # asked again: worth remembering, until one of the names tried has records
            key = cache_key(query.raw)
            if not memo.known_not_local(query.view, key, memo.clock()):
                names = query.table.candidates(query.view, query.raw.lower_text(), self.ndots)
                memo.remember_not_local(query.view, key, names)
        return answer

    def find(self, query: Query) -> tuple[NameRecords, _Build] | None:
        """The records the question names, as asked or with one of the client's search suffixes."""
        table, view = query.table, query.view
        memo = self.memo
        if memo is not None and memo.known_not_local(view, cache_key(query.raw), memo.clock()):
            return None
        tried = table.candidates(view, query.raw.lower_text(), self.ndots)
        for position, candidate in enumerate(tried):
            found = table.lookup(view, candidate)
            if found is not None:
                build = _Build(candidate, position == 0 and candidate not in view.records)
                if position:
                    build.names.extend(tried[:position])  # the answer changes once one of these has records
                return found, build
        return None

    def qtype_of(self, query: Query, rec: NameRecords) -> int:
        qtype = query.raw.qtype
        return self.one_type_for_any(rec) if qtype == QTYPE_ANY else qtype

    def followed(self, query: Query, rec: NameRecords, build: _Build) -> Followed | None:
        """The CNAME chain of an address question (``follow``), walked once per answer; None for
        other questions."""
        return self.follow(query, rec, build) if self.qtype_of(query, rec) in (QTYPE_A, QTYPE_AAAA) else None

    def follow(self, query: Query, rec: NameRecords, build: _Build) -> Followed:
        """The CNAME chain from ``rec`` through the table (loop-safe, ``MAX_CNAME_DEPTH`` links at
        most), its lookups recorded in ``build``."""
        seen: set[str] = set()
        links: list[tuple[NameRecords, str]] = []
        current = rec
        for _ in range(MAX_CNAME_DEPTH):
            if not current.cname or current.a or current.aaaa:
                return links, current, None
            target = current.cname
            links.append((current, target))
            if target in seen:
                return links, None, None  # a loop: the chain so far is the answer
            seen.add(target)
            following = build.lookup(query, target)
            if following is None:
                return links, None, target
            current = following
        if current.cname and not (current.a or current.aaaa):
            return links, None, None  # too long: stop at the depth limit
        return links, current, None

    def build(
        self, query: Query, rec: NameRecords, build: _Build, followed: Followed | None, chased: list[RR] | None
    ) -> Answer:
        """The reply from the table's records: for an address question along its CNAME chain
        (``followed``) and, for a chain that left the table, ``chased``: the upstream's records
        for its end."""
        reply = reply_for(query)
        owner = query.request.q.qname
        qtype = self.qtype_of(query, rec)
        countdown = False
        if followed is not None:
            countdown = self.addresses(reply, owner, qtype, followed, chased)
        if qtype == QTYPE_CNAME and rec.cname:
            reply.add_answer(RR(owner, QTYPE.CNAME, ttl=self.ttl_of(rec), rdata=CNAME(rec.cname)))
        if qtype == QTYPE_TXT:
            for text in rec.txt:
                reply.add_answer(RR(owner, QTYPE.TXT, ttl=self.ttl_of(rec), rdata=TXT(text)))
        if qtype == QTYPE_PTR and rec.ptr:
            reply.add_answer(RR(owner, QTYPE.PTR, ttl=self.ttl_of(rec), rdata=PTR(rec.ptr)))
        if qtype == QTYPE_SRV:
            self.services(query, reply, owner, rec, build)
        zone = query.table.zone_of(query.raw.lower_text()) if not reply.rr else None
        if zone is not None:
            soa_when_empty(reply, query.table, zone, self.ttl)
        return Answer(
            bytes(reply.pack()), Source.LOCAL, countdown, built_from=frozenset(build.names), shared=build.shared
        )

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

    def addresses(
        self, reply: DNSRecord, owner: object, qtype: int, followed: Followed, chased: list[RR] | None
    ) -> bool:
        """Add the CNAME chain and the addresses; True when upstream data (with its own TTLs) was added."""
        links, end, outside = followed
        name = owner
        for current, target in links:
            reply.add_answer(RR(name, QTYPE.CNAME, ttl=self.ttl_of(current), rdata=CNAME(target)))
            name = target
        if outside is not None:
            for rr in chased or ():
                reply.add_answer(rr)
            return bool(chased)
        if end is None:
            return False
        ttl = self.ttl_of(end)
        if qtype == QTYPE_A:
            for ip in end.a:
                reply.add_answer(RR(name, QTYPE.A, ttl=ttl, rdata=A(ip)))
        if qtype == QTYPE_AAAA:
            for ip in end.aaaa:
                reply.add_answer(RR(name, QTYPE.AAAA, ttl=ttl, rdata=AAAA(ip)))
        return False

    def services(self, query: Query, reply: DNSRecord, owner: object, rec: NameRecords, build: _Build) -> None:
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
            target = build.lookup(query, srv.target)
            if target is None:
                continue
            for ip in target.a:
                reply.add_ar(RR(srv.target, QTYPE.A, ttl=self.ttl_of(target), rdata=A(ip)))
            for ip in target.aaaa:
                reply.add_ar(RR(srv.target, QTYPE.AAAA, ttl=self.ttl_of(target), rdata=AAAA(ip)))
