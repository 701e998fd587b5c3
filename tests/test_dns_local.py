"""Local answers through the real stack: metadata -> long-poll -> answers table -> DNS -> dig/dnspython."""

from __future__ import annotations

import dns.flags
import dns.rdatatype
import pytest
import yaml

from dns_svc.follower import version_index
from metadata_svc.keys import STORE
from tests.support.dns import addresses, ask, dig, rcode, wait_for_version

pytestmark = [pytest.mark.external_tool, pytest.mark.usefixtures("fleet_stack")]


@pytest.fixture
def server(fleet_stack):
    return fleet_stack[1]


@pytest.mark.parametrize(
    ("qname", "expected"),
    [
        ("web.shop.rancher.internal", {"127.0.0.11", "127.0.0.12"}),  # healthy only (web-3 is unhealthy)
        ("log.web.shop.rancher.internal", {"127.0.0.14"}),  # sidekick
        ("shop-web-3.rancher.internal", {"127.0.0.13"}),  # container name, any health
        ("lonely.rancher.internal", {"127.0.0.41"}),  # standalone container
        ("rancher-metadata.rancher.internal", {"127.0.0.250"}),
        ("legacy.shop.rancher.internal", {"192.0.2.7", "192.0.2.8"}),  # external IPs
        ("backend.shop.rancher.internal", {"127.0.0.11", "127.0.0.12", "127.0.0.21"}),  # alias: union
        ("sick.infra.rancher.internal", {"127.0.0.52"}),  # none healthy: the last one
    ],
    ids=["service", "sidekick", "container", "standalone", "metadata", "external-ips", "alias", "last-fallback"],
)
async def test_fleet_names(server, qname: str, expected: set[str]) -> None:
    reply = await ask(server, qname)
    assert rcode(reply) == "NOERROR"
    assert set(addresses(reply)) == expected
    assert reply.flags & dns.flags.AA


async def test_dig_sees_the_same(server) -> None:
    result = await dig(server, "web.shop.rancher.internal", "A")
    assert result.status == "NOERROR"
    assert "aa" in result.flags
    assert sorted(line.split()[-1] for line in result.answer) == ["127.0.0.11", "127.0.0.12"]
    assert all(line.split()[1] == "1" for line in result.answer)  # --ttl 1


async def test_external_hostname_is_a_cname_chased_upstream(server) -> None:
    reply = await ask(server, "payments.shop.rancher.internal")
    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert str(reply.answer[0][0].target) == "payments.example.test."
    assert addresses(reply) == ["192.0.2.20"]
    cname_only = await ask(server, "payments.shop.rancher.internal", "CNAME")
    assert [str(rd.target) for rd in cname_only.answer[0]] == ["payments.example.test."]


async def test_alias_loop_does_not_hang_or_fail(server) -> None:
    reply = await ask(server, "loop-a.shop.rancher.internal")
    assert rcode(reply) == "NOERROR"
    assert addresses(reply) == []


async def test_srv_per_healthy_container_with_glue(server) -> None:
    reply = await ask(server, "_web._tcp.shop.rancher.internal", "SRV", use_edns=0)
    srv = sorted((rd.port, str(rd.target)) for rd in reply.answer[0])
    assert srv == [(8080, "shop-web-1.rancher.internal."), (8080, "shop-web-2.rancher.internal.")]
    glue = {str(r.name): [rd.address for rd in r] for r in reply.additional if r.rdtype == dns.rdatatype.A}
    assert glue == {"shop-web-1.rancher.internal.": ["127.0.0.11"], "shop-web-2.rancher.internal.": ["127.0.0.12"]}
    udp = await ask(server, "_web._udp.shop.rancher.internal", "SRV")
    assert [rd.port for rd in udp.answer[0]] == [9090, 9090]


async def test_ptr_txt_soa_ns(server) -> None:
    ptr = await ask(server, "21.0.0.127.in-addr.arpa", "PTR")
    assert [str(rd.target) for rd in ptr.answer[0]] == ["shop-db-1.rancher.internal."]
    txt = await ask(server, "web.shop.rancher.internal", "TXT")
    assert [rd.strings for rd in txt.answer[0]] == [(b"tier=front",)]
    soa = await ask(server, "rancher.internal", "SOA")
    assert soa.answer[0][0].serial == server.tables.current.serial
    ns = await ask(server, "rancher.internal", "NS")
    assert [str(rd.target) for rd in ns.answer[0]] == ["rancher-metadata.rancher.internal."]


async def test_nodata_versus_nxdomain(server) -> None:
    aaaa = await ask(server, "web.shop.rancher.internal", "AAAA")
    assert rcode(aaaa) == "NOERROR"
    assert aaaa.answer == []
    assert aaaa.authority[0].rdtype == dns.rdatatype.SOA
    empty_non_terminal = await ask(server, "shop.rancher.internal")
    assert rcode(empty_non_terminal) == "NOERROR"
    assert empty_non_terminal.answer == []
    missing = await ask(server, "nope.shop.rancher.internal")
    assert rcode(missing) == "NXDOMAIN"
    soa = missing.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa[0].minimum == 1
    assert soa.ttl == 1
    mx = await ask(server, "web.shop.rancher.internal", "MX")
    assert rcode(mx) == "NOERROR"
    assert mx.answer == []


async def test_search_list_and_links_are_per_client(server) -> None:
    # shop-web-1 searches shop.rancher.internal: "db" is its stack's db service; "primary" is its link alias
    assert addresses(await ask(server, "db", source="127.0.0.11")) == ["127.0.0.21"]
    assert addresses(await ask(server, "primary.rancher.internal", source="127.0.0.11")) == ["127.0.0.21"]
    assert addresses(await ask(server, "kv", source="127.0.0.11")) == ["127.0.0.31"]  # service link alias
    # the owner is the name as asked, not the expanded one
    reply = await ask(server, "db", source="127.0.0.11")
    assert str(reply.answer[0].name) == "db."
    # another client has neither the link nor that search list
    other = await ask(server, "primary.rancher.internal", source="127.0.0.12")
    assert rcode(other) == "NXDOMAIN"
    cache_client = await ask(server, "db", source="127.0.0.31")  # searches infra.rancher.internal only
    assert addresses(cache_client) == []


async def test_query_case_is_echoed(server) -> None:
    for _ in range(2):  # the second answer comes from the cached bytes
        reply = await ask(server, "WeB.ShOp.RaNcHeR.InTeRnAl")
        assert str(reply.question[0].name) == "WeB.ShOp.RaNcHeR.InTeRnAl."
        assert str(reply.answer[0].name) == "WeB.ShOp.RaNcHeR.InTeRnAl."
        assert set(addresses(reply)) == {"127.0.0.11", "127.0.0.12"}


async def test_several_a_records_are_rotated(server) -> None:
    orders = {tuple(addresses(await ask(server, "many.infra.rancher.internal", tcp=True))) for _ in range(4)}
    assert len(orders) > 1
    assert all(sorted(o) == sorted(next(iter(orders))) for o in orders)


async def test_version_change_moves_an_ip_at_once(fleet_stack, dns_fleet_file) -> None:
    md, server = fleet_stack
    before = await ask(server, "shop-db-1.rancher.internal", source="127.0.0.11")
    assert addresses(before) == ["127.0.0.21"]
    data = yaml.safe_load(dns_fleet_file.read_text())
    next(c for c in data["containers"] if c["name"] == "shop-db-1")["primary_ip"] = "127.0.0.22"
    dns_fleet_file.write_text(yaml.safe_dump(data))
    store = md.app[STORE]
    old = store.index
    import asyncio

    async with asyncio.timeout(10):
        while store.index == old:
            await asyncio.sleep(0.01)
    await wait_for_version(server, version_index(store.snapshot.version))
    # the very next query, from a client whose cache held the old answer, has the new IP
    for name in ("shop-db-1.rancher.internal", "db.shop.rancher.internal", "primary.rancher.internal"):
        assert addresses(await ask(server, name, source="127.0.0.11")) == ["127.0.0.22"]
    ptr = await ask(server, "22.0.0.127.in-addr.arpa", "PTR")
    assert [str(rd.target) for rd in ptr.answer[0]] == ["shop-db-1.rancher.internal."]
