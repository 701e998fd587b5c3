"""The cached-bytes fast path is only worth having if it is right: ID, question case, RD, TTL
countdown, EDNS presence and size, rotation, and no answer crossing from one client to another."""

from __future__ import annotations

import json
from pathlib import Path

import dns.flags
import dns.message
import pytest

from tests.support.dns import FakeClock, addresses, ask, rcode, run_dns, serve_fleet, udp_exchange
from tests.support.upstream import run_unbound

pytestmark = pytest.mark.external_tool

BIG = "".join(f'local-data: "big.example.test. 300 IN A 192.0.2.{i}"\n' for i in range(1, 61))


@pytest.fixture
def answers_file(tmp_path: Path) -> Path:
    path = tmp_path / "answers.json"
    path.write_text(
        json.dumps(
            {
                "default": {
                    "authoritative": ["rancher.internal"],
                    "search": ["rancher.internal"],
                    "a": {"web.rancher.internal.": {"answer": ["10.1.0.1", "10.1.0.2", "10.1.0.3"], "ttl": 30}},
                },
                "127.0.0.31": {"a": {"db.rancher.internal.": {"answer": ["10.9.9.9"]}}},
            }
        )
    )
    return path


async def test_id_case_and_rd_come_from_each_query(answers_file: Path) -> None:
    async with run_dns(answers=str(answers_file)) as server:
        await ask(server, "web.rancher.internal")
        slow = server.resolver.slow_calls
        for qid, name, rd in ((7, "WEB.rancher.internal", True), (65000, "web.RANCHER.internal", False)):
            msg = dns.message.make_query(name, "A")
            msg.id = qid
            if not rd:
                msg.flags &= ~dns.flags.RD
            wire = await _udp(server.address, msg.to_wire())
            reply = dns.message.from_wire(wire)
            assert reply.id == qid
            assert str(reply.question[0].name) == name + "."
            assert bool(reply.flags & dns.flags.RD) is rd
            assert reply.flags & dns.flags.AA
            assert reply.flags & dns.flags.QR
            assert sorted(addresses(reply)) == ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
        assert server.resolver.slow_calls == slow  # both from the cached bytes
        assert server.resolver.fast_hits >= 2


async def test_local_answers_keep_their_full_ttl_and_rotate(answers_file: Path) -> None:
    clock = FakeClock()
    async with run_dns(clock, answers=str(answers_file)) as server:
        first = await ask(server, "web.rancher.internal")
        clock.advance(20)
        orders = []
        for _ in range(3):
            reply = await ask(server, "web.rancher.internal")
            assert [rrset.ttl for rrset in reply.answer] == [30]  # authoritative: no countdown
            orders.append(tuple(addresses(reply)))
        assert len(set(orders) | {tuple(addresses(first))}) == 3  # rotated through all three


async def test_edns_and_plain_queries_are_cached_apart(answers_file: Path) -> None:
    async with run_dns(answers=str(answers_file)) as server:
        with_opt = await ask(server, "web.rancher.internal", use_edns=0)
        plain = await ask(server, "web.rancher.internal")
        assert with_opt.edns == 0
        assert plain.edns == -1
        again = await ask(server, "web.rancher.internal", use_edns=0, want_dnssec=True)
        assert again.edns == 0
        assert again.ednsflags & dns.flags.DO


async def test_per_client_answers_never_leak_through_the_cache(answers_file: Path) -> None:
    async with run_dns(answers=str(answers_file)) as server:
        for _ in range(3):
            assert addresses(await ask(server, "db.rancher.internal", source="127.0.0.31")) == ["10.9.9.9"]
            assert rcode(await ask(server, "db.rancher.internal", source="127.0.0.32")) == "NXDOMAIN"
            assert rcode(await ask(server, "db.rancher.internal", source="127.0.0.1")) == "NXDOMAIN"


async def test_upstream_ttl_counts_down_on_the_fast_path_and_size_is_respected(tmp_path: Path) -> None:
    clock = FakeClock()
    with run_unbound(tmp_path / "u", extra=BIG) as upstream:
        async with run_dns(clock, recurse=(upstream.address,)) as server:
            full = await ask(server, "big.example.test", tcp=True, use_edns=0, payload=4096)
            assert len(addresses(full)) == 60
            clock.advance(100)
            hits = server.resolver.fast_hits
            roomy = await ask(server, "big.example.test", use_edns=0, payload=4096)
            assert len(addresses(roomy)) == 60
            assert {r.ttl for r in roomy.answer} == {200}
            assert server.resolver.fast_hits == hits + 1
            tight = await ask(server, "big.example.test", use_edns=0, payload=512)  # must not get the 1 KB reply
            assert tight.flags & dns.flags.TC
            assert tight.answer == []
            small = await ask(server, "www.example.test")
            clock.advance(299)
            assert [r.ttl for r in (await ask(server, "www.example.test")).answer] == [1]
            assert addresses(small) == ["192.0.2.10"]


async def _udp(address: tuple[str, int], packet: bytes) -> bytes:
    reply = await udp_exchange(address, packet)
    assert reply is not None
    return reply


async def _packet_hits(server, name: str, source: str = "127.0.0.1"):
    """Ask ``name`` once more; how many packet-cache hits that added."""
    before = server.resolver.tally.total("packet_cache")
    await ask(server, name, source=source)
    return server.resolver.tally.total("packet_cache") - before


async def test_a_fleet_change_keeps_the_packet_cache_of_names_it_did_not_touch() -> None:
    """One container moves: the shared answers of every other name stay byte-cached (a fleet
    change a second would otherwise refill every entry every second), the moved one does not."""
    import copy

    from tests.support.fleets import dns_fleet

    data = dns_fleet()
    async with run_dns() as server:
        await serve_fleet(server, data, 1)
        for name in ("lonely.rancher.internal", "shop-db-1.rancher.internal"):
            for _ in range(2):
                await ask(server, name)
            assert await _packet_hits(server, name) == 1
        moved = copy.deepcopy(data)
        next(c for c in moved["containers"] if c["name"] == "shop-db-1")["primary_ip"] = "127.0.0.29"
        await serve_fleet(server, moved, 2)
        assert await _packet_hits(server, "lonely.rancher.internal") == 1  # untouched: still a hit
        assert addresses(await ask(server, "shop-db-1.rancher.internal")) == ["127.0.0.29"]


async def test_a_client_whose_own_records_now_cover_a_name_is_not_served_the_shared_answer() -> None:
    """shop-web-1 asks lonely.rancher.internal (the shared answer, byte-cached), then gets a link
    alias of that very name: the change touched no shared name, but the client's answer did."""
    import copy

    from tests.support.fleets import dns_fleet

    data = dns_fleet()
    async with run_dns() as server:
        await serve_fleet(server, data, 1)
        for _ in range(2):
            assert addresses(await ask(server, "lonely.rancher.internal", source="127.0.0.11")) == ["127.0.0.41"]
        assert await _packet_hits(server, "lonely.rancher.internal", source="127.0.0.11") == 1
        linked = copy.deepcopy(data)
        next(c for c in linked["containers"] if c["name"] == "shop-web-1")["links"] = {"shop-db-1": "lonely"}
        await serve_fleet(server, linked, 2)
        assert addresses(await ask(server, "lonely.rancher.internal", source="127.0.0.11")) == ["127.0.0.21"]
        assert addresses(await ask(server, "lonely.rancher.internal", source="127.0.0.12")) == ["127.0.0.41"]
