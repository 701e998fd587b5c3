"""Bad and unusual packets: the right rcode or silence, one log line, and good queries unharmed."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import dns.flags
import dns.message
import dns.rcode
import pytest

from tests.support.dns import addresses, ask, rcode, run_dns, udp_exchange


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


QUESTION = b"\x03www\x07example\x04test\x00\x00\x01\x00\x01"


async def exchange(address: tuple[str, int], packet: bytes, wait: float = 0.5) -> bytes | None:
    return await udp_exchange(address, packet, wait)


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
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
    ],
    ids=[
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
    ],
)
async def test_malformed_queries(packet: bytes, expected: int | None) -> None:
    async with run_dns() as server:
        reply = await exchange(server.address, packet)
        if expected is None:
            assert reply is None
        else:
            assert reply is not None
            assert reply[:2] == packet[:2]
            assert reply[2] & 0x80
            assert reply[3] & 0xF == expected


async def test_edge_rcodes_for_odd_questions() -> None:
    async with run_dns() as server:
        chaos = dns.message.make_query("version.bind", "TXT", rdclass="CH")
        assert (await exchange_msg(server.address, chaos)).rcode() == dns.rcode.REFUSED
        axfr = dns.message.make_query("rancher.internal", "AXFR")
        assert (await exchange_msg(server.address, axfr)).rcode() == dns.rcode.REFUSED
        badvers = dns.message.make_query("web.rancher.internal", "A", use_edns=1)
        reply = await exchange_msg(server.address, badvers)
        assert reply.rcode() == dns.rcode.BADVERS


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
