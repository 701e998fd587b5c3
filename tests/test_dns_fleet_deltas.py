"""Catching up by changes: ``/metadns/v1/fleet?since=V`` between the metadata service and the
DNS service, on real etcd and on the file source, with the gap (410, then the whole document),
compaction and relists in between."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumers.fleet_command import fleet_main
from dns_svc.follower import version_index
from dns_svc.server import DnsServer
from metadata_svc.changes import ChangeLog, delta_limit
from metadata_svc.keys import COUNTERS, SOURCE, STORE
from metadata_svc.sources.etcd import EtcdSource
from metadata_svc.store import VersionedStore
from shared.etcd import EtcdClient, EtcdEndpoints
from shared.fleet_changes import diff_fleets
from shared.fleet_index import FleetIndex
from shared.model import Fleet
from tests.support.dns import addresses, ask, run_dns, wait_for_version
from tests.support.etcd import VERSIONS, EtcdCluster, run_etcd
from tests.support.metadata import RunningMetadata, run_metadata

PREFIX = "/metadns/deltas/"


def fleet(web1: str = "127.0.0.11", *, web2: bool = True, db: str = "") -> dict[str, Any]:
    containers: list[dict[str, Any]] = [
        {"name": "web-1", "uuid": "c-web-1", "stack_name": "shop", "service_name": "web", "primary_ip": web1},
    ]
    if web2:
        containers.append(
            {
                "name": "web-2",
                "uuid": "c-web-2",
                "stack_name": "shop",
                "service_name": "web",
                "primary_ip": "127.0.0.12",
            }
        )
    if db:
        containers.append({"name": "db-1", "uuid": "c-db-1", "stack_name": "shop", "primary_ip": db})
    return {
        "hosts": [{"uuid": "host-a", "name": "host-a"}],
        "stacks": [{"name": "shop"}],
        "services": [{"name": "web", "stack_name": "shop", "ports": ["80/tcp"], "token": "secret"}],
        "containers": containers,
    }


async def apply(cluster: EtcdCluster, data: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    assert (
        await asyncio.to_thread(fleet_main, ["apply", "--etcd", cluster.endpoints, "--prefix", PREFIX, str(path)]) == 0
    )


@contextlib.asynccontextmanager
async def host(source: str, tmp_path: Path) -> AsyncIterator[tuple[RunningMetadata, DnsServer]]:
    async with (
        run_metadata(tmp_path / "fleet.yaml", tmp_path / "md-kept.json", source=source, etcd_idle_timeout=3.0) as md,
        run_dns(metadata_url=f"{md.url}/2016-07-29", state_file=str(tmp_path / "dns-kept.json"), max_wait=5) as dns,
    ):
        await wait_for_version(dns, version_index(md.app[STORE].snapshot.version))
        yield md, dns


async def caught_up(md: RunningMetadata, dns: DnsServer, after: str) -> None:
    """Until metadata has moved past version ``after`` and the DNS service has applied that."""
    async with asyncio.timeout(10):
        while md.app[STORE].snapshot.version == after:
            await asyncio.sleep(0.01)
    await wait_for_version(dns, 0, version=md.app[STORE].snapshot.version)


async def names(dns: DnsServer, name: str) -> list[str]:
    reply = await ask(dns, name)
    return sorted(addresses(reply)) if reply.rcode() == 0 else [f"rcode {reply.rcode()}"]


def same_fleet(md: RunningMetadata, dns: DnsServer) -> None:
    """The DNS service's own copy of the fleet is the metadata service's, tokens aside."""
    assert dns.follower is not None
    assert dns.follower.fleet is not None
    ours = dns.follower.fleet.raw_lists()
    theirs = md.app[STORE].snapshot.fleet.raw
    public = {**theirs, "services": [{**s, "token": ""} for s in theirs["services"]]}

    def in_any_order(raw: Mapping[str, Any]) -> dict[str, Any]:  # a file's order is not the index's
        return {k: sorted(v, key=repr) if isinstance(v, list) else v for k, v in raw.items()}

    assert in_any_order(ours) == in_any_order(public)


@pytest.mark.external_tool
async def test_dns_follows_etcd_by_changes_through_compaction_and_relists(tmp_path: Path) -> None:
    with run_etcd(tmp_path / "etcd", members=1, version=VERSIONS[-1]) as cluster:
        await apply(cluster, fleet(), tmp_path)
        async with host(f"etcd://{cluster.endpoints}{PREFIX}", tmp_path) as (md, dns):
            assert dns.follower is not None
            counters = md.app[COUNTERS]
            assert await names(dns, "web.shop.rancher.internal") == ["127.0.0.11", "127.0.0.12"]
            before_version = md.app[STORE].snapshot.version
            await apply(cluster, fleet("127.0.0.21"), tmp_path)  # one container's address: one key
            await caught_up(md, dns, before_version)
            assert await names(dns, "web-1.rancher.internal") == ["127.0.0.21"]
            before_version = md.app[STORE].snapshot.version
            await apply(cluster, fleet("127.0.0.21", web2=False, db="127.0.0.31"), tmp_path)
            await caught_up(md, dns, before_version)
            assert await names(dns, "web-2.rancher.internal") == ["rcode 3"]  # deleted: NXDOMAIN
            assert await names(dns, "db-1.rancher.internal") == ["127.0.0.31"]
            assert dns.follower.deltas >= 2
            assert counters.deltas["gone"] == 0
            same_fleet(md, dns)
            # History compacted and the prefix read again (the resync safety net, SIGHUP): the
            # relist says what changed, so followers still catch up by changes.
            client = EtcdClient(EtcdEndpoints.parse(cluster.endpoints))
            _, revision = await client.list_prefix(PREFIX.encode())
            await client.compact(revision)
            await client.close()
            before = dns.follower.deltas
            before_version = md.app[STORE].snapshot.version
            await apply(cluster, fleet("127.0.0.22", web2=False, db="127.0.0.31"), tmp_path)
            source = md.app[SOURCE]
            assert isinstance(source, EtcdSource)
            source.request_reload()
            await caught_up(md, dns, before_version)
            assert await names(dns, "web-1.rancher.internal") == ["127.0.0.22"]
            assert dns.follower.deltas > before
            assert counters.deltas["gone"] == 0
            same_fleet(md, dns)


async def test_the_file_source_is_followed_by_changes_too(tmp_path: Path) -> None:
    data = tmp_path / "fleet.yaml"
    data.write_text(yaml.safe_dump(fleet()))
    async with host(f"file:{data}", tmp_path) as (md, dns):
        assert dns.follower is not None
        before_version = md.app[STORE].snapshot.version
        data.write_text(yaml.safe_dump(fleet("127.0.0.21")))
        await caught_up(md, dns, before_version)
        assert await names(dns, "web-1.rancher.internal") == ["127.0.0.21"]
        assert dns.follower.deltas == 1
        same_fleet(md, dns)


async def test_a_version_no_longer_kept_is_gone_and_the_whole_document_follows(tmp_path: Path) -> None:
    data = tmp_path / "fleet.yaml"
    data.write_text(yaml.safe_dump(fleet()))
    async with host(f"file:{data}", tmp_path) as (md, dns):
        assert dns.follower is not None
        md.app[STORE].changes = ChangeLog(max_versions=0)  # keeps nothing: every since= is gone
        before_version = md.app[STORE].snapshot.version
        data.write_text(yaml.safe_dump(fleet("127.0.0.21", web2=False)))
        await caught_up(md, dns, before_version)
        assert await names(dns, "web-1.rancher.internal") == ["127.0.0.21"]
        assert await names(dns, "web-2.rancher.internal") == ["rcode 3"]
        assert md.app[COUNTERS].deltas["gone"] == 1
        assert dns.follower.deltas == 0
        same_fleet(md, dns)
        async with md.client() as s, s.get("/metadns/v1/fleet", params={"since": "1-bogus"}) as r:
            assert r.status == 410


def test_the_window_collapses_changes_and_forgets_what_it_cannot_prove() -> None:
    one = Fleet.from_mapping(fleet())
    two = Fleet.from_mapping(fleet("127.0.0.21"))
    three = Fleet.from_mapping(fleet("127.0.0.22", web2=False))
    store = VersionedStore()
    store.publish(one, index=10)
    v1 = store.snapshot.version
    store.publish(two, index=11, changes=diff_fleets(one, two))
    v2 = store.snapshot.version
    store.publish(three, index=12, changes=diff_fleets(two, three))
    changes = store.changes.since(v1)
    assert changes is not None
    assert {(c.kind, c.ident) for c in changes} == {("containers", "c-web-1"), ("containers", "c-web-2")}
    index = FleetIndex.of(one)
    index.apply(changes)
    assert index.raw_lists() == FleetIndex.of(three).raw_lists()  # v1 plus the changes is v3
    assert store.changes.since(store.snapshot.version) == []
    assert store.changes.since("11-not-this-content") is None  # an index alone proves nothing
    store.restore(two, 11)  # a kept copy: no line of changes leads to it
    assert store.changes.since(v2) == []
    assert store.changes.since(v1) is None
    store.publish(three, index=13)  # a whole fleet without its changes: the window starts again
    assert store.changes.since(v2) is None


def test_a_delta_stops_at_its_limit() -> None:
    one = Fleet.from_mapping(fleet())
    two = Fleet.from_mapping(fleet("127.0.0.21", web2=False, db="127.0.0.31"))  # three containers move
    log = ChangeLog()
    log.record("", "v1", None)
    log.record("v1", "v2", diff_fleets(one, two))
    assert "v1" in log
    assert "v2" in log
    assert "v0" not in log
    assert len(log.since("v1", limit=3) or []) == 3
    assert log.since("v1", limit=2) is None
    assert log.since("v2", limit=0) == []  # the current version: nothing to carry
    assert delta_limit(10) == 1024
    assert delta_limit(100_000) == 12_500


def many(n: int) -> dict[str, Any]:
    data = fleet()
    data["containers"] += [
        {"name": f"w-{i}", "uuid": f"c-w-{i}", "stack_name": "shop", "primary_ip": f"10.9.{i // 250}.{i % 250 + 1}"}
        for i in range(n)
    ]
    return data


async def test_a_follower_far_behind_takes_the_whole_document_not_every_change(tmp_path: Path) -> None:
    """A DNS service that started before the fleet was read (at the empty version, or far
    behind) gets 410 and the whole document (encoded once per version, in a worker thread),
    not a delta of the whole fleet encoded for it on the event loop."""
    data = tmp_path / "fleet.yaml"
    data.write_text(yaml.safe_dump(fleet()))
    async with host(f"file:{data}", tmp_path) as (md, dns):
        assert dns.follower is not None
        before_version = md.app[STORE].snapshot.version
        data.write_text(yaml.safe_dump(many(1100)))  # more than delta_limit's floor of 1,024 objects
        await caught_up(md, dns, before_version)
        assert await names(dns, "w-1099.rancher.internal") == ["10.9.4.100"]
        assert md.app[COUNTERS].deltas["gone"] == 1
        assert md.app[COUNTERS].deltas["served"] == 0
        assert dns.follower.deltas == 0
        same_fleet(md, dns)
        # A small change after it still travels as a delta.
        before_version = md.app[STORE].snapshot.version
        data.write_text(yaml.safe_dump(many(1099)))
        await caught_up(md, dns, before_version)
        assert await names(dns, "w-1099.rancher.internal") == ["rcode 3"]
        assert dns.follower.deltas == 1
        same_fleet(md, dns)


@pytest.mark.external_tool
async def test_a_metadata_restart_with_a_kept_copy_behind_etcd(tmp_path: Path) -> None:
    """The metadata service restarts from a kept copy older than etcd: it serves the copy, lists
    etcd, and what the list changed against the copy (diffed) starts its window of changes; the
    DNS service, still at the copy's version, catches up with those changes alone, then goes on
    by changes. A version from before the copy is gone (410): the whole document."""
    with run_etcd(tmp_path / "etcd", members=1, version=VERSIONS[-1]) as cluster:
        await apply(cluster, fleet(), tmp_path)
        source = f"etcd://{cluster.endpoints}{PREFIX}"
        kept = tmp_path / "md-kept.json"
        first_run: contextlib.AbstractAsyncContextManager[RunningMetadata] | None = run_metadata(
            tmp_path / "fleet.yaml", kept, source=source, etcd_idle_timeout=3.0
        )
        assert first_run is not None
        first = await first_run.__aenter__()
        try:
            port = int(first.url.rsplit(":", 1)[1])
            async with run_dns(
                metadata_url=f"{first.url}/2016-07-29", state_file=str(tmp_path / "dns.json"), max_wait=2
            ) as dns:
                assert dns.follower is not None
                await wait_for_version(dns, 0, version=first.app[STORE].snapshot.version)
                before = first.app[STORE].snapshot.version
                await apply(cluster, fleet("127.0.0.21"), tmp_path)
                await caught_up(first, dns, before)
                stopping, first_run = first_run, None
                await stopping.__aexit__(None, None, None)  # the kept copy is written on the way out
                await apply(cluster, fleet("127.0.0.22"), tmp_path)  # while metadata is away
                deltas = dns.follower.deltas
                copy_version = dns.follower.version  # the first process's last, in its kept copy
                assert copy_version is not None
                async with run_metadata(
                    tmp_path / "fleet.yaml", kept, port, source=source, etcd_idle_timeout=3.0
                ) as md:
                    await caught_up(md, dns, copy_version)  # served at once, then etcd's list
                    assert await names(dns, "web-1.rancher.internal") == ["127.0.0.22"]
                    assert md.app[COUNTERS].deltas["gone"] == 0
                    assert dns.follower.deltas == deltas + 1  # the list's difference to the copy
                    same_fleet(md, dns)
                    async with md.client() as s, s.get("/metadns/v1/fleet", params={"since": before}) as r:
                        assert r.status == 410  # the first process's version before the copy's
                    deltas = dns.follower.deltas
                    before = md.app[STORE].snapshot.version
                    await apply(cluster, fleet("127.0.0.23"), tmp_path)
                    await caught_up(md, dns, before)
                    assert await names(dns, "web-1.rancher.internal") == ["127.0.0.23"]
                    assert dns.follower.deltas == deltas + 1
                    same_fleet(md, dns)
        finally:
            if first_run is not None:
                await first_run.__aexit__(None, None, None)


async def test_a_version_costs_one_request_a_wait_on_the_changes(tmp_path: Path) -> None:
    """With a fleet of its own, the DNS service waits on ``?since=V&wait=true`` (one request per
    version) instead of a ``/version`` long-poll followed by a fetch."""
    data = tmp_path / "fleet.yaml"
    data.write_text(yaml.safe_dump(fleet()))
    async with host(f"file:{data}", tmp_path) as (md, dns):
        assert dns.follower is not None
        counters = md.app[COUNTERS]

        def version_polls() -> int:
            return sum(n for (kind, _status), n in counters.requests.items() if kind == "version")

        polls, served = version_polls(), counters.deltas["served"]
        for ip in ("127.0.0.21", "127.0.0.22", "127.0.0.23"):
            before = md.app[STORE].snapshot.version
            data.write_text(yaml.safe_dump(fleet(ip)))
            await caught_up(md, dns, before)
            assert await names(dns, "web-1.rancher.internal") == [ip]
        assert version_polls() == polls
        assert counters.deltas["served"] >= served + 3
        # a wait that runs out answers the version asked about, with nothing in it
        current = md.app[STORE].snapshot.version
        async with (
            md.client() as s,
            s.get("/metadns/v1/fleet", params={"since": current, "wait": "true", "maxWait": "0.05"}) as r,
        ):
            body = await r.json()
        assert (body["version"], body["put"], body["deleted"]) == (current, {}, {})


async def test_a_dns_restart_with_a_kept_copy_asks_only_for_what_changed_since(tmp_path: Path) -> None:
    """The DNS service's kept copy carries the metadata version it was applied at: restarted,
    it serves the copy, then asks ``?since=`` that version and applies the changes made while
    it was down, without the whole document."""
    data = tmp_path / "fleet.yaml"
    data.write_text(yaml.safe_dump(fleet()))
    state = tmp_path / "dns-kept.json"
    async with run_metadata(data, tmp_path / "md-kept.json", source=f"file:{data}") as md:
        async with run_dns(metadata_url=f"{md.url}/2016-07-29", state_file=str(state), max_wait=5) as dns:
            await wait_for_version(dns, 0, version=md.app[STORE].snapshot.version)
            before = md.app[STORE].snapshot.version
            data.write_text(yaml.safe_dump(fleet("127.0.0.21")))
            await caught_up(md, dns, before)
        before = md.app[STORE].snapshot.version
        data.write_text(yaml.safe_dump(fleet("127.0.0.22", db="127.0.0.31")))  # while DNS is away
        async with asyncio.timeout(10):
            while md.app[STORE].snapshot.version == before:
                await asyncio.sleep(0.01)
        served, gone = md.app[COUNTERS].deltas["served"], md.app[COUNTERS].deltas["gone"]
        async with run_dns(metadata_url=f"{md.url}/2016-07-29", state_file=str(state), max_wait=5) as dns:
            assert dns.follower is not None
            assert dns.follower.restored is not None
            await wait_for_version(dns, 0, version=md.app[STORE].snapshot.version)
            assert await names(dns, "web-1.rancher.internal") == ["127.0.0.22"]
            assert await names(dns, "db-1.rancher.internal") == ["127.0.0.31"]
            assert dns.follower.deltas == 1
            assert md.app[COUNTERS].deltas["served"] > served
            assert md.app[COUNTERS].deltas["gone"] == gone
            same_fleet(md, dns)
