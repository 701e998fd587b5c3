"""The records that describe our own zone: SOA (for negative answers, RFC 2308) and NS."""

from __future__ import annotations

from dnslib import NS, QTYPE, RR, SOA, DNSRecord

from dns_svc.answers import AnswersTable


def soa_rr(table: AnswersTable, zone: str, ttl: int) -> RR:
    """SOA whose serial is the answers' serial (it moves with the fleet version) and whose
    MINIMUM is the local TTL, so resolvers cache our NXDOMAINs no longer than our answers."""
    return RR(
        zone,
        QTYPE.SOA,
        ttl=ttl,
        rdata=SOA(f"rancher-metadata.{zone}", f"hostmaster.{zone}", (table.serial & 0xFFFFFFFF, 60, 10, 86400, ttl)),
    )


def ns_rr(zone: str, ttl: int) -> RR:
    return RR(zone, QTYPE.NS, ttl=ttl, rdata=NS(f"rancher-metadata.{zone}"))


def soa_when_empty(reply: DNSRecord, table: AnswersTable, zone: str, ttl: int) -> None:
    """An answer with no records (NXDOMAIN or NODATA) from our ``zone`` carries the zone's SOA in
    its authority section (RFC 2308), so that resolvers know how long to remember it: the one
    place that rule lives, for the authority and the local answers alike."""
    if not reply.rr:
        reply.add_auth(soa_rr(table, zone, ttl))
