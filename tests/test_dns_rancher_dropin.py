"""What a user migrating from rancher-dns (and its answers files, and the redis-cluster seed)
would otherwise trip over: the AD bit, TTLs above the cache cap, answers files as rancher-dns
read them, the default recursers, EDE without EDNS, and the seed's node mapping format."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import dns.edns
import dns.flags
import pytest

from consumers.redis_repair import load_mapping
from dns_svc.chain import Query
from dns_svc.server import DnsServer, StartupError
from dns_svc.settings import parse_settings
from dns_svc.wire import parse_query
from tests.support.dns import addresses, ask, dig, rcode, run_dns
from tests.support.ports import free_port

pytestmark = pytest.mark.external_tool


async def test_local_and_authority_replies_never_set_ad(fleet_stack) -> None:
    """Dig sets AD in its queries; the bit was echoed into local answers and cached for everyone."""
    _, server = fleet_stack
    for source in ("127.0.0.11", "127.0.0.12"):  # the second is served from the shared cache
        for name in ("web.shop.rancher.internal", "nope.shop.rancher.internal"):
            result = await dig(server, name, "+adflag", source=source)
            assert result.status in ("NOERROR", "NXDOMAIN"), result.raw
            assert "ad" not in result.flags, result.raw
            assert "aa" in result.flags
            assert "rd" in result.flags


async def test_served_ttls_never_exceed_the_cache_cap(unbound) -> None:
    async with run_dns(recurse=(unbound.address,), cache_max_ttl=60) as server:
        first = await ask(server, "www.example.test")  # TTL 300 upstream
        assert addresses(first) == ["192.0.2.10"]
        assert first.answer[0].ttl == 60
        again = await ask(server, "www.example.test", source="127.0.0.2")  # from the cache
        assert again.answer[0].ttl <= 60
        nx = await ask(server, "nope.example.test")  # the SOA's TTL (3600) too
        assert all(rrset.ttl <= 60 for rrset in nx.authority)


async def test_an_answers_file_is_read_as_yaml_even_json_with_a_trailing_comma(tmp_path: Path) -> None:
    path = tmp_path / "answers.json"
    path.write_text(
        '{"default": {"authoritative": ["corp.internal"],\n'
        '  "a": {"app.corp.internal.": {"answer": ["10.0.0.1"]},},},}\n'
    )
    async with run_dns(answers=str(path)) as server:
        assert addresses(await ask(server, "app.corp.internal")) == ["10.0.0.1"]


async def test_an_answers_file_refused_at_start_stops_the_service(tmp_path: Path) -> None:
    path = tmp_path / "answers.json"
    path.write_text('{"default": [this is not valid')
    with pytest.raises(StartupError):
        async with run_dns(answers=str(path)):
            pass
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dns_svc",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--answers",
        str(path),
        "--state-file",
        "",
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    assert "event=cannot_start" in err.decode()
    assert "event=answers_rejected" in err.decode()


async def test_a_client_with_its_own_section_keeps_the_default_recursers(tmp_path: Path, unbound) -> None:
    path = tmp_path / "answers.json"
    path.write_text(
        json.dumps(
            {
                "default": {"authoritative": ["corp.internal"], "recurse": [unbound.spec]},
                "127.0.0.31": {"a": {"mine.corp.internal.": {"answer": ["10.9.9.9"]}}},
            }
        )
    )
    async with run_dns(answers=str(path), recurse=()) as server:  # no --recurse, no resolv.conf
        assert addresses(await ask(server, "mine.corp.internal", source="127.0.0.31")) == ["10.9.9.9"]
        assert addresses(await ask(server, "www.example.test", source="127.0.0.31")) == ["192.0.2.10"]


def test_the_answers_files_recursers_come_before_resolv_conf(tmp_path: Path) -> None:
    """rancher-dns never read resolv.conf when its answers file listed recursers; --recurse
    flags, when given, come after the file's."""
    answers = tmp_path / "answers.json"
    answers.write_text(
        json.dumps({"default": {"recurse": ["127.0.0.7:5300"]}, "127.0.0.31": {"recurse": ["127.0.0.8"]}})
    )
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    for flags, expected in (
        ([], (("127.0.0.8", 53), ("127.0.0.7", 5300))),
        (["--recurse", "127.0.0.9"], (("127.0.0.8", 53), ("127.0.0.7", 5300), ("127.0.0.9", 53))),
    ):
        settings = parse_settings(
            ["--answers", str(answers), "--resolv-conf", str(resolv), "--listen", "127.0.0.1:0", *flags]
        )
        server = DnsServer(settings)
        assert server.answers_watcher is None
        from dns_svc.answers_file import load_answers_file

        table = load_answers_file(str(answers), 1)
        raw = parse_query(b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x00\x00\x01\x00\x01")
        query = Query(raw, "127.0.0.31", "udp", table, table.view("127.0.0.31"), True)
        assert server.upstream.upstreams_for(query) == expected


async def test_ede_only_for_queries_that_had_edns(unbound) -> None:
    """RFC 6891 section 7: a reply carries OPT only when the query did."""
    from tests.test_dns_gather import gather_settings

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as down:
        down.bind(("127.0.0.2", 0))
        async with run_dns(
            recurse=(unbound.address,),
            **gather_settings(down.getsockname(), ("127.0.0.3", down.getsockname()[1]), timeout=0.3),
        ) as server:
            plain = await ask(server, "_http._tcp.demo.svc.distributed.local", "SRV")
            assert rcode(plain) == "SERVFAIL"
            assert plain.edns < 0
            assert not plain.options
            with_edns = await ask(server, "_http._tcp.other.svc.distributed.local", "SRV", use_edns=0)
            assert [o.code for o in with_edns.options if o.otype == dns.edns.OptionType.EDE] == [23]


def test_redis_mapping_in_the_seeds_two_column_form(tmp_path: Path) -> None:
    a, b = "a" * 40, "B" * 40
    path = tmp_path / "nodes-map"
    path.write_text(f"# node-id pod-name\n{a} redis-cluster-0\n\n{b}   redis-cluster-1  # the second\n")
    assert load_mapping(str(path)) == {a: "redis-cluster-0", b.lower(): "redis-cluster-1"}
    yaml_form = tmp_path / "nodes.yaml"
    yaml_form.write_text(f"{a}: redis-cluster-0\n")
    assert load_mapping(str(yaml_form)) == {a: "redis-cluster-0"}


async def test_container_names_may_repeat_as_in_rancher(tmp_path: Path) -> None:
    """One "Network Agent" per host, all with that name: a container is its uuid. The name
    answers every address, as a service name does; each container's ``self`` is its own."""
    import yaml

    from dns_svc.follower import version_index
    from metadata_svc.keys import STORE
    from shared.model import Fleet, FleetError
    from tests.support.dns import wait_for_version
    from tests.support.metadata import run_metadata

    fleet = {
        "hosts": [{"uuid": "h1", "name": "h1"}, {"uuid": "h2", "name": "h2"}],
        "containers": [
            {"name": "Network Agent", "primary_ip": "127.0.0.61", "host_uuid": "h1"},
            {"name": "Network Agent", "primary_ip": "127.0.0.62", "host_uuid": "h2"},
            {"name": "web", "primary_ip": "127.0.0.63", "host_uuid": "h1"},
        ],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet))
    async with run_metadata(path) as md:
        snapshot = md.app[STORE].snapshot
        assert len({c.uuid for c in snapshot.fleet.containers}) == 3
        for ip in ("127.0.0.61", "127.0.0.62"):
            async with md.client(ip) as s, s.get("/latest/self/container/primary_ip") as r:
                assert await r.text() == ip
        async with run_dns(metadata_url=f"{md.url}/2016-07-29") as server:
            await wait_for_version(server, version_index(snapshot.version))
            reply = await ask(server, "network agent.rancher.internal")
            assert sorted(addresses(reply)) == ["127.0.0.61", "127.0.0.62"]
    fleet["containers"][1]["uuid"] = fleet["containers"][0]["uuid"] = "same"
    with pytest.raises(FleetError, match="duplicate container uuid"):
        Fleet.from_mapping(fleet)


async def test_an_address_several_containers_share_names_none_of_them(tmp_path: Path) -> None:
    """Rancher gives host-network containers the host's IP. Such a fleet is served; the shared
    address gets no container ``self`` (no token to hand to the wrong one), names still resolve."""
    import yaml

    from dns_svc.follower import version_index
    from metadata_svc.keys import STORE
    from tests.support.dns import wait_for_version
    from tests.support.metadata import run_metadata

    fleet = {
        "hosts": [{"uuid": "h1", "name": "h1", "agent_ip": "127.0.0.70"}],
        "stacks": [{"name": "infra"}],
        "services": [{"name": "agent", "stack_name": "infra", "token": "agent-secret"}],
        "containers": [
            {
                "name": "scheduler",
                "primary_ip": "127.0.0.70",
                "host_uuid": "h1",
                "stack_name": "infra",
                "service_name": "agent",
            },
            {"name": "healthcheck", "primary_ip": "127.0.0.70", "host_uuid": "h1"},
            {
                "name": "web",
                "primary_ip": "127.0.0.71",
                "host_uuid": "h1",
                "stack_name": "infra",
                "service_name": "agent",
            },
        ],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet))
    async with run_metadata(path) as md:
        async with md.client("127.0.0.70") as s:
            async with s.get("/latest/self/container/name") as r:
                assert r.status == 404
            async with s.get("/latest/self", headers={"Accept": "application/json"}) as r:
                body = await r.text()
                assert "agent-secret" not in body
                assert '"host"' in body
        async with md.client("127.0.0.71") as s, s.get("/latest/self/service/token") as r:
            assert await r.text() == "agent-secret"
        async with run_dns(metadata_url=f"{md.url}/2016-07-29") as server:
            await wait_for_version(server, version_index(md.app[STORE].snapshot.version))
            for name in ("scheduler", "healthcheck"):
                assert addresses(await ask(server, f"{name}.rancher.internal", source="127.0.0.70")) == ["127.0.0.70"]
            assert rcode(await ask(server, "web.rancher.internal", source="127.0.0.70")) == "NOERROR"
