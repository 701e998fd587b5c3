"""Recursion through a real unbound: relay, TTL countdown, negative caching, failover, TCP
retry on truncation, SERVFAIL only when every upstream failed, REFUSED for other networks (and
nothing sent out for them: no upstream query, no CNAME chase)."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import dns.flags
import dns.rdatatype
import pytest

from tests.support.dns import FakeClock, addresses, ask, dig, rcode, run_dns
from tests.support.logs import logged_fields
from tests.support.metrics import scrape, value
from tests.support.ports import free_port
from tests.support.upstream import ScriptedUpstream, run_unbound

pytestmark = pytest.mark.external_tool

BIG = "".join(f'local-data: "big.example.test. 300 IN A 192.0.2.{i}"\n' for i in range(1, 61))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def ttls(reply) -> list[int]:
    return [rrset.ttl for rrset in reply.answer]


async def test_relay_keeps_rcode_flags_and_ttls(unbound, clock) -> None:
    async with run_dns(clock, recurse=(unbound.address,)) as server:
        reply = await ask(server, "www.example.test")
        assert addresses(reply) == ["192.0.2.10"]
        assert ttls(reply) == [300]
        assert reply.flags & dns.flags.AA  # unbound's local data is authoritative; the flag is relayed
        nx = await ask(server, "nope.example.test")
        assert rcode(nx) == "NXDOMAIN"
        assert nx.authority[0].rdtype == dns.rdatatype.SOA
        txt = await ask(server, "txt.example.test", "TXT")
        assert txt.answer[0][0].strings == (b"hello from upstream",)
        srv = await ask(server, "_ldap._tcp.example.test", "SRV")
        assert srv.answer[0][0].port == 389


async def test_ttl_counts_down_and_cache_serves_without_upstream(stoppable_unbound, clock) -> None:
    unbound = stoppable_unbound
    async with run_dns(clock, recurse=(unbound.address,), serve_stale=0) as server:
        assert ttls(await ask(server, "www.example.test")) == [300]
        unbound.stop()
        clock.advance(45)
        again = await ask(server, "WWW.Example.TEST")  # case-insensitive key, case echoed
        assert ttls(again) == [255]
        assert addresses(again) == ["192.0.2.10"]
        assert str(again.question[0].name) == "WWW.Example.TEST."
        clock.advance(256)  # past the TTL: the upstream is asked again, and it is gone
        assert rcode(await ask(server, "www.example.test")) == "SERVFAIL"


async def test_negative_answer_lives_for_the_soa_minimum(stoppable_unbound, clock) -> None:
    unbound = stoppable_unbound
    async with run_dns(clock, recurse=(unbound.address,), serve_stale=0) as server:
        assert rcode(await ask(server, "gone.example.test")) == "NXDOMAIN"
        unbound.stop()
        clock.advance(29)
        cached = await ask(server, "gone.example.test")
        assert rcode(cached) == "NXDOMAIN"
        assert cached.authority[0].ttl == 1
        clock.advance(2)  # SOA minimum is 30 s
        assert rcode(await ask(server, "gone.example.test")) == "SERVFAIL"


async def test_failover_past_dead_silent_and_refusing_upstreams(
    unbound, tmp_path: Path, clock, caplog: pytest.LogCaptureFixture
) -> None:
    """The silent upstream is a bare UDP socket that never answers: no real server can be made to
    drop queries on purpose, so this one fake stands in for a hung resolver."""
    caplog.set_level(logging.WARNING)
    dead = ("127.0.0.1", free_port())
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent,
        run_unbound(tmp_path / "refusing", access="refuse") as refusing,
    ):
        silent.bind(("127.0.0.1", 0))
        upstreams = (dead, silent.getsockname(), refusing.address, unbound.address)
        async with run_dns(clock, recurse=upstreams, recurser_timeout=0.3) as server:
            for _ in range(3):  # relayed with callbacks, the first upstream down or not
                reply = await ask(server, f"n{_}.wild.test")
                assert addresses(reply) == ["192.0.2.99"]
            assert addresses(await ask(server, "n9.wild.test", tcp=True)) == ["192.0.2.99"]  # the chain's walk
    downs = [f for f in logged_fields(caplog) if f.get("event") == "upstream_down"]
    # once each; unbound's REFUSED carries no question, and a reply without one is never taken
    # (a forger could send it), so the refusing server is as good as silent
    assert sorted(d["upstream"] for d in downs) == sorted(f"{h}:{p}" for h, p in upstreams[:3])


async def test_servfail_only_when_all_failed_and_cached_briefly(clock) -> None:
    dead = ("127.0.0.1", free_port())
    async with run_dns(clock, recurse=(dead,), servfail_ttl=2.0) as server:
        assert rcode(await ask(server, "www.example.test")) == "SERVFAIL"
        attempts = server.upstream.failures[dead]
        assert rcode(await ask(server, "www.example.test")) == "SERVFAIL"
        assert server.upstream.failures[dead] == attempts  # served from the cache
        clock.advance(2.1)
        assert rcode(await ask(server, "www.example.test")) == "SERVFAIL"
        assert server.upstream.failures[dead] == attempts + 1  # tried again after 2 s
        # names in our own zone never need an upstream: NXDOMAIN, not SERVFAIL
        assert rcode(await ask(server, "nope.rancher.internal")) == "NXDOMAIN"


async def test_truncated_upstream_reply_is_retried_over_tcp(tmp_path: Path, clock) -> None:
    with run_unbound(tmp_path / "big", extra=BIG) as upstream:
        async with run_dns(clock, recurse=(upstream.address,)) as server:
            small = await ask(server, "big.example.test")  # no EDNS: 512 bytes
            assert small.flags & dns.flags.TC
            assert small.answer == []
            over_tcp = await ask(server, "big.example.test", tcp=True)
            assert len(addresses(over_tcp)) == 60
            assert not over_tcp.flags & dns.flags.TC
            roomy = await ask(server, "big.example.test", use_edns=0, payload=4096)
            assert len(addresses(roomy)) == 60
            assert not roomy.flags & dns.flags.TC
            result = await dig(server, "+noedns", "big.example.test")
            assert "Truncated, retrying in TCP mode" in result.raw
            assert result.status == "NOERROR"
            assert len(result.answer) == 60


async def test_recursion_refused_outside_allowed_networks(unbound, clock) -> None:
    async with run_dns(clock, recurse=(unbound.address,), allow_recursion=("127.0.0.1/32",)) as server:
        for _ in range(3):  # the slow path, the caches, then the packet cache
            assert addresses(await ask(server, "www.example.test", source="127.0.0.1")) == ["192.0.2.10"]
        assert server.resolver.fast_hits >= 2
        refused = await ask(server, "www.example.test", source="127.0.0.2")  # cached, but not for this client
        assert rcode(refused) == "REFUSED"
        assert not refused.flags & dns.flags.RA
        assert rcode(await ask(server, "nope.rancher.internal", source="127.0.0.2")) == "NXDOMAIN"
        assert rcode(await ask(server, "rancher.internal", "SOA", source="127.0.0.2")) == "NOERROR"


async def test_a_client_outside_allow_recursion_sends_nothing_upstream(tmp_path: Path, clock) -> None:
    """The recursion gate for the upstream step: REFUSED, and the upstream (a real unbound that
    logs every query it gets) is never asked, over UDP (the relay) or TCP (the coroutine). A
    client inside then asks it once, which shows the log counts what arrives."""
    with run_unbound(tmp_path / "logged", log_queries=True) as upstream:
        async with run_dns(
            clock, recurse=(upstream.address,), allow_recursion=("127.0.0.1/32",), http_host="127.0.0.1", http_port=0
        ) as server:
            before = len(upstream.queried())  # its readiness probe
            for tcp in (False, True):
                refused = await ask(server, "payments.example.test", source="127.0.0.5", tcp=tcp)
                assert rcode(refused) == "REFUSED"
                assert not refused.flags & dns.flags.RA
                assert refused.answer == []
            assert addresses(await ask(server, "www.example.test")) == ["192.0.2.10"]
            assert upstream.queried()[before:] == ["www.example.test."]
            text = await scrape(server.http_address)
            assert value(text, "metadns_dns_responses_total", source="refused", type="A", rcode="REFUSED") == 2
            assert value(text, "metadns_dns_upstream_requests_total") == 1


async def test_client_upstreams_first_and_their_answers_stay_theirs(tmp_path: Path, unbound, clock) -> None:
    private = (
        'local-zone: "." static\nlocal-zone: "only-b.test." static\n'
        'local-data: "only-b.test. 3600 IN SOA ns.only-b.test. a.only-b.test. 1 3600 600 86400 30"\n'
        'local-data: "secret.only-b.test. 60 IN A 192.0.2.200"\n'
    )
    with run_unbound(tmp_path / "private", zone=private) as own:
        answers = tmp_path / "answers.json"
        answers.write_text(
            json.dumps(
                {
                    "default": {
                        "authoritative": ["rancher.internal"],
                        "search": ["rancher.internal"],
                        "a": {"svc.rancher.internal.": {"answer": ["10.1.0.1"]}},
                    },
                    "127.0.0.31": {"recurse": [own.spec]},
                }
            )
        )
        async with run_dns(clock, recurse=(unbound.address,), answers=str(answers)) as server:
            mine = await ask(server, "secret.only-b.test", source="127.0.0.31")
            assert addresses(mine) == ["192.0.2.200"]
            for _ in range(2):
                theirs = await ask(server, "secret.only-b.test", source="127.0.0.11")
                assert rcode(theirs) == "NXDOMAIN"  # from the default unbound, not from 127.0.0.31's cache
            assert addresses(await ask(server, "secret.only-b.test", source="127.0.0.31")) == ["192.0.2.200"]
            # the private upstream's answer wins, NXDOMAIN included; when it is down, the default one answers
            assert rcode(await ask(server, "www.example.test", source="127.0.0.31")) == "NXDOMAIN"
            own.stop()
            assert addresses(await ask(server, "payments.example.test", source="127.0.0.31")) == ["192.0.2.20"]


async def test_a_local_cname_chased_upstream_is_not_kept_past_the_ttls(
    tmp_path: Path, stoppable_unbound, clock
) -> None:
    """Upstream data inside a local answer lives by its TTLs (and the CNAME's), not until the
    answers change."""
    unbound = stoppable_unbound
    answers = tmp_path / "answers.json"
    answers.write_text(
        json.dumps(
            {
                "default": {
                    "authoritative": ["rancher.internal"],
                    "cname": {"pay.rancher.internal.": {"answer": "payments.example.test."}},
                }
            }
        )
    )
    async with run_dns(clock, recurse=(unbound.address,), answers=str(answers)) as server:
        first = await ask(server, "pay.rancher.internal")
        assert addresses(first) == ["192.0.2.20"]
        assert first.answer[1].ttl == 120
        unbound.stop()
        clock.advance(20)
        again = await ask(server, "pay.rancher.internal")
        assert str(again.answer[0][0].target) == "payments.example.test."
        assert addresses(again) == []  # past the CNAME's 1 s: chased again, and the upstream is gone


async def test_a_local_cname_is_not_chased_for_a_client_outside_allow_recursion(tmp_path: Path, clock) -> None:
    """The recursion gate for the local step's CNAME chase: a client outside --allow-recursion
    gets the CNAME, as an authoritative server answers it, and the upstream (a real unbound that
    logs every query it gets) is not asked for its target. That answer is this client's only: a
    client inside, asking next, gets the chain chased, not the unchased answer from a cache."""
    answers = tmp_path / "answers.json"
    answers.write_text(
        json.dumps(
            {
                "default": {
                    "authoritative": ["rancher.internal"],
                    "cname": {"pay.rancher.internal.": {"answer": "payments.example.test."}},
                }
            }
        )
    )
    with run_unbound(tmp_path / "logged", log_queries=True) as upstream:
        async with run_dns(
            clock,
            recurse=(upstream.address,),
            answers=str(answers),
            allow_recursion=("127.0.0.1/32",),
            http_host="127.0.0.1",
            http_port=0,
        ) as server:
            before = len(upstream.queried())  # its readiness probe
            for tcp in (False, True, False):  # the third: not from a cache either
                outside = await ask(server, "pay.rancher.internal", source="127.0.0.5", tcp=tcp)
                assert rcode(outside) == "NOERROR"
                assert [rrset.rdtype for rrset in outside.answer] == [dns.rdatatype.CNAME]
                assert str(outside.answer[0][0].target) == "payments.example.test."
                assert outside.flags & dns.flags.AA
            assert upstream.queried()[before:] == []
            inside = await ask(server, "pay.rancher.internal")
            assert [rrset.rdtype for rrset in inside.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
            assert addresses(inside) == ["192.0.2.20"]
            assert upstream.queried()[before:] == ["payments.example.test."]
            text = await scrape(server.http_address)
            assert value(text, "metadns_dns_responses_total", source="refused", type="A", rcode="NOERROR") == 3
            assert value(text, "metadns_dns_responses_total", source="local", type="A") == 1


def _truncated(query: bytes) -> bytes:
    """A reply with TC set and nothing in it: "ask me over TCP"."""
    from dnslib import DNSRecord

    reply = DNSRecord.parse(query).reply()
    reply.header.tc = 1
    return bytes(reply.pack())


@pytest.mark.parametrize("tcp", [False, True])
async def test_a_truncating_upstream_without_tcp_fails_over_to_the_next(unbound, tcp: bool) -> None:
    """The first upstream truncates every reply and has no TCP listener: the query moves on to the
    next upstream (relayed over UDP, or through the chain for a TCP client), as any failure does."""
    async with ScriptedUpstream(reply=_truncated) as first, run_dns(recurse=(first.address, unbound.address)) as server:
        for i in range(3):
            reply = (
                await ask(server, "www.example.test", tcp=tcp)
                if i == 0
                else await ask(server, f"n{i}.wild.test", tcp=tcp)
            )
            assert addresses(reply) in (["192.0.2.10"], ["192.0.2.99"])
        assert len(first.queries) >= 3  # each asked there first, over UDP
