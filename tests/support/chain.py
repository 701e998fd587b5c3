"""A chain of the real steps in process, over a real answers table, for tests of the pure logic:
no socket, no metadata service, no upstream server. The last step is a fake upstream that
answers every question with one A record and records which questions reached it (the tests
with a real upstream are the end-to-end ones)."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from typing import Any

import dns.message
from dnslib import RR, A, DNSRecord

from dns_svc.answers import AnswersTable, answers_from_fleet
from dns_svc.chain import WAIT, Answer, Chain, Done, Query, Source, Step, Verdict
from dns_svc.replies import ClientCaches, ReplyCache, ReplyStore
from dns_svc.steps.authority import Authority
from dns_svc.steps.cache import ClientCacheStep, GlobalCacheStep
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

    def check(self, query: Query) -> Verdict:
        return WAIT

    async def wait(self, query: Query) -> Answer:
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
    chain = Chain([ClientCacheStep(caches), LocalAnswers(ttl=1, memo=caches), global_step, Authority(ttl=1), upstream])
    return Setup(table, chain, upstream, caches)


def make_query(s: Setup, name: str, qtype: str = "A", client: str = "127.0.0.1", transport: str = "udp") -> Query:
    raw = parse_query(dns.message.make_query(name, qtype).to_wire())
    return Query(raw, client, transport, s.table, s.table.view(client), True, s.caches.generation)


async def resolve(
    s: Setup, name: str, qtype: str = "A", client: str = "127.0.0.1", transport: str = "udp"
) -> tuple[Answer, Any]:
    answer = await s.chain.resolve(make_query(s, name, qtype, client, transport))
    return answer, dns.message.from_wire(answer.wire)
