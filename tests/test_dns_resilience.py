"""The DNS service as an attacker and an unlucky operator find it: upstreams that restart or
start late, forged replies, replies cut short, garbage, and serve-stale when upstreams fail.
Every test runs on uvloop (production) and on asyncio (see conftest)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import struct
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import RR, A, DNSRecord

from dns_svc import mmsg
from dns_svc.follower import version_index
from metadata_svc.keys import STORE
from tests.support.dns import (
    FakeClock,
    addresses,
    ask,
    dns_process_on_free_ports,
    rcode,
    run_dns,
    udp_exchange,
    wait_for_version,
)
from tests.support.logs import logged_fields
from tests.support.ports import free_port
from tests.support.tools import require_root
from tests.support.upstream import ScriptedUpstream, answer_a, run_unbound, spoofed_udp

pytestmark = pytest.mark.external_tool


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    return [f for f in logged_fields(caplog) if f.get("event") == name]


@pytest.fixture(params=["extension", "socket module"])
def upstream_calls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The upstream sockets' two ways: the C extension's calls (``dns_svc/_mmsg.c``: connect and
    send, receive, disconnect and look at what is queued) and the socket module's with ctypes.
    Every hardening must hold on both."""
    if request.param == "socket module":
        monkeypatch.setenv(mmsg.OFF_ENV, "1")
    else:
        monkeypatch.delenv(mmsg.OFF_ENV, raising=False)
        if mmsg.load() is None:
            message = f"no extension build for this source ({mmsg.state()}): run scripts/compile.py"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
    return str(request.param)


def uses(server: Any, calls: str) -> None:
    """The server's upstream sockets run the calls the test asked for."""
    assert (server.upstream.sockets.native is not None) == (calls == "extension")


async def test_the_loop_under_test_is_the_one_named(request: pytest.FixtureRequest) -> None:
    """Guards the conftest hook: the [uvloop] runs really run on uvloop."""
    loop = type(asyncio.get_running_loop()).__module__
    assert ("uvloop" in loop) == request.node.name.endswith("[uvloop]")


async def test_recursion_comes_back_after_the_upstream_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, upstream_calls: str
) -> None:
    """Kill the upstream, ask once (its ICMP port-unreachable reaches our socket), start it again on
    the same port: the next query is answered. A socket shared by all queries went deaf on uvloop
    after that one ICMP error, and every non-fleet name got SERVFAIL until a restart."""
    caplog.set_level(logging.INFO)
    port = free_port()
    with run_unbound(tmp_path / "u1", port=port) as first:
        async with run_dns(recurse=(first.address,), recurser_timeout=0.5) as server:
            uses(server, upstream_calls)
            assert addresses(await ask(server, "www.example.test")) == ["192.0.2.10"]
            first.stop()
            assert rcode(await ask(server, "payments.example.test")) == "SERVFAIL"
            with run_unbound(tmp_path / "u2", port=port):
                assert addresses(await ask(server, "www.example.test", "AAAA")) == ["2001:db8::10"]
                assert addresses(await ask(server, "wild.test")) == ["192.0.2.99"]
    assert events(caplog, "upstream_down")
    assert events(caplog, "upstream_up")


async def test_recursion_works_when_the_upstream_starts_after_us(tmp_path: Path) -> None:
    port = free_port()
    async with run_dns(recurse=(("127.0.0.1", port),), recurser_timeout=0.5) as server:
        assert rcode(await ask(server, "www.example.test")) == "SERVFAIL"
        with run_unbound(tmp_path / "late", port=port):
            assert addresses(await ask(server, "payments.example.test")) == ["192.0.2.20"]


async def test_each_upstream_query_has_its_own_random_port_and_id(upstream_calls: str) -> None:
    async with ScriptedUpstream() as upstream, run_dns(recurse=(upstream.address,)) as server:
        uses(server, upstream_calls)
        for i in range(60):
            assert addresses(await ask(server, f"n{i}.example.test")) == ["192.0.2.55"]
        ports = {addr[1] for _, addr in upstream.queries}
        assert len(upstream.queries) == 60
        assert len(ports) >= 55
        assert server.upstream.sockets.reused >= 55  # ... on a reused socket, given back in between
        # IDs do not come from ``random``: seeding it the same way twice gives different IDs.
        ids = []
        for attempt in range(2):
            random.seed(1234)
            await ask(server, f"seeded{attempt}.example.test")
            ids.append(upstream.queries[-1][0][:2])
        assert ids[0] != ids[1]


async def test_a_reused_socket_starts_with_nothing_queued(upstream_calls: str) -> None:
    """Datagrams that reach a query's port after its reply (a duplicate, a forger spraying the
    port it learnt) are dropped when the socket is given back: the next query on that socket,
    from a new port, never reads them (each would be one more try at its ID)."""
    async with ScriptedUpstream(copies=4) as upstream, run_dns(recurse=(upstream.address,)) as server:
        uses(server, upstream_calls)
        for i in range(10):
            assert addresses(await ask(server, f"dup{i}.example.test")) == ["192.0.2.55"]
        assert server.upstream.sockets.reused >= 9
        assert server.upstream.counters()["mismatched"] == 0
        # an empty datagram first hides nothing behind it (a queue size check would stop at it)
        upstream.copies, upstream.then = 1, (b"", None, None)
        for i in range(10):
            assert addresses(await ask(server, f"empty{i}.example.test")) == ["192.0.2.55"]
        assert server.upstream.counters()["mismatched"] == 0


async def test_a_socket_that_saw_an_error_is_not_reused(upstream_calls: str) -> None:
    port = free_port()  # nothing listens: each query gets an ICMP port-unreachable
    async with run_dns(recurse=(("127.0.0.1", port),), recurser_timeout=0.5) as server:
        uses(server, upstream_calls)
        for i in range(3):
            assert rcode(await ask(server, f"refused{i}.example.test")) == "SERVFAIL"
        sockets = server.upstream.sockets
        assert sockets.created >= 3
        assert sockets.reused == 0
        assert sockets.idle() == 0


async def test_a_query_that_cannot_be_sent_moves_on_to_the_next_upstream(upstream_calls: str) -> None:
    """The broadcast address refuses a UDP connect (EACCES without SO_BROADCAST): the query goes
    to the next upstream in the same walk, and the socket that failed is not kept. With the
    extension the send waits for the end of the loop's pass, so the failure comes back to the
    walk from there rather than from the send."""
    async with (
        ScriptedUpstream() as upstream,
        run_dns(recurse=(("255.255.255.255", 53), upstream.address)) as server,
    ):
        uses(server, upstream_calls)
        for i in range(3):
            assert addresses(await ask(server, f"unsent{i}.example.test")) == ["192.0.2.55"]
        assert len(upstream.queries) == 3
        assert server.upstream.failures[("255.255.255.255", 53)] == 3
        assert server.upstream.sockets.idle() == 1  # only the one that reached the upstream, each time
        assert server.upstream.channel(("255.255.255.255", 53)).errors == {}  # never sent: not a lost reply


async def test_identical_questions_in_flight_share_one_upstream_query(upstream_calls: str) -> None:
    """100 clients ask the same name (in any letter case) while the upstream takes its time: one
    query goes upstream, and each client gets the answer with its own ID and its own spelling."""
    async with ScriptedUpstream(delay=0.3) as upstream, run_dns(recurse=(upstream.address,)) as server:
        uses(server, upstream_calls)
        names = ["same.example.test", "SAME.example.test", "sAmE.Example.TEST"]
        replies = await asyncio.gather(
            *(ask(server, names[i % 3], source=f"127.0.0.{10 + i % 50}") for i in range(100))
        )
        assert len(upstream.queries) == 1
        for i, reply in enumerate(replies):
            assert addresses(reply) == ["192.0.2.55"]
            assert str(reply.question[0].name) == names[i % 3] + "."  # dnspython checked the ID too


def _reply(query: bytes, address: str, question: str | None = None) -> bytes:
    request = DNSRecord.parse(query)
    if question is not None:
        request = DNSRecord.question(question)
        request.header.id = struct.unpack("!H", query[:2])[0]
    out = request.reply()
    out.add_answer(RR(request.q.qname, 1, ttl=300, rdata=A(address)))
    return bytes(out.pack())


async def _in_flight(server: Any, upstream: ScriptedUpstream, name: str) -> tuple[Any, bytes, tuple[str, int]]:
    """Ask ``name`` and wait until its query reached the upstream: the answer to come, the query
    as the upstream saw it, and the address it came from."""
    before = len(upstream.queries)
    asking = asyncio.ensure_future(ask(server, name))
    while len(upstream.queries) <= before:
        await asyncio.sleep(0.005)
    query, source = upstream.queries[-1]
    return asking, query, source


def _without_question(reply: bytes, query: bytes) -> bytes:
    """``reply`` with its question cut out: the header, then straight to the answer."""
    out = bytearray(reply[:12]) + reply[len(query) :]
    out[4:6] = b"\x00\x00"
    return bytes(out)


@pytest.mark.needs_root
async def test_forged_replies_are_not_taken(upstream_calls: str) -> None:
    """An attacker on the path's side sends replies with the upstream's address as source, from a
    raw socket. Even knowing the query's port, it must also match the ID and the question; a
    reply without a question is never taken; a wrong source port never reaches us. The same
    forger with everything right is taken: the test can see a poisoning when there is one."""
    require_root("forging a source address")
    async with (
        ScriptedUpstream(delay=0.4, reply=answer_a("192.0.2.1")) as upstream,
        run_dns(recurse=(upstream.address,), recurser_timeout=2) as server,
    ):
        uses(server, upstream_calls)
        # Positive control: a forgery with the right port, ID and question wins the race.
        asking, query, (host, port) = await _in_flight(server, upstream, "control.example.test")
        spoofed_udp(upstream.address, (host, port), _reply(query, "203.0.113.66"))
        assert addresses(await asking) == ["203.0.113.66"]

        asking, query, (host, port) = await _in_flight(server, upstream, "victim.example.test")
        qid = struct.unpack("!H", query[:2])[0]
        good = _reply(query, "203.0.113.66")
        for wrong in range(1, 1001):  # wrong IDs
            spoofed_udp(upstream.address, (host, port), struct.pack("!H", (qid + wrong) % 65536) + good[2:])
        spoofed_udp(upstream.address, (host, port), _reply(query, "203.0.113.66", "other.example.test"))
        spoofed_udp(upstream.address, (host, port), _without_question(good, query))
        refused = bytearray(struct.pack("!HHHHHH", qid, 0x8105, 0, 0, 0, 0))  # REFUSED, no question
        spoofed_udp(upstream.address, (host, port), bytes(refused))
        spoofed_udp((upstream.address[0], upstream.address[1] + 1), (host, port), good)  # wrong source port
        assert addresses(await asking) == ["192.0.2.1"]
        assert addresses(await ask(server, "victim.example.test")) == ["192.0.2.1"]  # and the cache
        assert server.upstream.counters()["mismatched"] >= 200  # those the socket buffer took in

        # Without a flood before them (a full socket buffer would drop them unread): a reply with
        # the right ID and port but another question, and ones without a question, are not taken.
        mismatched = server.upstream.counters()["mismatched"]
        asking, query, (host, port) = await _in_flight(server, upstream, "victim2.example.test")
        qid = struct.unpack("!H", query[:2])[0]
        spoofed_udp(upstream.address, (host, port), _reply(query, "203.0.113.66", "victim3.example.test"))
        spoofed_udp(upstream.address, (host, port), _without_question(_reply(query, "203.0.113.66"), query))
        spoofed_udp(upstream.address, (host, port), struct.pack("!HHHHHH", qid, 0x8105, 0, 0, 0, 0))
        assert addresses(await asking) == ["192.0.2.1"]
        assert server.upstream.counters()["mismatched"] == mismatched + 3  # each one seen, and refused


async def test_a_reply_cut_short_gets_servfail_and_is_never_cached(upstream_calls: str) -> None:
    """An answer record cut short used to reach the first client malformed, then leave every
    later client with no reply at all (a traceback each) until the entry was evicted."""
    broken = True

    def reply(query: bytes) -> bytes:
        wire = _reply(query, "192.0.2.77")
        return wire[:-2] if broken else wire

    async with (
        ScriptedUpstream(reply=reply) as upstream,
        run_dns(recurse=(upstream.address,), servfail_ttl=0, recurser_timeout=0.3) as server,
    ):
        uses(server, upstream_calls)
        for transport_tcp in (False, False, True):
            assert rcode(await ask(server, "cut.example.test", tcp=transport_tcp)) == "SERVFAIL"
        assert server.upstream.counters()["malformed"] >= 2
        broken = False
        assert addresses(await ask(server, "cut.example.test")) == ["192.0.2.77"]


def _query(name: bytes, edns_option: bytes | None = None) -> bytes:
    header = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 1 if edns_option is not None else 0)
    out = header + name + b"\x00\x01\x00\x01"
    if edns_option is not None:
        out += b"\x00" + struct.pack("!HHIH", 41, 1232, 0, len(edns_option)) + edns_option
    return out


async def test_garbage_that_passed_the_parser_costs_a_counter_not_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """Two kinds of garbage got past ``parse_query`` and then made dnslib raise, a 2.3 KB
    traceback per packet: a label with bytes >= 0x80 in our zone, and an EDNS option longer
    than its OPT record."""
    caplog.set_level(logging.DEBUG)
    high = b"\x03w\xffb\x07rancher\x08internal\x00"
    # option code 10 claims 8 bytes; 2 follow, still inside the OPT record's own length (6)
    long_option = struct.pack("!HH", 10, 8) + b"\x00\x00"
    async with run_dns() as server:
        for _ in range(200):
            reply = await udp_exchange(server.address, _query(high))
            assert reply is not None
            parsed = dns.message.from_wire(reply)
            assert parsed.rcode() == dns.rcode.NXDOMAIN
            assert reply[12 : 12 + len(high)] == high
            reply = await udp_exchange(server.address, _query(b"\x03www\x07rancher\x08internal\x00", long_option))
            assert reply is not None
            assert dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR
        assert rcode(await ask(server, "nope.rancher.internal")) == "NXDOMAIN"
    assert not [r for r in caplog.records if r.exc_info]
    assert len(events(caplog, "bad_packet")) <= 2
    assert not events(caplog, "resolve_failed")


async def test_serve_stale_when_the_upstream_is_gone(tmp_path: Path) -> None:
    clock = FakeClock()
    with run_unbound(tmp_path / "stale") as upstream:
        async with run_dns(clock, recurse=(upstream.address,), recurser_timeout=0.3) as server:
            assert addresses(await ask(server, "www.example.test")) == ["192.0.2.10"]
            upstream.stop()
            clock.advance(301)  # expired
            for tcp in (False, True):
                stale = await ask(server, "www.example.test", tcp=tcp)
                assert addresses(stale) == ["192.0.2.10"]
                assert stale.answer[0].ttl == 30
            assert server.global_step.stale_served == 2
            clock.advance(86400)  # past the bound on staleness
            assert rcode(await ask(server, "www.example.test")) == "SERVFAIL"


async def test_serve_stale_when_the_upstream_is_slow_then_refresh() -> None:
    """The client-response timer (RFC 8767): an upstream slower than it gets the stale answer
    out first; its own answer, when it comes, refreshes the cache."""
    clock = FakeClock()
    address = ["192.0.2.61"]
    async with (
        ScriptedUpstream(reply=lambda q: _reply(q, address[0])) as upstream,
        run_dns(clock, recurse=(upstream.address,), recurser_timeout=2, stale_answer_timeout=0.2) as server,
    ):
        assert addresses(await ask(server, "slow.example.test")) == ["192.0.2.61"]
        clock.advance(301)
        upstream.delay = 0.8
        for tcp, newer in ((False, "192.0.2.62"), (True, "192.0.2.63")):
            before = address[0]
            address[0] = newer
            stale = await ask(server, "slow.example.test", tcp=tcp)
            assert addresses(stale) == [before]  # the upstream's answer (``newer``) had not come yet
            assert stale.answer[0].ttl == 30
            async with asyncio.timeout(10):  # until the upstream's answer arrives and refreshes the cache
                while addresses(fresh := await ask(server, "slow.example.test")) != [newer]:
                    await asyncio.sleep(0.05)
            assert fresh.answer[0].ttl == 300
            clock.advance(301)


async def test_udp_replies_are_capped_and_any_is_minimal(tmp_path: Path) -> None:
    """A 60-address name asked with EDNS 65535 from anywhere: never more than 1232 bytes over
    UDP (TC, the client retries over TCP), the whole answer over TCP."""
    big = "".join(f'local-data: "big.example.test. 300 IN A 192.0.2.{i}"\n' for i in range(1, 81))
    with run_unbound(tmp_path / "big", extra=big) as upstream:
        async with run_dns(recurse=(upstream.address,)) as server:
            udp = await ask(server, "big.example.test", use_edns=0, payload=65535)
            assert udp.flags & dns.flags.TC
            assert len(udp.to_wire()) <= 1232
            assert len(addresses(await ask(server, "big.example.test", tcp=True))) == 80
        async with run_dns(recurse=(upstream.address,), max_udp_size=4096) as server:
            assert len(addresses(await ask(server, "big.example.test", use_edns=0, payload=65535))) == 80


async def test_any_for_a_fleet_name_gets_one_kind_of_record(fleet_stack) -> None:
    _, server = fleet_stack
    reply = await ask(server, "web.shop.rancher.internal", "ANY")
    assert {rrset.rdtype for rrset in reply.answer} == {dns.rdatatype.A}
    srv = await ask(server, "_many._tcp.infra.rancher.internal", "SRV", use_edns=0, payload=65535)
    assert len(srv.to_wire()) <= 1232


async def test_tcp_slots_cannot_be_held_by_idle_connections() -> None:
    async with run_dns(tcp_max_connections=64, tcp_per_client=8) as server:
        held = []
        for i in range(200):  # 20 sources x 10 idle connections each: more than the slots
            reader, writer = await asyncio.open_connection(*server.address, local_addr=(f"127.0.3.{1 + i // 10}", 0))
            held.append((reader, writer))
        await asyncio.sleep(0.1)
        assert server.tcp is not None
        assert server.tcp.connections <= 64
        for i in range(20):
            assert rcode(await ask(server, f"n{i}.rancher.internal", tcp=True, source="127.0.4.1")) == "NXDOMAIN"
        assert server.tcp.evicted > 0
        for _, writer in held:
            writer.close()


async def test_one_cache_bound_for_every_client(fleet_stack) -> None:
    """Caches per client add up (10k clients x 1,000 entries was gigabytes): all of them share
    one store of --cache-capacity entries, least recently used out first, whoever asked."""
    md, _ = fleet_stack
    async with run_dns(metadata_url=f"{md.url}/2016-07-29", cache_capacity=30) as server:
        await wait_for_version(server, version_index(md.app[STORE].snapshot.version))
        for client in range(1, 11):
            for name in ("web.shop", "db.shop", "primary", "nope.shop", "kv.shop"):
                await ask(server, f"{name}.rancher.internal", source=f"127.0.1.{client}")
        assert len(server.cache_store) <= 30
        hits = server.resolver.fast_hits
        await ask(server, "web.shop.rancher.internal", source="127.0.1.10")  # the last client's: still there
        assert server.resolver.fast_hits == hits + 1


@pytest.mark.one_loop
async def test_sigterm_answers_the_queries_in_flight(tmp_path: Path) -> None:
    """The real process on uvloop: 20 queries wait on a slow upstream, SIGTERM arrives; /healthz
    fails at once, every query is answered, then the process exits 0."""
    import aiohttp

    async with ScriptedUpstream(delay=0.8) as upstream:
        proc, log, [dns_port, http_port] = await dns_process_on_free_ports(
            lambda dns_port, http_port: (
                f"--listen=127.0.0.1:{dns_port}",
                "--metadata-url=",
                f"--answers={_answers(tmp_path)}",
                f"--recurse={upstream.address[0]}:{upstream.address[1]}",
                f"--http-listen=127.0.0.1:{http_port}",
                "--lameduck=0.3",
            ),
            ports=2,
        )
        try:
            async with aiohttp.ClientSession() as http:

                async def health() -> int:
                    try:
                        async with http.get(f"http://127.0.0.1:{http_port}/healthz") as r:
                            return r.status
                    except aiohttp.ClientError:
                        return 0

                async with asyncio.timeout(20):
                    while await health() != 200:
                        await asyncio.sleep(0.05)
                asking = [
                    asyncio.ensure_future(ask(("127.0.0.1", dns_port), f"q{i}.example.test", timeout=4))
                    for i in range(20)
                ]
                while len(upstream.queries) < 20:
                    await asyncio.sleep(0.01)
                proc.terminate()
                async with asyncio.timeout(10):  # failing from the signal on, for the lameduck's 0.3 s
                    while await health() != 503:
                        await asyncio.sleep(0.01)
            replies = await asyncio.gather(*asking)
            assert all(addresses(r) == ["192.0.2.55"] for r in replies), [(rcode(r), addresses(r)) for r in replies]
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            text = await log.finish()
            assert "event=draining" in text
            assert "event=stopped" in text
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def _answers(tmp_path: Path) -> Path:
    path = tmp_path / "answers.json"
    path.write_text('{"default": {"authoritative": ["rancher.internal"]}}')
    return path


async def test_drain_answers_relayed_and_chained_queries_in_flight() -> None:
    """In process, on both loops: queries waiting on a slow upstream, over UDP (relayed) and TCP
    (the chain), are answered by ``drain``; a query sent after it started is not read."""
    async with (
        ScriptedUpstream(delay=0.5) as upstream,
        run_dns(recurse=(upstream.address,), drain_timeout=3, recurser_timeout=2) as server,
    ):
        waiting = [asyncio.ensure_future(ask(server, f"d{i}.example.test", tcp=i % 2 == 1)) for i in range(10)]
        while len(upstream.queries) < 10:
            await asyncio.sleep(0.01)
        draining = asyncio.ensure_future(server.drain())
        async with asyncio.timeout(10):
            while not server.draining:
                await asyncio.sleep(0.01)
        late = await udp_exchange(server.address, dns.message.make_query("late.example.test", "A").to_wire(), 0.8)
        assert late is None
        replies = await asyncio.gather(*waiting)
        await draining
        assert all(addresses(r) == ["192.0.2.55"] for r in replies), [(rcode(r), addresses(r)) for r in replies]
