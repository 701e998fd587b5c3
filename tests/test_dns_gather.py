"""Federation: one distributed domain over two clusters, each a real unbound on its own loopback
address serving its cluster's zone."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.rdatatype
import pytest

from dns_svc.steps.gather import parse_cluster
from tests.support.dns import addresses, ask, rcode, run_dns
from tests.support.metrics import scrape, value
from tests.support.upstream import Unbound, run_unbound

pytestmark = pytest.mark.external_tool


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


async def test_prefix_routes_to_one_cluster_and_plain_names_fan_out(clusters, unbound) -> None:
    a, b = clusters
    async with run_dns(recurse=(unbound.address,), **gather_settings(a.address, b.address)) as server:
        assert addresses(await ask(server, "a-demo.svc.distributed.local")) == ["10.1.0.10"]
        text = await metrics(server)
        assert (
            value(text, "metadns_gather_subqueries_total", cluster="cluster-b.local.", rcode="NOERROR", default=0) == 0
        )
        both = await ask(server, "demo.svc.distributed.local")
        assert addresses(both) == ["10.1.0.10", "10.2.0.11"]
        assert {str(r.name) for r in both.answer} == {"demo.svc.distributed.local."}
        txt = await ask(server, "txt.svc.distributed.local", "TXT")
        assert [rd.strings for rd in txt.answer[0]] == [(b"from a",), (b"from b",)]


async def test_nxdomain_and_noerror_merge(clusters, unbound) -> None:
    a, b = clusters
    async with run_dns(recurse=(unbound.address,), **gather_settings(a.address, b.address)) as server:
        assert addresses(await ask(server, "onlya.svc.distributed.local")) == ["10.1.0.99"]
        assert rcode(await ask(server, "nothing.svc.distributed.local")) == "NXDOMAIN"


async def test_silent_cluster_is_left_out_within_the_deadline(clusters, unbound) -> None:
    """Cluster b is a bare UDP socket that never answers: a real server cannot be made to hang.
    Its upstream timeout (5 s) is longer than the client waits (``ask``: 3 s), so an answer at
    all, with cluster a's record only and cluster b counted as a timeout, is the gather deadline
    (0.5 s) at work, not the upstream giving up."""
    a, _ = clusters
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.3", 0))
    with silent:
        async with run_dns(
            recurse=(unbound.address,),
            recurser_timeout=5.0,
            **gather_settings(a.address, silent.getsockname(), timeout=0.5),
        ) as server:
            reply = await ask(server, "_http._tcp.demo.svc.distributed.local", "SRV", use_edns=0)
            assert [str(rd.target) for rd in reply.answer[0]] == ["a-demo-0.svc.distributed.local."]
            text = await metrics(server)
            assert value(text, "metadns_gather_subqueries_total", cluster="cluster-b.local.", rcode="timeout") == 1


async def test_no_cluster_answers_servfail_with_ede_23(unbound) -> None:
    down = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    down.bind(("127.0.0.2", 0))
    with down:
        async with run_dns(
            recurse=(unbound.address,),
            **gather_settings(down.getsockname(), ("127.0.0.3", down.getsockname()[1]), timeout=0.3),
        ) as server:
            reply = await ask(server, "_http._tcp.demo.svc.distributed.local", "SRV", use_edns=0)
            assert rcode(reply) == "SERVFAIL"
            [ede] = [o for o in reply.options if o.otype == dns.edns.OptionType.EDE]
            assert ede.code == 23


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


async def test_other_types_and_other_names_are_untouched(clusters, unbound) -> None:
    a, b = clusters
    async with run_dns(recurse=(unbound.address,), **gather_settings(a.address, b.address)) as server:
        assert addresses(await ask(server, "www.example.test")) == ["192.0.2.10"]
        mx = await ask(server, "demo.svc.distributed.local", "MX")  # not gathered: the default upstream answers
        assert rcode(mx) == "NXDOMAIN"
        assert rcode(await ask(server, "nope.rancher.internal")) == "NXDOMAIN"
        text = await metrics(server)
        assert value(text, "metadns_gather_queries_total", qtype="MX", default=0) == 0
        assert "metadns_dns_responses_total" in text


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
