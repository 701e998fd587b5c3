"""Federation: one distributed domain over two clusters, each a real unbound on its own loopback
address serving its cluster's zone."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import RR, DNSLabel, DNSRecord

from dns_svc.chain import Query
from dns_svc.steps.gather import GatherStep, parse_cluster
from dns_svc.steps.gather.step import Cluster
from dns_svc.wire import parse_query
from tests.support.chain import setup
from tests.support.dns import addresses, ask, rcode, run_dns
from tests.support.metrics import scrape, value
from tests.support.upstream import Unbound, run_unbound


def zone(domain: str, host: str, ip: str, ttl: int, text: str) -> str:
    return f"""local-zone: "." static
local-zone: "{domain}." static
local-data: "{domain}. 3600 IN SOA ns.{domain}. a.{domain}. 1 3600 600 86400 30"
local-data: "_http._tcp.demo.svc.{domain}. {ttl} IN SRV 0 50 8080 {host}.svc.{domain}."
local-data: "{host}.svc.{domain}. {ttl} IN A {ip}"
local-data: "demo.svc.{domain}. {ttl} IN A {ip}"
local-data: 'txt.svc.{domain}. {ttl} IN TXT "{text}"'
"""


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[tuple[Unbound, Unbound]]:
    a_zone = (
        zone("cluster-a.local", "demo-0", "10.1.0.10", 30, "from a")
        + 'local-data: "onlya.svc.cluster-a.local. 30 IN A 10.1.0.99"\n'
    )
    with (
        run_unbound(tmp_path / "a", host="127.0.0.2", zone=a_zone, log_queries=True) as a,
        run_unbound(
            tmp_path / "b",
            host="127.0.0.3",
            zone=zone("cluster-b.local", "demo-1", "10.2.0.11", 20, "from b"),
            log_queries=True,
        ) as b,
    ):
        yield a, b


def gather_settings(a: tuple[str, int], b: tuple[str, int], timeout: float = 1.0) -> dict[str, object]:
    return {
        "gather_domain": "distributed.local.",
        "gather_timeout": timeout,
        "clusters": (
            parse_cluster(f"cluster-a.local.=a-@{a[0]}:{a[1]}"),
            parse_cluster(f"cluster-b.local.=b-@{b[0]}:{b[1]}"),
        ),
        "http_host": "127.0.0.1",
        "http_port": 0,
    }


async def metrics(server) -> str:
    return await scrape(server.http_address)


@pytest.mark.external_tool
async def test_merged_srv_with_rewritten_targets_that_resolve(clusters, unbound) -> None:
    a, b = clusters
    async with run_dns(recurse=(unbound.address,), **gather_settings(a.address, b.address)) as server:
        reply = await ask(server, "_http._tcp.demo.svc.distributed.local", "SRV", use_edns=0)
        assert rcode(reply) == "NOERROR"
        [srv] = reply.answer
        assert str(srv.name) == "_http._tcp.demo.svc.distributed.local."
        assert [str(rd.target) for rd in srv] == ["a-demo-0.svc.distributed.local.", "b-demo-1.svc.distributed.local."]
        assert srv.ttl == 20  # the smallest TTL of the merge
        for target, ip in (
            ("a-demo-0.svc.distributed.local", "10.1.0.10"),
            ("b-demo-1.svc.distributed.local", "10.2.0.11"),
        ):
            answer = await ask(server, target)
            assert addresses(answer) == [ip]
            assert str(answer.answer[0].name) == target + "."  # owners match the question
        text = await metrics(server)
        assert value(text, "metadns_gather_queries_total", qtype="SRV") == 1
        assert value(text, "metadns_gather_subqueries_total", cluster="cluster-a.local.", rcode="NOERROR") == 2
        assert value(text, "metadns_gather_subqueries_total", cluster="cluster-b.local.", rcode="NOERROR") == 2
        assert value(text, "metadns_gather_subquery_seconds_count", cluster="cluster-a.local.") == 2
        # the merged answer is cached: asking again sends no sub-query
        await ask(server, "_http._tcp.demo.svc.distributed.local", "SRV", use_edns=0)
        again = await metrics(server)
        assert value(again, "metadns_gather_subqueries_total", cluster="cluster-a.local.", rcode="NOERROR") == 2
        # where each answer came from, as /metrics tells it
        assert value(again, "metadns_dns_responses_total", source="gather", type="SRV") == 1
        assert value(again, "metadns_dns_responses_total", source="global_cache", type="SRV") == 1


@pytest.mark.external_tool
async def test_silent_cluster_is_left_out_within_the_deadline(clusters, unbound) -> None:
    """Cluster b is a bare UDP socket that never answers: a real server cannot be made to hang.
    Its upstream timeout (5 s) is longer than the client waits (``ask``: 3 s), so an answer at
    all, with cluster a's record only and cluster b counted as a timeout, is the gather deadline
    (0.5 s) at work, not the upstream giving up."""
    a, _ = clusters
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.3", 0))
        async with run_dns(
            recurse=(unbound.address,),
            recurser_timeout=5.0,
            **gather_settings(a.address, silent.getsockname(), timeout=0.5),
        ) as server:
            reply = await ask(server, "_http._tcp.demo.svc.distributed.local", "SRV", use_edns=0)
            assert [str(rd.target) for rd in reply.answer[0]] == ["a-demo-0.svc.distributed.local."]
            text = await metrics(server)
            assert value(text, "metadns_gather_subqueries_total", cluster="cluster-b.local.", rcode="timeout") == 1


@pytest.mark.external_tool
async def test_no_cluster_answers_servfail_with_ede_23(unbound) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as down:
        down.bind(("127.0.0.2", 0))
        async with run_dns(
            recurse=(unbound.address,),
            **gather_settings(down.getsockname(), ("127.0.0.3", down.getsockname()[1]), timeout=0.3),
        ) as server:
            reply = await ask(server, "_http._tcp.demo.svc.distributed.local", "SRV", use_edns=0)
            assert rcode(reply) == "SERVFAIL"
            [ede] = [o for o in reply.options if o.otype == dns.edns.OptionType.EDE]
            assert ede.code == 23


@pytest.mark.external_tool
async def test_a_client_outside_allow_recursion_is_refused_and_no_cluster_is_asked(clusters, unbound) -> None:
    """The recursion gate for the gather step: a client outside --allow-recursion gets REFUSED,
    as for an upstream name, counted alike on /metrics, and neither cluster (each a real unbound
    logging every query it gets) is asked, over UDP or TCP. A client inside then asks once, which
    shows the logs count what arrives, and the merged answer it leaves in the global cache is
    still not for the client outside."""
    a, b = clusters
    async with run_dns(
        recurse=(unbound.address,), allow_recursion=("127.0.0.1/32",), **gather_settings(a.address, b.address)
    ) as server:
        before = len(a.queried()), len(b.queried())  # their readiness probes
        for tcp in (False, True):
            refused = await ask(
                server, "_http._tcp.demo.svc.distributed.local", "SRV", "127.0.0.5", tcp=tcp, use_edns=0
            )
            assert rcode(refused) == "REFUSED"
            assert not refused.flags & dns.flags.RA
            assert refused.answer == []
            assert not [o for o in refused.options if o.otype == dns.edns.OptionType.EDE]  # nothing timed out
        upstream_name = await ask(server, "www.example.test", source="127.0.0.5")
        assert rcode(upstream_name) == "REFUSED"
        assert (a.queried()[before[0] :], b.queried()[before[1] :]) == ([], [])
        text = await metrics(server)
        for qtype in ("SRV", "A"):
            assert (
                value(text, "metadns_dns_responses_total", source="refused", type=qtype, rcode="REFUSED", proto="udp")
                == 1
            )
        assert value(text, "metadns_dns_responses_total", source="refused", type="SRV", proto="tcp") == 1
        assert value(text, "metadns_gather_queries_total", qtype="SRV", default=0) == 0

        merged = await ask(server, "_http._tcp.demo.svc.distributed.local", "SRV", use_edns=0)
        assert rcode(merged) == "NOERROR"
        assert a.queried()[before[0] :] == ["_http._tcp.demo.svc.cluster-a.local."]
        assert b.queried()[before[1] :] == ["_http._tcp.demo.svc.cluster-b.local."]
        cached = await ask(server, "_http._tcp.demo.svc.distributed.local", "SRV", "127.0.0.5", use_edns=0)
        assert rcode(cached) == "REFUSED"


def test_additional_records_are_renamed_like_srv_targets() -> None:
    """Unbound's local data carries no glue, so the additional-section rule is checked on a reply
    built here: glue for a cluster host is owned by the host's distributed name."""
    from dnslib import RR

    from dns_svc.steps.gather import GatherStep

    step = GatherStep("distributed.local.", [parse_cluster("cluster-a.local.=a-@127.0.0.2")], None, 1.0)  # type: ignore[arg-type]
    cluster = step.clusters[0]
    [glue] = RR.fromZone("demo-0.svc.cluster-a.local. 30 IN A 10.1.0.10")
    renamed = step.rewrite(
        glue,
        cluster,
        "_http._tcp.demo.svc.cluster-a.local.",
        "_http._tcp.demo.svc.distributed.local.",
        owner_is_question=False,
    )
    assert str(renamed.rname) == "a-demo-0.svc.distributed.local."
    assert str(renamed.rdata) == "10.1.0.10"
    [cname] = RR.fromZone("www.svc.cluster-a.local. 30 IN CNAME demo-0.svc.cluster-a.local.")
    renamed = step.rewrite(
        cname, cluster, "www.svc.cluster-a.local.", "a-www.svc.distributed.local.", owner_is_question=True
    )
    assert str(renamed.rname) == "a-www.svc.distributed.local."
    assert str(renamed.rdata.label) == "a-demo-0.svc.distributed.local."


def test_cluster_flag_parsing() -> None:
    c = parse_cluster("Cluster-A.local=a-@127.0.0.2:5300,127.0.0.4")
    assert (c.domain, c.prefix, c.upstreams) == ("cluster-a.local.", "a-", (("127.0.0.2", 5300), ("127.0.0.4", 53)))
    with pytest.raises(ValueError, match="expected DOMAIN=PREFIX@IP"):
        parse_cluster("cluster-a.local.")


# The gather step's pure logic as tables: which questions it takes, where each goes, how names
# come back, how the clusters' replies merge. No cluster, no socket: the end-to-end tests above
# keep one of each behaviour through real unbound clusters.
A_CLUSTER = parse_cluster("cluster-a.local.=a-@127.0.0.2")
B_CLUSTER = parse_cluster("cluster-b.local.=b-@127.0.0.3")
STEP = GatherStep("distributed.local.", [A_CLUSTER, B_CLUSTER], None, 1.0)  # type: ignore[arg-type]

GATHERS = [
    ("SRV", "_http._tcp.demo.svc.distributed.local.", True),
    ("A", "demo.svc.distributed.local.", True),
    ("AAAA", "demo.svc.distributed.local.", True),
    ("TXT", "txt.svc.distributed.local.", True),
    ("MX", "demo.svc.distributed.local.", False),  # not a type worth merging
    ("A", "distributed.local.", False),  # the domain itself
    ("A", "notdistributed.local.", False),
    ("A", "demo.distributed.local.elsewhere.", False),
]


@pytest.mark.parametrize(("qtype", "name", "expected"), GATHERS)
def test_gathers(qtype: str, name: str, expected: bool) -> None:
    assert STEP.gathers(dns.rdatatype.from_text(qtype), name) is expected


ROUTES = [
    (
        "demo.svc.distributed.local.",
        [("cluster-a.local.", "demo.svc.cluster-a.local."), ("cluster-b.local.", "demo.svc.cluster-b.local.")],
    ),
    ("a-demo.svc.distributed.local.", [("cluster-a.local.", "demo.svc.cluster-a.local.")]),  # a prefixed host
    ("b-demo-1.svc.distributed.local.", [("cluster-b.local.", "demo-1.svc.cluster-b.local.")]),
    ("_http._tcp.a-demo.svc.distributed.local.", [("cluster-a.local.", "_http._tcp.demo.svc.cluster-a.local.")]),
    (
        "_http._tcp.demo.svc.distributed.local.",
        [
            ("cluster-a.local.", "_http._tcp.demo.svc.cluster-a.local."),
            ("cluster-b.local.", "_http._tcp.demo.svc.cluster-b.local."),
        ],
    ),
    (
        "a-.svc.distributed.local.",
        [("cluster-a.local.", "a-.svc.cluster-a.local."), ("cluster-b.local.", "a-.svc.cluster-b.local.")],
    ),  # a bare prefix is a name
]


@pytest.mark.parametrize(("name", "expected"), ROUTES)
def test_route(name: str, expected: list[tuple[str, str]]) -> None:
    assert [(cluster.domain, sub) for cluster, sub in STEP.route(name)] == expected


RENAMES = [
    ("demo-0.svc.cluster-a.local.", A_CLUSTER, "a-demo-0.svc.distributed.local."),
    ("demo-1.svc.cluster-b.local.", B_CLUSTER, "b-demo-1.svc.distributed.local."),
    ("_http._tcp.demo.svc.cluster-a.local.", A_CLUSTER, "_http._tcp.demo.svc.distributed.local."),  # no prefix on _
    ("cluster-a.local.", A_CLUSTER, "distributed.local."),
    ("Demo-0.SVC.Cluster-A.Local.", A_CLUSTER, "a-Demo-0.SVC.distributed.local."),  # the case as sent
    ("elsewhere.test.", A_CLUSTER, "elsewhere.test."),  # outside the cluster: left alone
    ("x.cluster-b.local.", A_CLUSTER, "x.cluster-b.local."),  # another cluster's name
    ("xcluster-a.local.", A_CLUSTER, "xcluster-a.local."),  # not below it, only ending like it
]


@pytest.mark.parametrize(("name", "cluster", "expected"), RENAMES)
def test_rename(name: str, cluster: Cluster, expected: str) -> None:
    assert STEP.rename(name, cluster) == expected


def sub_reply(name: str, qtype: str, *zone: str, rcode: int = 0) -> DNSRecord:
    reply = DNSRecord.question(name, qtype).reply()
    reply.header.rcode = rcode
    for line in zone:
        for rr in RR.fromZone(line):
            (reply.add_ar if rr.rname != DNSLabel(name) and rr.rtype == 1 and qtype == "SRV" else reply.add_answer)(rr)
    return reply


SRV_A = sub_reply(
    "_http._tcp.demo.svc.cluster-a.local.",
    "SRV",
    "_http._tcp.demo.svc.cluster-a.local. 30 IN SRV 0 50 8080 demo-0.svc.cluster-a.local.",
    "demo-0.svc.cluster-a.local. 30 IN A 10.1.0.10",
)
SRV_B = sub_reply(
    "_http._tcp.demo.svc.cluster-b.local.",
    "SRV",
    "_http._tcp.demo.svc.cluster-b.local. 20 IN SRV 0 50 8080 demo-1.svc.cluster-b.local.",
)
A_ONLY = sub_reply("onlya.svc.cluster-a.local.", "A", "onlya.svc.cluster-a.local. 30 IN A 10.1.0.99")
NX_A = sub_reply("nothing.svc.cluster-a.local.", "A", rcode=3)
NX_B = sub_reply("onlya.svc.cluster-b.local.", "A", rcode=3)
NX_B2 = sub_reply("nothing.svc.cluster-b.local.", "A", rcode=3)
NX_A2 = sub_reply("onlyb.svc.cluster-a.local.", "A", rcode=3)
B_ONLY = sub_reply("onlyb.svc.cluster-b.local.", "A", "onlyb.svc.cluster-b.local. 20 IN A 10.2.0.99")
# question, type, with EDNS, the clusters' replies (None: no answer in time) -> rcode, answer
# records as text (TTL included: every one the smallest), additional records, EDE code
MERGES = [
    (
        "_http._tcp.demo.svc.distributed.local.",
        "SRV",
        False,
        [SRV_A, SRV_B],
        "NOERROR",
        [
            "_http._tcp.demo.svc.distributed.local. 20 IN SRV 0 50 8080 a-demo-0.svc.distributed.local.",
            "_http._tcp.demo.svc.distributed.local. 20 IN SRV 0 50 8080 b-demo-1.svc.distributed.local.",
        ],
        ["a-demo-0.svc.distributed.local. 20 IN A 10.1.0.10"],
        None,
    ),
    (
        "onlya.svc.distributed.local.",
        "A",
        True,
        [A_ONLY, NX_B],
        "NOERROR",
        ["onlya.svc.distributed.local. 30 IN A 10.1.0.99"],
        [],
        None,
    ),
    (
        "onlya.svc.distributed.local.",
        "A",
        False,
        [A_ONLY, None],
        "NOERROR",
        ["onlya.svc.distributed.local. 30 IN A 10.1.0.99"],
        [],
        None,
    ),
    (  # any NOERROR makes the merge NOERROR, whichever cluster comes first
        "onlyb.svc.distributed.local.",
        "A",
        False,
        [NX_A2, B_ONLY],
        "NOERROR",
        ["onlyb.svc.distributed.local. 20 IN A 10.2.0.99"],
        [],
        None,
    ),
    ("nothing.svc.distributed.local.", "A", False, [NX_A, NX_B2], "NXDOMAIN", [], [], None),
    ("nothing.svc.distributed.local.", "A", True, [None, None], "SERVFAIL", [], [], 23),
    ("nothing.svc.distributed.local.", "A", False, [None, None], "SERVFAIL", [], [], None),  # no OPT, no EDE
]


@pytest.mark.parametrize(("qname", "qtype", "edns", "replies", "code", "answers", "extra", "ede"), MERGES)
def test_merge(
    qname: str,
    qtype: str,
    edns: bool,
    replies: list[DNSRecord | None],
    code: str,
    answers: list[str],
    extra: list[str],
    ede: int | None,
) -> None:
    s = setup()
    asked = dns.message.make_query(qname, qtype, use_edns=0 if edns else False, want_dnssec=edns)
    asked.flags |= dns.flags.AD
    raw = parse_query(asked.to_wire())
    query = Query(raw, "127.0.0.1", "udp", s.table, s.table.view("127.0.0.1"), True)
    wire = STEP.merge(query, qname, STEP.route(qname), replies)
    merged = dns.message.from_wire(wire)
    assert dns.rcode.to_text(merged.rcode()) == code
    assert merged.id == asked.id
    assert not merged.flags & dns.flags.AD  # merged from several clusters: nothing validated here
    assert [rr for rrset in merged.answer for rr in rrset.to_text().splitlines()] == answers
    assert [rr for rrset in merged.additional for rr in rrset.to_text().splitlines()] == extra
    assert (merged.edns == 0) is edns  # OPT only for a query with one
    if edns:
        assert merged.ednsflags & dns.flags.DO
        assert merged.payload == 1232
    codes = [o.code for o in merged.options if o.otype == dns.edns.OptionType.EDE]
    assert codes == ([] if ede is None else [ede])
