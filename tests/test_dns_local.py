"""Local answers: the local and authority steps' builds as a table over the real answers table in
process (``tests/support/chain.py``: the real steps, no socket), then one test each through the
real stack (metadata -> long-poll -> answers table -> DNS) for what only the stack does: dig
reading our replies, a CNAME chased to a real upstream, a fleet change reaching the answers."""

from __future__ import annotations

import asyncio

import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset
import pytest
import yaml

from dns_svc.chain import Source
from dns_svc.follower import version_index
from metadata_svc.keys import STORE
from tests.support.chain import make_query, resolve, setup
from tests.support.dns import addresses, ask, dig, wait_for_version


def values(rrset: dns.rrset.RRset) -> set[str]:
    """What each record says, in a form a table can spell: addresses, ``port target`` for SRV,
    the target of CNAME/PTR/NS, the text of TXT, ``serial`` for SOA."""
    out = set()
    for rd in rrset:
        if rrset.rdtype == dns.rdatatype.SRV:
            out.add(f"{rd.port} {rd.target}")
        elif rrset.rdtype == dns.rdatatype.SOA:
            out.add(f"serial {rd.serial}")
        elif rrset.rdtype == dns.rdatatype.TXT:
            out.add(b"".join(rd.strings).decode())
        elif hasattr(rd, "address"):
            out.add(rd.address)
        else:
            out.add(str(rd.target))
    return out


SERIAL = setup().table.serial
# name, type, client -> rcode, the records of the answer section, the types in the authority
# section; every one answered by the local or the authority step (never upstream), with AA.
CASES = [
    ("web.shop.rancher.internal", "A", "127.0.0.1", "NOERROR", {"127.0.0.11", "127.0.0.12"}, []),  # healthy only
    ("log.web.shop.rancher.internal", "A", "127.0.0.1", "NOERROR", {"127.0.0.14"}, []),  # sidekick
    ("shop-web-3.rancher.internal", "A", "127.0.0.1", "NOERROR", {"127.0.0.13"}, []),  # container, any health
    ("lonely.rancher.internal", "A", "127.0.0.1", "NOERROR", {"127.0.0.41"}, []),  # standalone container
    ("rancher-metadata.rancher.internal", "A", "127.0.0.1", "NOERROR", {"127.0.0.250"}, []),
    ("legacy.shop.rancher.internal", "A", "127.0.0.1", "NOERROR", {"192.0.2.7", "192.0.2.8"}, []),  # external IPs
    ("backend.shop.rancher.internal", "A", "127.0.0.1", "NOERROR", {"127.0.0.11", "127.0.0.12", "127.0.0.21"}, []),
    ("sick.infra.rancher.internal", "A", "127.0.0.1", "NOERROR", {"127.0.0.52"}, []),  # none healthy: the last
    ("loop-a.shop.rancher.internal", "A", "127.0.0.1", "NOERROR", None, ["SOA"]),  # an alias loop: no addresses
    (
        "_web._tcp.shop.rancher.internal",
        "SRV",
        "127.0.0.1",
        "NOERROR",
        {"8080 shop-web-1.rancher.internal.", "8080 shop-web-2.rancher.internal."},
        [],
    ),
    (
        "_web._udp.shop.rancher.internal",
        "SRV",
        "127.0.0.1",
        "NOERROR",
        {"9090 shop-web-1.rancher.internal.", "9090 shop-web-2.rancher.internal."},
        [],
    ),
    ("21.0.0.127.in-addr.arpa", "PTR", "127.0.0.1", "NOERROR", {"shop-db-1.rancher.internal."}, []),
    ("web.shop.rancher.internal", "TXT", "127.0.0.1", "NOERROR", {"tier=front"}, []),
    ("payments.shop.rancher.internal", "CNAME", "127.0.0.1", "NOERROR", {"payments.example.test."}, []),
    ("rancher.internal", "SOA", "127.0.0.1", "NOERROR", {f"serial {SERIAL}"}, []),
    ("rancher.internal", "NS", "127.0.0.1", "NOERROR", {"rancher-metadata.rancher.internal."}, []),
    ("web.shop.rancher.internal", "AAAA", "127.0.0.1", "NOERROR", None, ["SOA"]),  # NODATA, never NXDOMAIN
    ("web.shop.rancher.internal", "MX", "127.0.0.1", "NOERROR", None, ["SOA"]),
    ("shop.rancher.internal", "A", "127.0.0.1", "NOERROR", None, ["SOA"]),  # an empty non-terminal
    ("nope.shop.rancher.internal", "A", "127.0.0.1", "NXDOMAIN", None, ["SOA"]),
    # per client: shop-web-1 searches shop.rancher.internal and has link aliases; others do not
    ("db", "A", "127.0.0.11", "NOERROR", {"127.0.0.21"}, []),  # its stack's db service, through search
    ("primary.rancher.internal", "A", "127.0.0.11", "NOERROR", {"127.0.0.21"}, []),  # its link alias
    ("kv", "A", "127.0.0.11", "NOERROR", {"127.0.0.31"}, []),  # a service link alias
    ("primary.rancher.internal", "A", "127.0.0.12", "NXDOMAIN", None, ["SOA"]),  # not this client's link
]
IDS = [f"{name}-{qtype}-{client.rsplit('.', 1)[1]}" for name, qtype, client, *_ in CASES]


@pytest.mark.parametrize(("name", "qtype", "client", "code", "answers", "authority"), CASES, ids=IDS)
async def test_case(
    name: str, qtype: str, client: str, code: str, answers: set[str] | None, authority: list[str]
) -> None:
    s = setup()
    answer, reply = await resolve(s, name, qtype, client)
    assert answer.source in (Source.LOCAL, Source.AUTHORITY)
    assert s.upstream.asked == []  # local answers never go upstream
    assert dns.rcode.to_text(reply.rcode()) == code
    assert reply.flags & dns.flags.AA
    assert not reply.flags & dns.flags.AD
    asked = [rrset for rrset in reply.answer if rrset.rdtype == dns.rdatatype.from_text(qtype)]
    assert (values(asked[0]) if asked else None) == answers
    assert all(str(rrset.name) == f"{name}." for rrset in asked)  # owned by the name as asked
    assert [dns.rdatatype.to_text(rrset.rdtype) for rrset in reply.authority] == authority


async def test_a_client_without_the_search_list_is_not_answered_locally() -> None:
    """A client with neither the link nor that search list (it searches infra.rancher.internal):
    "db" is no local name for it, and goes on upstream."""
    s = setup()
    answer, _ = await resolve(s, "db", "A", "127.0.0.31")
    assert answer.source is Source.UPSTREAM
    assert s.upstream.asked == ["db."]


async def test_srv_glue_and_negative_soa() -> None:
    s = setup()
    _, srv = await resolve(s, "_web._tcp.shop.rancher.internal", "SRV")
    glue = {str(r.name): values(r) for r in srv.additional if r.rdtype == dns.rdatatype.A}
    assert glue == {"shop-web-1.rancher.internal.": {"127.0.0.11"}, "shop-web-2.rancher.internal.": {"127.0.0.12"}}
    _, missing = await resolve(s, "nope.shop.rancher.internal")
    soa = missing.authority[0]
    assert soa[0].minimum == 1  # the local TTL: NXDOMAINs remembered no longer than our answers
    assert soa.ttl == 1
    assert soa[0].serial == s.table.serial


async def test_query_case_is_echoed_built_and_cached() -> None:
    s = setup()
    for source in (Source.LOCAL, Source.CLIENT_CACHE):  # the second answer comes from the cached bytes
        answer = await s.chain.resolve(make_query(s, "WeB.ShOp.RaNcHeR.InTeRnAl"))
        assert answer.source is source
        reply = dns.message.from_wire(answer.wire)
        assert str(reply.question[0].name) == "WeB.ShOp.RaNcHeR.InTeRnAl."
        assert str(reply.answer[0].name) == "WeB.ShOp.RaNcHeR.InTeRnAl."
        assert set(addresses(reply)) == {"127.0.0.11", "127.0.0.12"}


async def test_several_a_records_are_rotated() -> None:
    s = setup()
    orders = {tuple(addresses((await resolve(s, "many.infra.rancher.internal", transport="tcp"))[1])) for _ in range(4)}
    assert len(orders) > 1
    assert all(sorted(o) == sorted(next(iter(orders))) for o in orders)


# Through the real stack: one test per behaviour only it shows.


@pytest.mark.external_tool
async def test_dig_sees_the_same(fleet_stack) -> None:
    _, server = fleet_stack
    result = await dig(server, "web.shop.rancher.internal", "A")
    assert result.status == "NOERROR"
    assert "aa" in result.flags
    assert sorted(line.split()[-1] for line in result.answer) == ["127.0.0.11", "127.0.0.12"]
    assert all(line.split()[1] == "1" for line in result.answer)  # --ttl 1


@pytest.mark.external_tool
async def test_external_hostname_is_a_cname_chased_upstream(fleet_stack) -> None:
    _, server = fleet_stack
    reply = await ask(server, "payments.shop.rancher.internal")
    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert str(reply.answer[0][0].target) == "payments.example.test."
    assert addresses(reply) == ["192.0.2.20"]


@pytest.mark.external_tool
async def test_version_change_moves_an_ip_at_once(fleet_stack, dns_fleet_file) -> None:
    md, server = fleet_stack
    before = await ask(server, "shop-db-1.rancher.internal", source="127.0.0.11")
    assert addresses(before) == ["127.0.0.21"]
    data = yaml.safe_load(dns_fleet_file.read_text())
    next(c for c in data["containers"] if c["name"] == "shop-db-1")["primary_ip"] = "127.0.0.22"
    dns_fleet_file.write_text(yaml.safe_dump(data))
    store = md.app[STORE]
    old = store.index
    async with asyncio.timeout(10):
        while store.index == old:
            await asyncio.sleep(0.01)
    await wait_for_version(server, version_index(store.snapshot.version))
    # the very next query, from a client whose cache held the old answer, has the new IP
    for name in ("shop-db-1.rancher.internal", "db.shop.rancher.internal", "primary.rancher.internal"):
        assert addresses(await ask(server, name, source="127.0.0.11")) == ["127.0.0.22"]
    ptr = await ask(server, "22.0.0.127.in-addr.arpa", "PTR")
    assert [str(rd.target) for rd in ptr.answer[0]] == ["shop-db-1.rancher.internal."]
