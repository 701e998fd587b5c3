"""One distributed domain over several clusters (gathersrv, done better).

A SRV, A, AAAA or TXT question under the distributed domain is asked of every cluster in
parallel (or of one cluster, when the name starts with that cluster's prefix), with the
distributed domain swapped for the cluster's. The answers are rewritten back: SRV owners become
the question, SRV and CNAME targets become ``<prefix><host>.<distributed domain>``, address
records answering the question are owned by the question (gathersrv left them prefixed, so they
did not match it), glue is owned by the rewritten target names. Records keep cluster order, not
arrival order; every TTL is the smallest one; any NOERROR makes the merge NOERROR. A cluster that
misses the deadline is left out; when none answers, SERVFAIL with Extended DNS Error 23.

Its check waits for every gathered question, whoever asks: for a client outside
``--allow-recursion`` the chain's recursion gate (``Chain.walk``) answers REFUSED in its place
(``Step.refused``), and no cluster is asked.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from dnslib import CNAME, EDNS0, QTYPE, RCODE, RR, SRV, DNSLabel, DNSRecord, EDNSOption

from dns_svc.answers import Upstream, fqdn, parse_upstream
from dns_svc.chain import PASS, WAIT, Answer, Forwarder, Query, Source, Step, Verdict
from dns_svc.metrics import GatherMetrics
from dns_svc.respond import reply_for
from dns_svc.wire import EDNS_UDP_SIZE, QTYPE_A, QTYPE_AAAA, QTYPE_SRV, QTYPE_TXT
from shared.logs import log_event

log = logging.getLogger("dns.gather")
GATHERED_TYPES = frozenset({QTYPE_SRV, QTYPE_A, QTYPE_AAAA, QTYPE_TXT})
EDE_OPTION, EDE_NETWORK_ERROR = 15, 23


@dataclass(frozen=True)
class Cluster:
    domain: str  # e.g. "cluster-a.local."
    prefix: str  # e.g. "a-"
    upstreams: tuple[Upstream, ...]


def parse_cluster(text: str) -> Cluster:
    """``DOMAIN=PREFIX@IP[:PORT][,IP[:PORT]...]``, e.g. ``cluster-a.local.=a-@127.0.0.2:53``."""
    domain, sep, rest = text.partition("=")
    prefix, at, servers = rest.partition("@")
    if not sep or not at or not domain.strip() or not servers.strip():
        raise ValueError(f"--cluster {text!r}: expected DOMAIN=PREFIX@IP[:PORT][,IP[:PORT]]")
    return Cluster(fqdn(domain), prefix.strip().lower(), tuple(parse_upstream(s) for s in servers.split(",")))


def _under(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


class GatherStep(Step):
    name = "gather"

    def __init__(
        self,
        domain: str,
        clusters: Sequence[Cluster],
        upstream: Forwarder,
        deadline: float,
        metrics: GatherMetrics | None = None,
    ) -> None:
        self.domain = fqdn(domain)
        self.clusters = tuple(clusters)
        self.upstream = upstream
        self.deadline = deadline
        self.metrics = metrics

    def check(self, query: Query) -> Verdict:
        return WAIT if self.gathers(query.raw.qtype, query.raw.lower_text()) else PASS

    async def wait(self, query: Query) -> Answer:
        qname = query.raw.text_name()
        lowered = query.raw.lower_text()
        if self.metrics:
            self.metrics.queries.labels(QTYPE.get(query.raw.qtype)).inc()
        targets = self.route(lowered)
        replies = await asyncio.gather(*(self.ask(cluster, sub, query) for cluster, sub in targets))
        return Answer(self.merge(query, qname, targets, replies), Source.GATHER)

    def gathers(self, qtype: int, name: str) -> bool:
        """Questions below the distributed domain, of a type worth merging."""
        return qtype in GATHERED_TYPES and _under(name, self.domain) and name != self.domain

    def route(self, name: str) -> list[tuple[Cluster, str]]:
        """The clusters to ask and what to ask each: a prefixed host goes to its cluster only."""
        head = name[: -len(self.domain) - 1]
        labels = head.split(".")
        service = [lab for lab in labels if lab.startswith("_")]
        rest = labels[len(service) :]
        for cluster in self.clusters:
            if cluster.prefix and rest and rest[0].startswith(cluster.prefix) and len(rest[0]) > len(cluster.prefix):
                stripped = [rest[0][len(cluster.prefix) :], *rest[1:]]
                return [(cluster, ".".join([*service, *stripped, cluster.domain]))]
        return [(cluster, f"{head}.{cluster.domain}") for cluster in self.clusters]

    async def ask(self, cluster: Cluster, name: str, query: Query) -> DNSRecord | None:
        request = DNSRecord.question(name, QTYPE.get(query.raw.qtype))
        request.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE))
        started = time.perf_counter()
        rcode = "timeout"
        try:
            async with asyncio.timeout(self.deadline):
                wire = await self.upstream.forward_packet(bytes(request.pack()), cluster.upstreams)
            if wire is None:
                rcode = "failed"
                return None
            reply = DNSRecord.parse(wire)
            rcode = RCODE.get(reply.header.rcode)
            return reply
        except TimeoutError:
            log_event(log, logging.DEBUG, "cluster_timeout", cluster=cluster.domain, deadline_s=self.deadline)
            return None
        except Exception:
            rcode = "malformed"
            return None
        finally:
            if self.metrics:
                self.metrics.subqueries.labels(cluster.domain, str(rcode)).inc()
                self.metrics.latency.labels(cluster.domain).observe(time.perf_counter() - started)

    def rename(self, name: str, cluster: Cluster) -> str:
        """A name inside a cluster's domain, as seen from the distributed domain."""
        lowered = name.lower()
        if not _under(lowered, cluster.domain):
            return name
        host = name[: len(name) - len(cluster.domain) - 1] if lowered != cluster.domain else ""
        if not host:
            return self.domain
        first, _, rest = host.partition(".")
        prefixed = first if first.startswith("_") else cluster.prefix + first
        return ".".join(part for part in (prefixed, rest, self.domain) if part)

    def merge(
        self, query: Query, qname: str, targets: list[tuple[Cluster, str]], replies: list[DNSRecord | None]
    ) -> bytes:
        answered = [(cluster, sub, r) for (cluster, sub), r in zip(targets, replies, strict=True) if r is not None]
        if not answered:
            ede = EDNSOption(EDE_OPTION, struct.pack("!H", EDE_NETWORK_ERROR) + b"Sub-queries timed out")
            reply = reply_for(query, [ede])  # AD clear: merged from several clusters, nothing validated
            reply.header.rcode = RCODE.SERVFAIL
            log_event(log, logging.WARNING, "gather_failed", qname=qname, clusters=len(targets))
            return bytes(reply.pack())
        reply = reply_for(query)
        noerror = [r for _, _, r in answered if r.header.rcode == RCODE.NOERROR]
        reply.header.rcode = RCODE.NOERROR if noerror else answered[0][2].header.rcode
        answers: list[RR] = []
        extra: list[RR] = []
        for cluster, sub, r in answered:
            for rr in r.rr:
                answers.append(self.rewrite(rr, cluster, sub, qname, owner_is_question=True))
            for rr in r.ar:
                if rr.rtype != QTYPE.OPT:
                    extra.append(self.rewrite(rr, cluster, sub, qname, owner_is_question=False))
        ttl = min((rr.ttl for rr in answers + extra), default=0)
        for rr in answers:
            rr.ttl = ttl
            reply.add_answer(rr)
        for rr in extra:
            rr.ttl = ttl
            reply.add_ar(rr)
        return bytes(reply.pack())

    def rewrite(self, rr: RR, cluster: Cluster, sub: str, qname: str, *, owner_is_question: bool) -> RR:
        owner = str(rr.rname)
        new_owner = qname if owner_is_question and owner.lower() == sub.lower() else self.rename(owner, cluster)
        rdata = rr.rdata
        if rr.rtype == QTYPE.SRV:
            rdata = SRV(
                priority=rdata.priority,
                weight=rdata.weight,
                port=rdata.port,
                target=self.rename(str(rdata.target), cluster),
            )
        elif rr.rtype == QTYPE.CNAME:
            rdata = CNAME(self.rename(str(rdata.label), cluster))
        return RR(DNSLabel(new_owner), rr.rtype, rr.rclass, rr.ttl, rdata)
