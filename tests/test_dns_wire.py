"""Bad and unusual packets: the right rcode or silence, one log line, and good queries unharmed."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest
from dnslib import EDNS0, RR, DNSRecord

from dns_svc.resolver import Resolver
from dns_svc.wire import WireError, cap_ttls, error_reply, layout, parse_query
from tests.support.dns import addresses, ask, rcode, run_dns, udp_exchange


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


QUESTION = b"\x03www\x07example\x04test\x00\x00\x01\x00\x01"


async def exchange(address: tuple[str, int], packet: bytes, wait: float = 0.5) -> bytes | None:
    return await udp_exchange(address, packet, wait)


MALFORMED = [
    (b"\x12", None),  # not even a header: dropped
    (header(flags=0x8100) + QUESTION, None),  # a response: never answered
    (header() + b"\x03www\x07exam", dns.rcode.FORMERR),  # name runs off the end
    (header(qd=2) + QUESTION + QUESTION, dns.rcode.FORMERR),  # two questions
    (header(qd=0), dns.rcode.FORMERR),  # no question
    (header() + b"\xc0\x0c\x00\x01\x00\x01", dns.rcode.FORMERR),  # compression in the question
    (header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", dns.rcode.FORMERR),  # label > 63
    (header(flags=0x2100) + QUESTION, dns.rcode.NOTIMP),  # opcode 4 (NOTIFY)
    (header(flags=0x2900) + QUESTION, dns.rcode.NOTIMP),  # opcode 5 (UPDATE)
    (header() + QUESTION + b"junk", dns.rcode.FORMERR),  # trailing bytes
    (header(ar=1) + QUESTION + b"\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00", dns.rcode.FORMERR),  # not OPT
    (header(ar=1) + QUESTION + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x05\x00", dns.rcode.FORMERR),  # OPT cut
    (header() + b"\x3f" + b"a" * 63 + (b"\x3f" + b"b" * 63) * 3 + b"\x00\x00\x01\x00\x01", dns.rcode.FORMERR),
    (header() + (b"\x3f" + b"c" * 63) * 3 + b"\x3e" + b"d" * 62 + b"\x00\x00\x01\x00\x01", dns.rcode.FORMERR),
    (header(an=1) + QUESTION, dns.rcode.FORMERR),  # a record in the answer section of a query
    (header(ns=1) + QUESTION, dns.rcode.FORMERR),  # ... or in its authority section
    # an OPT whose length says 0 but an (empty) option follows: the length must match
    (
        header(ar=1) + QUESTION + b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00" + b"\x00\x0a\x00\x00",
        dns.rcode.FORMERR,
    ),
]
MALFORMED_IDS = [
    "short",
    "response",
    "cut-name",
    "two-questions",
    "no-question",
    "pointer",
    "long-label",
    "notify",
    "update",
    "trailing",
    "bad-additional",
    "opt-length",
    "name-over-255",
    "name-256-bytes",
    "answer-record",
    "authority-record",
    "opt-rdlen-short",
]


@pytest.mark.parametrize(("packet", "expected"), MALFORMED, ids=MALFORMED_IDS)
def test_malformed_queries(packet: bytes, expected: int | None) -> None:
    """What the transport answers (``Dispatcher.immediate``): ``parse_query``'s WireError rcode
    through ``error_reply``, or nothing. Pure functions: no server (one end-to-end test below)."""
    with pytest.raises(WireError) as raised:
        parse_query(packet)
    assert raised.value.rcode == expected
    if expected is None:
        return
    reply = error_reply(packet, expected)
    assert reply is not None
    message = dns.message.from_wire(reply)
    assert message.id == int.from_bytes(packet[:2], "big")
    assert message.flags & dns.flags.QR
    assert message.rcode() == expected
    assert bool(message.flags & dns.flags.RD) == bool(packet[2] & 0x01)
    assert message.question == []


# name, type, class, EDNS version -> the edge's rcode (None: on to the chain)
EDGE = [
    ("version.bind", "TXT", "CH", -1, dns.rcode.REFUSED),
    ("rancher.internal", "AXFR", "IN", -1, dns.rcode.REFUSED),
    ("rancher.internal", "IXFR", "IN", -1, dns.rcode.REFUSED),
    ("web.rancher.internal", "A", "IN", 1, dns.rcode.BADVERS),
    ("web.rancher.internal", "A", "IN", 0, None),
    ("web.rancher.internal", "A", "IN", -1, None),
]


@pytest.mark.parametrize(("name", "qtype", "qclass", "edns", "expected"), EDGE)
def test_edge_rcodes_for_odd_questions(name: str, qtype: str, qclass: str, edns: int, expected: int | None) -> None:
    query = dns.message.make_query(name, qtype, rdclass=qclass, use_edns=edns)
    raw = parse_query(query.to_wire())
    reply = Resolver.edge(raw)
    if expected is None:
        assert reply is None
        return
    assert reply is not None
    message = dns.message.from_wire(reply)
    assert message.id == query.id
    assert message.rcode() == expected
    assert [q.to_text() for q in message.question] == [q.to_text() for q in query.question]


async def test_malformed_and_odd_queries_through_the_server() -> None:
    """The transport answers what the tables above say, over a real socket."""
    async with run_dns() as server:
        assert await exchange(server.address, MALFORMED[1][0]) is None  # a response: dropped
        reply = await exchange(server.address, MALFORMED[3][0])
        assert reply is not None
        assert reply[:2] == MALFORMED[3][0][:2]
        assert reply[3] & 0xF == dns.rcode.FORMERR
        chaos = dns.message.make_query("version.bind", "TXT", rdclass="CH")
        assert (await exchange_msg(server.address, chaos)).rcode() == dns.rcode.REFUSED


async def exchange_msg(address: tuple[str, int], msg: dns.message.Message) -> dns.message.Message:
    raw = await exchange(address, msg.to_wire())
    assert raw is not None
    return dns.message.from_wire(raw)


async def test_garbage_flood_does_not_stop_good_queries(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with run_dns() as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(3000):  # bounded: 3,000 packets of junk and oversized datagrams
                junk = bytes([i % 256]) * (5 + i % 60) if i % 100 else b"\x00" * 6000
                s.sendto(junk, server.address)
                if i % 200 == 0:
                    await asyncio.sleep(0)  # let the server drain its socket buffer
        reply = await ask(server, "nope.rancher.internal")
        assert rcode(reply) == "NXDOMAIN"
        assert server.dispatcher.bad.total >= 2900
    lines = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "bad_packet"]
    assert 1 <= len(lines) <= 3  # rate limited: one line says what is wrong, not thousands


async def test_tcp_queries_several_per_connection_and_garbage_length() -> None:
    async with run_dns() as server:
        reader, writer = await asyncio.open_connection(*server.address)
        for name in ("a.rancher.internal", "b.rancher.internal", "rancher.internal"):
            wire = dns.message.make_query(name, "A").to_wire()
            writer.write(len(wire).to_bytes(2, "big") + wire)
            await writer.drain()
            size = int.from_bytes(await reader.readexactly(2), "big")
            reply = dns.message.from_wire(await reader.readexactly(size))
            assert reply.rcode() == (dns.rcode.NOERROR if name == "rancher.internal" else dns.rcode.NXDOMAIN)
        writer.write(b"\x00\x05hello")  # a 5-byte "message": answered by closing
        await writer.drain()
        assert await reader.read() == b""
        writer.close()
        # the server is still fine
        assert rcode(await ask(server, "x.rancher.internal", tcp=True)) == "NXDOMAIN"


async def test_edns_is_answered_with_edns_and_rd_copied() -> None:
    async with run_dns() as server:
        with_edns = await ask(server, "nope.rancher.internal", use_edns=0, payload=4096, want_dnssec=True)
        assert with_edns.edns == 0
        assert with_edns.ednsflags & dns.flags.DO
        without = await ask(server, "nope.rancher.internal")
        assert without.edns == -1
        msg = dns.message.make_query("nope.rancher.internal", "A")
        msg.flags &= ~dns.flags.RD
        assert not (await exchange_msg(server.address, msg)).flags & dns.flags.RD
        assert addresses(await ask(server, "rancher-metadata.rancher.internal")) == ["127.0.0.250"]


def reply_of(*zone: str, rcode: int = 0, tc: bool = False, edns: bool = False) -> bytes:
    """A reply to ``www.example.test. A`` with the records ``zone`` (zone text: answer records,
    then ``;ns`` and the authority records, then ``;ar`` and the additional ones)."""
    reply = DNSRecord.question("www.example.test", "A").reply()
    reply.header.rcode = rcode
    reply.header.tc = int(tc)
    section = reply.add_answer
    for line in zone:
        if line in (";ns", ";ar"):
            section = reply.add_auth if line == ";ns" else reply.add_ar
            continue
        section(*RR.fromZone(line))
    if edns:
        reply.add_ar(EDNS0(udp_len=4096))
    return bytes(reply.pack())


A1 = "www.example.test. 300 IN A 192.0.2.1"
A2 = "www.example.test. 60 IN A 192.0.2.2"
A3 = "www.example.test. 90 IN A 192.0.2.3"
SOA = "example.test. 3600 IN SOA ns.example.test. host.example.test. 1 60 10 86400 120"
GLUE = "ns.example.test. 30 IN A 192.0.2.53"
CNAME = "www.example.test. 300 IN CNAME x.example.test."
# records -> rcode, answers, TTLs (OPT's left out), the answers' smallest TTL, the negative TTL,
# the rotated run (start offset aside: its count and one record's size), truncated
LAYOUTS = [
    ((A1,), {}, (0, 1, (300,), 300, None, None, False)),
    ((A1, A2, A3), {}, (0, 3, (300, 60, 90), 60, None, 3, False)),
    ((A1, A2, ";ar", GLUE), {"edns": True}, (0, 2, (300, 60, 30), 60, None, 2, False)),
    ((";ns", SOA), {"rcode": 3}, (3, 0, (3600,), 3600, 120, None, False)),  # NXDOMAIN: SOA min(TTL, MINIMUM)
    ((";ns", "example.test. 100 IN SOA a. b. 1 2 3 4 900"), {}, (0, 0, (100,), 100, 100, None, False)),  # NODATA
    ((), {"rcode": 2}, (2, 0, (), None, None, None, False)),  # SERVFAIL: no records, no TTL
    ((A1,), {"tc": True}, (0, 1, (300,), 300, None, None, True)),
    (
        ("www.example.test. 300 IN CNAME x.example.test.", "x.example.test. 5 IN A 192.0.2.9"),
        {},
        (0, 2, (300, 5), 5, None, None, False),
    ),
]


@pytest.mark.parametrize(("records", "flags", "expected"), LAYOUTS)
def test_layout(records: tuple[str, ...], flags: dict[str, Any], expected: tuple[object, ...]) -> None:
    wire = reply_of(*records, **flags)
    lay = layout(wire)
    rotate = None if lay.rotate is None else lay.rotate[1]
    assert (lay.rcode, lay.answers, lay.ttls, lay.min_ttl, lay.negative_ttl, rotate, lay.truncated) == expected
    for offset, ttl in zip(lay.ttl_offsets, lay.ttls, strict=True):  # each offset is where that TTL is
        assert struct.unpack_from("!I", wire, offset)[0] == ttl
    if lay.rotate is not None:  # the run is the address records, one after the other
        start, count, size = lay.rotate
        addresses = {wire[start + (k + 1) * size - 4 : start + (k + 1) * size] for k in range(count)}
        assert addresses == {bytes(rr.rdata.data) for rr in DNSRecord.parse(wire).rr[:count]}


CUT = [b"", b"\x00" * 11, reply_of(A1)[:-2], reply_of(A1, A2)[:40], reply_of(A1)[:30]]


@pytest.mark.parametrize("wire", CUT, ids=["empty", "short-header", "cut-rdata", "cut-record", "cut-question"])
def test_layout_refuses_what_it_cannot_walk(wire: bytes) -> None:
    with pytest.raises(ValueError, match=r"cut short|runs past"):
        layout(wire)


# records, cap -> the TTLs after, the answers' smallest, the negative TTL
CAPS = [
    ((A1, A2), 100, (100, 60), 60, None),
    ((A1, A2), 1000, (300, 60), 60, None),  # nothing above the cap: the same bytes
    ((";ns", SOA), 100, (100,), 100, 100),
    ((A1, ";ar", GLUE), 10, (10, 10), 10, None),  # every section, glue too
]


@pytest.mark.parametrize(("records", "cap", "ttls", "smallest", "negative"), CAPS)
def test_cap_ttls(
    records: tuple[str, ...], cap: int, ttls: tuple[int, ...], smallest: int, negative: int | None
) -> None:
    wire = reply_of(*records, rcode=3 if records[0] == ";ns" else 0)
    capped, lay = cap_ttls(wire, layout(wire), cap)
    assert (lay.ttls, lay.min_ttl, lay.negative_ttl) == (ttls, smallest, negative)
    assert layout(capped).ttls == ttls  # the bytes say so too
    parsed = DNSRecord.parse(capped)  # an independent reading of the bytes
    assert tuple(rr.ttl for rr in parsed.rr + parsed.auth + parsed.ar) == ttls
    if ttls == layout(wire).ttls:
        assert capped is wire
