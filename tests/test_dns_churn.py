"""Fleet churn through the real services: the metadata service on a fleet file, the DNS service
following it. Version after version, a name the changes do not touch stays a cache hit (whether
every client gets it, it came through a search suffix or a link alias, or is an NXDOMAIN of our
zone), and a name they touch is never answered from before the change."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from dns_svc.server import DnsServer
from tests.support.dns import addresses, ask, rcode, run_dns
from tests.support.fleets import dns_fleet
from tests.support.metadata import run_metadata

CLIENT = "127.0.0.11"  # shop-web-1: search shop.rancher.internal, a link shop-db-1 -> primary
UNTOUCHED = (
    ("web.shop.rancher.internal", "A"),  # the same for every client
    ("db", "A"),  # through the client's search suffix
    ("primary", "A"),  # the client's link alias
    ("nothere.rancher.internal", "A"),  # NXDOMAIN of our zone
    ("web.shop.rancher.internal", "AAAA"),  # NODATA
)
CACHE_SOURCES = ("packet_cache", "client_cache")


def cache_hits(server: DnsServer) -> int:
    return sum(server.resolver.tally.total(source) for source in CACHE_SOURCES)


async def next_version(server: DnsServer, serial: int) -> int:
    async with asyncio.timeout(10):
        while server.tables.current.serial <= serial:
            await asyncio.sleep(0.01)
    return server.tables.current.serial


async def test_untouched_names_stay_cached_and_touched_ones_are_never_stale(tmp_path: Path) -> None:
    data = dns_fleet(many=4)
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    async with run_metadata(path) as md, run_dns(metadata_url=f"{md.url}/2016-07-29") as server:
        serial = await next_version(server, 0)
        for name, qtype in UNTOUCHED * 2:  # asked twice: the second time from a cache
            await ask(server, name, qtype, source=CLIENT)
        moved = next(c for c in data["containers"] if c["name"] == "many-0")
        for version in range(8):
            moved["primary_ip"] = f"127.0.3.{version + 1}"
            data["containers"] = [c for c in data["containers"] if not c["name"].startswith("churn-")]
            data["containers"].append({"name": f"churn-{version}", "primary_ip": f"127.0.4.{version + 1}"})
            path.write_text(yaml.safe_dump(data))
            serial = await next_version(server, serial)

            for _ in range(2):  # the first answer after the change, and the one cached from it
                reply = await ask(server, "many-0.rancher.internal", source=CLIENT)
                assert addresses(reply) == [moved["primary_ip"]]
                reply = await ask(server, "many.infra.rancher.internal", source=CLIENT)
                assert moved["primary_ip"] in addresses(reply)
                reply = await ask(server, f"churn-{version}.rancher.internal", source=CLIENT)
                assert addresses(reply) == [f"127.0.4.{version + 1}"]
                if version:
                    gone = await ask(server, f"churn-{version - 1}.rancher.internal", source=CLIENT)
                    assert rcode(gone) == "NXDOMAIN"

            hits = cache_hits(server)
            for name, qtype in UNTOUCHED:
                await ask(server, name, qtype, source=CLIENT)
            assert cache_hits(server) - hits == len(UNTOUCHED), f"version {version}: a name left alone was rebuilt"
