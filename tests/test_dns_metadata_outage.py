"""Metadata down: the DNS service keeps answering from the last table, says so once, catches up
when metadata returns, and after a restart answers from the copy it kept on disk."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import yaml

from dns_svc.follower import version_index
from metadata_svc.keys import STORE
from tests.support.dns import addresses, ask, run_dns, wait_for_version
from tests.support.logs import logged_fields
from tests.support.metadata import run_metadata
from tests.support.ports import free_port


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, str]]:
    return [f for f in logged_fields(caplog) if f.get("event") == name]


async def test_outage_recovery_and_restart_from_kept_copy(
    dns_fleet_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    kept = tmp_path / "dns-kept.json"
    md_kept = tmp_path / "metadata-kept.json"
    url = f"http://127.0.0.1:{port}/2016-07-29"
    async with run_dns(metadata_url=url, state_file=str(kept)) as server:
        assert server.follower is not None
        server.follower.max_backoff = 0.2
        async with run_metadata(dns_fleet_file, md_kept, port=port) as md:
            await wait_for_version(server, version_index(md.app[STORE].snapshot.version))
            assert addresses(await ask(server, "shop-db-1.rancher.internal")) == ["127.0.0.21"]
        # metadata is gone: answers continue from the last table
        await asyncio.sleep(1.5)
        assert addresses(await ask(server, "shop-db-1.rancher.internal")) == ["127.0.0.21"]
        assert addresses(await ask(server, "db.shop.rancher.internal")) == ["127.0.0.21"]
        outage = [e for e in events(caplog, "metadata_unreachable") if e["serving"] != "no data yet"]
        assert len(outage) == 1  # said once, not once per retry
        assert outage[0]["serving"] == server.follower.version
        # it comes back with a moved container
        data = yaml.safe_load(dns_fleet_file.read_text())
        next(c for c in data["containers"] if c["name"] == "shop-db-1")["primary_ip"] = "127.0.0.23"
        dns_fleet_file.write_text(yaml.safe_dump(data))
        async with run_metadata(dns_fleet_file, md_kept, port=port) as md:
            version = md.app[STORE].snapshot.version
            await wait_for_version(server, version_index(version), version=version)
            table = server.tables.current
            assert addresses(await ask(server, "shop-db-1.rancher.internal")) == ["127.0.0.23"], (
                version,
                server.follower.version,
                table.serial,
                table.records.get("shop-db-1.rancher.internal."),
                server.tables.current is table,
            )
        assert len(events(caplog, "metadata_reachable")) == 2  # after the start-up wait, and after the outage
    assert kept.exists()
    # a restart while metadata is down serves the kept copy
    async with run_dns(metadata_url=url, state_file=str(kept)) as server:
        assert addresses(await ask(server, "shop-db-1.rancher.internal")) == ["127.0.0.23"]
        assert addresses(await ask(server, "web.shop.rancher.internal")) != []


async def test_broken_kept_copy_is_ignored_with_a_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    kept = tmp_path / "kept.json"
    kept.write_text("{not json")
    url = f"http://127.0.0.1:{free_port()}/2016-07-29"
    async with run_dns(metadata_url=url, state_file=str(kept)) as server:
        assert (await ask(server, "nope.rancher.internal")).rcode() == 3  # NXDOMAIN, still serving
    [line] = events(caplog, "kept_copy_not_used")
    assert "kept copy unusable" in line["reason"]


async def test_follows_any_rancher_metadata_through_the_tree(fleet_stack, dns_fleet_file: Path) -> None:
    """Without metadns's compact /metadns/v1/fleet document (as with rancher-metadata itself), the
    follower reads the versioned tree instead and validates it."""
    md, server = fleet_stack
    assert server.follower is not None
    server.follower.fleet_url = None
    data = yaml.safe_load(dns_fleet_file.read_text())
    next(c for c in data["containers"] if c["name"] == "lonely")["primary_ip"] = "127.0.0.42"
    dns_fleet_file.write_text(yaml.safe_dump(data))
    store = md.app[STORE]
    async with asyncio.timeout(10):
        while store.snapshot.fleet.container_by_ip("127.0.0.42") is None:
            await asyncio.sleep(0.01)
    version = store.snapshot.version
    await wait_for_version(server, version_index(version), version=version)
    assert addresses(await ask(server, "lonely.rancher.internal")) == ["127.0.0.42"]
    assert server.follower.fleet_url is None
