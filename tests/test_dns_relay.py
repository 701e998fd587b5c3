"""The relayed miss path (a UDP query every step passes on, sent and finished with callbacks)
must answer exactly what the chain's coroutines answer, and only for queries bound upstream."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import dns.flags
import dns.message
import pytest

from tests.support.dns import FakeClock, addresses, ask, rcode, run_dns
from tests.support.upstream import run_unbound

pytestmark = pytest.mark.external_tool

BIG = "".join(f'local-data: "big.example.test. 300 IN A 192.0.2.{i}"\n' for i in range(1, 61))

# (question, type, client, bound upstream?)
QUESTIONS = [
    ("web.rancher.internal", "A", "127.0.0.11", False),
    ("web", "A", "127.0.0.11", False),  # the server-side search list
    ("web.rancher.internal", "AAAA", "127.0.0.11", False),  # NODATA from the table
    ("db.rancher.internal", "A", "127.0.0.31", False),  # this client's own record
    ("db.rancher.internal", "A", "127.0.0.11", False),  # ... which others do not see: NXDOMAIN
    ("db", "A", "127.0.0.31", False),
    ("nope.rancher.internal", "A", "127.0.0.11", False),  # NXDOMAIN from our zone
    ("rancher.internal", "SOA", "127.0.0.11", False),
    ("www.example.test", "A", "127.0.0.11", True),
    ("WWW.Example.Test", "AAAA", "127.0.0.31", True),
    ("nope.example.test", "A", "127.0.0.11", True),  # NXDOMAIN from upstream, with its SOA
    ("_ldap._tcp.example.test", "SRV", "127.0.0.11", True),
    ("n1.wild.test", "A", "127.0.0.31", True),
    ("www", "A", "127.0.0.11", True),  # not local with any suffix: asked as is
]


@pytest.fixture
def answers_file(tmp_path: Path) -> Path:
    path = tmp_path / "answers.json"
    path.write_text(
        json.dumps(
            {
                "default": {
                    "authoritative": ["rancher.internal"],
                    "search": ["rancher.internal"],
                    "a": {"web.rancher.internal.": {"answer": ["10.1.0.1"]}},
                },
                "127.0.0.31": {"a": {"db.rancher.internal.": {"answer": ["10.9.9.9"]}}},
            }
        )
    )
    return path


def essence(reply: dns.message.Message) -> tuple[str, bool, list[str], list[str]]:
    """What must not differ between the two paths: rcode, AA, records (TTLs aside: a second may pass)."""

    def records(section: list[dns.rrset.RRset]) -> list[str]:
        return sorted(f"{rrset.name} {rrset.rdtype} {rd}" for rrset in section for rd in rrset)

    return rcode(reply), bool(reply.flags & dns.flags.AA), records(reply.answer), records(reply.authority)


async def test_relayed_and_chained_answers_are_the_same(answers_file: Path, unbound) -> None:
    settings = {"recurse": (unbound.address,), "answers": str(answers_file)}
    async with run_dns(**settings) as over_udp, run_dns(**settings) as over_tcp:
        for qname, qtype, client, _ in QUESTIONS:
            relayed = await ask(over_udp, qname, qtype, source=client)
            chained = await ask(over_tcp, qname, qtype, source=client, tcp=True)
            assert essence(relayed) == essence(chained), (qname, qtype, client)
            assert str(relayed.question[0].name) == qname + "."
        assert over_udp.resolver.relayed == sum(upstream for *_, upstream in QUESTIONS)
        assert over_tcp.resolver.relayed == 0


async def test_relayed_answers_fill_the_caches(answers_file: Path, stoppable_unbound) -> None:
    unbound = stoppable_unbound
    clock = FakeClock()
    async with run_dns(clock, recurse=(unbound.address,), answers=str(answers_file)) as server:
        first = await ask(server, "www.example.test")
        assert addresses(first) == ["192.0.2.10"]
        assert server.resolver.relayed == 1
        unbound.stop()
        clock.advance(100)
        again = await ask(server, "www.example.test")
        assert addresses(again) == ["192.0.2.10"]
        assert again.answer[0].ttl == 200
        assert server.resolver.relayed == 1
        assert server.resolver.slow_calls == 0


async def test_a_truncated_reply_goes_back_to_the_chain_for_tcp(tmp_path: Path) -> None:
    with run_unbound(tmp_path / "big", extra=BIG) as upstream:
        async with run_dns(recurse=(upstream.address,)) as server:
            small = await ask(server, "big.example.test")  # no EDNS: the upstream truncates at 512 bytes
            assert small.flags & dns.flags.TC
            assert server.resolver.relayed == 1
            assert server.resolver.slow_calls == 1
            assert len(addresses(await ask(server, "big.example.test", tcp=True))) == 60


async def test_a_silent_upstream_is_waited_for_once(answers_file: Path, unbound) -> None:
    """The silent upstream is a bare UDP socket that never answers (no real server drops queries
    on purpose): the relay gives up on it once and moves on, and a lone one gets SERVFAIL after
    one wait, not one wait for the relay and another for the chain."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        quiet = silent.getsockname()
        async with run_dns(recurse=(quiet, unbound.address), recurser_timeout=0.3) as server:
            assert addresses(await ask(server, "n2.wild.test")) == ["192.0.2.99"]
            assert server.upstream.failures[quiet] == 1
            assert server.resolver.relayed == 1
        async with run_dns(recurse=(quiet,), recurser_timeout=0.3) as server:
            assert rcode(await ask(server, "n3.wild.test")) == "SERVFAIL"
            assert server.upstream.failures[quiet] == 1
            assert server.resolver.slow_calls == 0


async def test_an_upstream_reply_keeps_only_its_own_ttl(tmp_path: Path) -> None:
    """Relayed replies are walked once, on their way to the cache; a TTL 0 one is not kept."""
    clock = FakeClock()
    extra = 'local-data: "zero.example.test. 0 IN A 192.0.2.30"\nlocal-data: "short.example.test. 5 IN A 192.0.2.31"\n'
    with run_unbound(tmp_path / "ttl", extra=extra) as upstream:
        async with run_dns(clock, recurse=(upstream.address,), serve_stale=0) as server:
            for name in ("zero.example.test", "short.example.test", "www.example.test"):
                assert addresses(await ask(server, name))
            assert len(server.global_cache) == 2
            assert server.resolver.relayed == 3
            upstream.stop()
            clock.advance(4)
            assert rcode(await ask(server, "zero.example.test")) == "SERVFAIL"  # TTL 0: never served from cache
            short = await ask(server, "short.example.test")
            assert addresses(short) == ["192.0.2.31"]
            assert short.answer[0].ttl == 1
            clock.advance(2)
            assert rcode(await ask(server, "short.example.test")) == "SERVFAIL"  # its own 5 s, not the cap
            assert (await ask(server, "www.example.test")).answer[0].ttl == 294
