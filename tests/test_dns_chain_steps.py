"""The chain's steps on their own: the real steps, a real answers table, and a fake last step
that stands in for the upstreams (it answers every question it gets with one A record and counts
them), in the manner of CoreDNS's ``test.Case`` tables. Then the contract the relay path relies
on, as a property: for any question, each step's ``passes`` says exactly whether its
``resolve`` hands the query on."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from typing import Any

import dns.message
import dns.rcode
import pytest
from dnslib import RR, A, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dns_svc.answers import AnswersTable, answers_from_fleet
from dns_svc.chain import Answer, CallNext, Chain, Done, Query, Source, Step
from dns_svc.steps.authority import Authority
from dns_svc.steps.cache import ClientCacheStep, GlobalCacheStep, ReplyCache
from dns_svc.steps.cache.step import ClientCaches, ReplyStore
from dns_svc.steps.local import LocalAnswers
from dns_svc.wire import parse_query
from shared.model import Fleet
from tests.support.fleets import dns_fleet

UPSTREAM_ADDRESS = "192.0.2.200"


class FakeUpstream(Step):
    """The last step: one A record for anything (a real upstream is what the other DNS tests use;
    here the point is which questions reach it)."""

    name = "upstream"

    def __init__(self) -> None:
        self.asked: list[str] = []

    def _answer(self, query: Query) -> Answer:
        self.asked.append(query.raw.lower_text())
        request = DNSRecord.parse(query.raw.packet)
        reply = request.reply()
        reply.add_answer(RR(request.q.qname, 1, ttl=60, rdata=A(UPSTREAM_ADDRESS)))
        return Answer(bytes(reply.pack()), Source.UPSTREAM)

    async def resolve(self, query: Query, call_next: CallNext) -> Answer:
        return self._answer(query)

    def relay(self, query: Query, done: Done) -> bool:
        asyncio.get_running_loop().call_soon(done, query, self._answer(query))
        return True


@dataclass
class Setup:
    table: AnswersTable
    chain: Chain
    upstream: FakeUpstream
    caches: ClientCaches


def setup(data: dict[str, Any] | None = None) -> Setup:
    fleet = Fleet.from_mapping(copy.deepcopy(data or dns_fleet()))
    table = answers_from_fleet(fleet, metadata_answer=("127.0.0.250",))
    store = ReplyStore(10_000)
    caches = ClientCaches(store)
    global_step = GlobalCacheStep(ReplyCache(store=store), max_ttl=3600, servfail_ttl=2)
    upstream = FakeUpstream()
    chain = Chain(
        [ClientCacheStep(caches), LocalAnswers(ttl=1), global_step, Authority(ttl=1), upstream],
        after_local=global_step,
    )
    return Setup(table, chain, upstream, caches)


def make_query(s: Setup, name: str, qtype: str = "A", client: str = "127.0.0.1") -> Query:
    raw = parse_query(dns.message.make_query(name, qtype).to_wire())
    return Query(raw, client, "udp", s.table, s.table.view(client), recursion_allowed=True)


async def resolve(s: Setup, name: str, qtype: str = "A", client: str = "127.0.0.1") -> tuple[Answer, Any]:
    answer = await s.chain.resolve(make_query(s, name, qtype, client))
    return answer, dns.message.from_wire(answer.wire)


# name, type, client -> where the answer comes from, rcode, the addresses in it
CASES = [
    ("web.shop.rancher.internal", "A", "127.0.0.1", Source.LOCAL, "NOERROR", {"127.0.0.11", "127.0.0.12"}),
    ("shop-web-3.rancher.internal", "A", "127.0.0.1", Source.LOCAL, "NOERROR", {"127.0.0.13"}),
    ("nope.rancher.internal", "A", "127.0.0.1", Source.AUTHORITY, "NXDOMAIN", set()),
    ("web.shop.rancher.internal", "MX", "127.0.0.1", Source.LOCAL, "NOERROR", set()),  # NODATA, with the SOA
    ("www.example.test", "A", "127.0.0.1", Source.UPSTREAM, "NOERROR", {UPSTREAM_ADDRESS}),
    ("rancher-metadata.rancher.internal", "A", "127.0.0.1", Source.LOCAL, "NOERROR", {"127.0.0.250"}),
]


@pytest.mark.parametrize(("name", "qtype", "client", "source", "code", "ips"), CASES)
async def test_case(name: str, qtype: str, client: str, source: Source, code: str, ips: set[str]) -> None:
    s = setup()
    answer, message = await resolve(s, name, qtype, client)
    assert answer.source is source
    assert dns.rcode.to_text(message.rcode()) == code
    assert {rd.address for rrset in message.answer for rd in rrset if hasattr(rd, "address")} == ips
    assert (f"{name}." in s.upstream.asked) == (source is Source.UPSTREAM)  # zone names never go upstream
    # asked again: from the cache that keeps this kind of answer, and nothing more upstream
    again, _ = await resolve(s, name, qtype, client)
    if source is Source.UPSTREAM:
        assert again.source is Source.GLOBAL_CACHE
    else:
        assert again.source is Source.CLIENT_CACHE
    assert s.upstream.asked.count(f"{name}.") == (1 if source is Source.UPSTREAM else 0)


async def test_the_relay_path_answers_what_the_chain_answers() -> None:
    for name, qtype, client, source, _code, _ips in CASES:
        chained, relayed = setup(), setup()
        answer, _ = await resolve(chained, name, qtype, client)
        query = make_query(relayed, name, qtype, client)
        got: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        query.reply_to = lambda _q, a, got=got: got.set_result(a)
        if relayed.chain.relay(query):
            assert source is Source.UPSTREAM, name  # only upstream-bound questions are relayed
            relayed_answer = await got
            assert relayed_answer is not None
            assert relayed_answer.wire[2:] == answer.wire[2:]
        else:
            assert source is not Source.UPSTREAM, name


NAMES = [case[0] for case in CASES] + [
    "db.shop.rancher.internal",
    "web.shop",
    "web",
    "rancher.internal",
    "shop.rancher.internal",
    "payments.shop.rancher.internal",
    "legacy.shop.rancher.internal",
    "_web._tcp.shop.rancher.internal",
    "log.web.shop.rancher.internal",
    "elsewhere.test",
    "a.b.c.example.org",
]
TYPES = ["A", "AAAA", "SRV", "TXT", "MX", "PTR", "CNAME", "SOA", "NS", "ANY"]
CLIENTS = ["127.0.0.1", "127.0.0.11", "127.0.0.14", "127.0.0.41", "10.9.9.9"]


class Probe:
    """``call_next`` for one step: remembers whether the step handed the query on."""

    def __init__(self) -> None:
        self.called = False

    async def __call__(self, query: Query) -> Answer:
        self.called = True
        return FakeUpstream()._answer(query)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(NAMES), qtype=st.sampled_from(TYPES), client=st.sampled_from(CLIENTS), warm=st.booleans())
def test_each_steps_check_agrees_with_its_resolution(name: str, qtype: str, client: str, warm: bool) -> None:
    async def run() -> None:
        s = setup()
        if warm:  # the caches hold this question's answer already
            await resolve(s, name, qtype, client)
        for step in s.chain.steps[:-1]:
            passes = step.passes(make_query(s, name, qtype, client))
            probe = Probe()
            await step.resolve(make_query(s, name, qtype, client), probe)
            assert passes == probe.called, (step.name, name, qtype, client, warm)

    asyncio.run(run())
