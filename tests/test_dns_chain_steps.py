"""The chain's steps on their own: the real steps, a real answers table, and a fake last step
that stands in for the upstreams (it answers every question it gets with one A record and counts
them), in the manner of CoreDNS's ``test.Case`` tables. Then the contract every driver relies
on, as properties: a check changes nothing, says the same thing twice, and names the step whose
kind of answer the whole chain gives; the callback driver answers what the coroutine driver
answers. Last, the drivers themselves, on steps made for the purpose: backs run bottom-up above
the answering step only, and a fallback answers in time over both drivers."""

from __future__ import annotations

import asyncio
import copy

import dns.message
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dns_svc.answers import answers_from_fleet
from dns_svc.chain import PASS, WAIT, Answer, Chain, Done, Pass, Pending, Query, Source, Step, Verdict
from dns_svc.wire import parse_query
from shared.model import Fleet
from tests.support.chain import UPSTREAM_ADDRESS, Setup, make_query, resolve, setup
from tests.support.fleets import dns_fleet

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
        outcome = relayed.chain.walk(make_query(relayed, name, qtype, client))
        if isinstance(outcome, Answer):
            assert source is not Source.UPSTREAM, name  # answered without waiting
            assert outcome.wire[2:] == answer.wire[2:]
            continue
        assert source is Source.UPSTREAM, name  # only the upstream step waits here
        got: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        assert outcome.relay(lambda _p, a: got.set_result(a))  # noqa: B023 (awaited in this iteration)
        relayed_answer = await got
        assert relayed_answer is not None
        assert relayed_answer.wire[2:] == answer.wire[2:]


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


# Which step gives which kind of answer.
KINDS = {
    "client_cache": {Source.CLIENT_CACHE},
    "local": {Source.LOCAL},
    "global_cache": {Source.GLOBAL_CACHE},
    "authority": {Source.AUTHORITY},
    "upstream": {Source.UPSTREAM},
}


def snapshot(s: Setup) -> tuple[int, dict[object, int]]:
    """What a check could change: the caches' generation and every entry held (LRU order aside:
    a hit is a use)."""
    return s.caches.generation, {k: id(v) for k, v in s.caches.store.entries.items()}


def kind(verdict: Verdict) -> object:
    if isinstance(verdict, Answer):
        return verdict.source
    if isinstance(verdict, Pass):
        return ("pass", verdict.fallback is not None)
    return verdict


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(NAMES), qtype=st.sampled_from(TYPES), client=st.sampled_from(CLIENTS), warm=st.booleans())
def test_each_steps_check_agrees_with_the_resolution(name: str, qtype: str, client: str, warm: bool) -> None:
    async def run() -> None:
        s = setup()
        if warm:  # the caches hold this question's answer already
            await resolve(s, name, qtype, client)
        before = snapshot(s)
        deciding = None
        for step in s.chain.steps:
            first = step.check(make_query(s, name, qtype, client))
            assert kind(step.check(make_query(s, name, qtype, client))) == kind(first), step.name
            assert snapshot(s) == before, (step.name, name, qtype, client, warm)  # a check changes nothing
            if first is not PASS and not isinstance(first, Pass):
                deciding = step
                break
        assert deciding is not None
        answer = await s.chain.resolve(make_query(s, name, qtype, client))
        assert answer.source in KINDS[deciding.name], (deciding.name, answer.source, name, qtype, client, warm)

    asyncio.run(run())


class Recorder(Step):
    """A step that passes everything on and writes down each answer it sees on its way back."""

    def __init__(self, name: str, seen: list[tuple[str, Source]]) -> None:
        self.name = name
        self.seen = seen

    def check(self, query: Query) -> Verdict:
        return PASS

    def back(self, query: Query, answer: Answer) -> Answer:
        self.seen.append((self.name, answer.source))
        return answer


class Slow(Step):
    """The last step: answers after ``delay`` seconds, over both drivers."""

    name = "slow"

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def check(self, query: Query) -> Verdict:
        return WAIT

    async def wait(self, query: Query) -> Answer:
        await asyncio.sleep(self.delay)
        return Answer(b"\x00\x00late", Source.UPSTREAM)

    def relay(self, query: Query, done: Done) -> bool:
        loop = asyncio.get_running_loop()
        loop.call_later(self.delay, done, query, Answer(b"\x00\x00late", Source.UPSTREAM))
        return True


class Fallback(Step):
    """Passes with a fallback answer, as serve-stale does."""

    name = "fallback"

    def __init__(self, after: float) -> None:
        self.passing = Pass(lambda q: Answer(b"\x00\x00stale", Source.STALE), after)

    def check(self, query: Query) -> Verdict:
        return self.passing


def plain_query() -> Query:
    s = setup()
    return make_query(s, "www.example.test")


async def test_backs_run_bottom_up_above_the_answering_step_only() -> None:
    seen: list[tuple[str, Source]] = []
    chain = Chain([Recorder("top", seen), Recorder("middle", seen), Slow(0.0), Recorder("below", seen)])
    answer = await chain.resolve(plain_query())
    assert answer.wire.endswith(b"late")
    assert seen == [("middle", Source.UPSTREAM), ("top", Source.UPSTREAM)]


@pytest.mark.parametrize("relayed", [True, False])
async def test_a_fallback_answers_when_the_wait_runs_past_its_timer(relayed: bool) -> None:
    """Over either driver: the fallback's answer at its time, through the steps above it only;
    the late answer still comes back up through every step above the one that waited."""
    seen: list[tuple[str, Source]] = []
    chain = Chain([Recorder("top", seen), Fallback(0.05), Recorder("middle", seen), Slow(0.3)])
    outcome = chain.walk(plain_query())
    assert isinstance(outcome, Pending)
    if relayed:
        got: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        assert outcome.relay(lambda _p, a: got.set_result(a))
        answer = await got
    else:
        answer = await outcome.answer()
    assert answer is not None
    assert answer.source is Source.STALE
    assert seen == [("top", Source.STALE)]  # the fallback's, before the slow step's answer came up
    async with asyncio.timeout(10):  # the slow step's answer, on its way up
        while len(seen) < 3:
            await asyncio.sleep(0.01)
    assert seen[1:] == [("middle", Source.UPSTREAM), ("top", Source.UPSTREAM)]


async def test_a_wait_within_its_timer_is_the_answer() -> None:
    chain = Chain([Fallback(0.5), Slow(0.01)])
    assert (await chain.resolve(plain_query())).source is Source.UPSTREAM


class Outgoing(Step):
    """A step that must wait, as every step that sends a query out does; waiting on it for a
    client outside --allow-recursion is the defect the recursion gate prevents."""

    name = "outgoing"

    def check(self, query: Query) -> Verdict:
        return WAIT

    async def wait(self, query: Query) -> Answer:
        raise AssertionError("waited on for a client outside --allow-recursion")

    def relay(self, query: Query, done: Done) -> bool:
        raise AssertionError("relayed for a client outside --allow-recursion")


def test_the_recursion_gate_answers_for_a_step_that_would_wait() -> None:
    """For a client outside --allow-recursion, the drivers never wait on a step (no ``Pending``,
    so neither ``relay`` nor ``wait``): its ``refused`` answer comes back at once, up through the
    steps above it, with nothing sent. The same through the real steps: nothing reaches the last."""
    seen: list[tuple[str, Source]] = []
    chain = Chain([Recorder("top", seen), Outgoing(), Recorder("below", seen)])
    outside = plain_query()
    outside = Query(outside.raw, "192.0.2.1", "udp", outside.table, outside.view, False)
    answer = chain.walk(outside)
    assert isinstance(answer, Answer)
    assert answer.source is Source.REFUSED
    assert dns.rcode.to_text(dns.message.from_wire(answer.wire).rcode()) == "REFUSED"
    assert seen == [("top", Source.REFUSED)]
    s = setup()
    for name, qtype, _client, source, *_ in CASES:
        query = make_query(s, name, qtype, "192.0.2.1")
        real = s.chain.walk(Query(query.raw, query.client_ip, "udp", s.table, query.view, False, query.generation))
        assert isinstance(real, Answer), name
        assert real.source is (Source.REFUSED if source is Source.UPSTREAM else source), name
    assert s.upstream.asked == []


async def test_a_name_found_not_local_is_not_looked_up_again() -> None:
    """Once the local step has seen a name bound upstream asked again, its check passes it on
    from the memo, without looking in the table, until the answers change. Seen here by handing
    the check a table in which the name is local: after one ask it still looks (a name asked
    once is not remembered), after two it passes, after a change it answers from that table."""
    s = setup()
    data = dns_fleet()
    data["services"].append({"name": "www", "stack_name": "shop", "external_ips": ["192.0.2.77"]})
    table = answers_from_fleet(Fleet.from_mapping(data), metadata_answer=("127.0.0.250",))

    def query() -> Query:
        raw = parse_query(dns.message.make_query("www", "A").to_wire())
        return Query(raw, "127.0.0.11", "udp", table, table.view("127.0.0.11"), True, s.caches.generation)

    local = s.chain.steps[1]
    await resolve(s, "www", client="127.0.0.11")  # not local in the first table, asked once
    assert isinstance(local.check(query()), Answer)
    await resolve(s, "www", client="127.0.0.11")  # asked again (a global cache hit): remembered
    assert local.check(query()) is PASS
    s.caches.clear(set())  # the answers changed: look again
    answer = local.check(query())
    assert isinstance(answer, Answer)
    assert answer.source is Source.LOCAL


async def test_a_chase_whose_name_left_the_table_before_its_wait_is_not_answered_from_before() -> None:
    """The table is updated in place between queries (``TableRef``): a CNAME chase is decided by
    ``check`` and run by ``wait`` later, so ``wait`` reads the table again. When the name left it
    meanwhile, the answer is a SERVFAIL that no cache keeps, never the old CNAME; when the name
    no longer leaves the table, the new records, without the chase."""
    from dnslib import RR, A

    from dns_svc.steps.authority import Authority
    from dns_svc.steps.cache import ClientCacheStep
    from dns_svc.steps.local import LocalAnswers
    from shared.fleet_changes import diff_fleets
    from tests.support.chain import FakeUpstream

    chased: list[str] = []

    async def chase(_query: Query, name: str, _qtype: int) -> list[RR]:
        chased.append(name)
        return [RR(name, 1, ttl=60, rdata=A("192.0.2.55"))]

    data = dns_fleet(many=0)
    s = setup(data)
    local = LocalAnswers(ttl=1, memo=s.caches, chase=chase)
    s.chain = Chain([ClientCacheStep(s.caches), local, Authority(ttl=1), FakeUpstream()])
    fleet = Fleet.from_mapping(data)

    def without_payments(external_ips: list[str] | None) -> Fleet:
        changed = copy.deepcopy(data)
        payments = next(x for x in changed["services"] if x["name"] == "payments")
        if external_ips is None:
            changed["services"].remove(payments)
        else:
            payments.pop("hostname")
            payments["external_ips"] = external_ips
        return Fleet.from_mapping(changed)

    def pending() -> Pending:
        outcome = s.chain.walk(make_query(s, "payments.shop.rancher.internal."))
        assert isinstance(outcome, Pending)
        return outcome

    waiting = pending()
    readdressed = without_payments(["192.0.2.99"])
    s.table.update(readdressed, diff_fleets(fleet, readdressed), 2)
    s.caches.clear(None, None)
    reply = dns.message.from_wire((await waiting.answer()).wire)
    assert [rd.address for rrset in reply.answer for rd in rrset] == ["192.0.2.99"]
    assert chased == []

    s.table.update(fleet, diff_fleets(readdressed, fleet), 3)
    s.caches.clear(None, None)
    waiting = pending()
    gone = without_payments(None)
    s.table.update(gone, diff_fleets(fleet, gone), 4)
    s.caches.clear(None, None)
    answer = await waiting.answer()
    assert dns.message.from_wire(answer.wire).rcode() == dns.rcode.SERVFAIL
    assert chased == []
    _, again = await resolve(s, "payments.shop.rancher.internal.")
    assert again.rcode() == dns.rcode.NXDOMAIN
