"""``metadns fleet put``: a few objects written into what a real etcd holds, validated with it,
nothing else touched, nothing deleted; followed by a host's metadata and DNS services."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumers.fleet_command import fleet_main
from consumers.fleet_put import PutConflict, plan_put, put, read_put_file, write_plan
from dns_svc.follower import version_index
from metadata_svc.keys import STORE
from shared.etcd import EtcdClient, EtcdEndpoints, b64
from shared.model import FleetError
from tests.support.dns import addresses, ask, run_dns, wait_for_version
from tests.support.etcd import VERSIONS, EtcdCluster, run_etcd
from tests.support.metadata import run_metadata

pytestmark = pytest.mark.external_tool

PREFIX = "/metadns/put/"


def base_fleet() -> dict[str, Any]:
    web = {"stack_name": "shop", "service_name": "web"}
    return {
        "environment": {"name": "put-test"},
        "hosts": [{"uuid": "host-a", "name": "host-a"}, {"uuid": "host-b", "name": "host-b"}],
        "stacks": [{"name": "Shop"}],
        "services": [{"name": "web", "stack_name": "shop", "ports": ["80/tcp"], "token": "web-secret"}],
        "containers": [
            {**web, "name": "web-1", "primary_ip": "127.0.0.11", "host_uuid": "host-a"},
            {**web, "name": "web-2", "primary_ip": "127.0.0.12", "host_uuid": "host-b"},
        ],
    }


def run(cluster: EtcdCluster, tmp_path: Path, command: str, data: Any, *extra: str) -> tuple[int, str, str]:
    """``metadns fleet COMMAND`` on a file holding ``data``: exit code, stdout, stderr."""
    path = tmp_path / f"{command}-{id(data)}.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = fleet_main([command, "--etcd", cluster.endpoints, "--prefix", PREFIX, *extra, str(path)])
    return code, out.getvalue(), err.getvalue()


async def stored(client: EtcdClient) -> dict[str, tuple[Any, int]]:
    kvs, _ = await client.list_prefix(PREFIX.encode())
    return {kv.key.decode()[len(PREFIX) :]: (json.loads(kv.value), kv.mod_revision) for kv in kvs}


@contextlib.asynccontextmanager
async def etcd_with_fleet(tmp_path: Path, version: str = "3.4"):
    with run_etcd(tmp_path / "etcd", version=version) as cluster:
        code, _, err = await asyncio.to_thread(run, cluster, tmp_path, "apply", base_fleet())
        assert code == 0, err
        client = EtcdClient(EtcdEndpoints.parse(cluster.endpoints))
        try:
            yield cluster, client
        finally:
            await client.close()


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_put_writes_only_the_objects_it_names_and_the_hosts_follow(tmp_path: Path, version: str) -> None:
    """One container's new address (named, no uuid) and a new service with its container: the
    keys they are stored at change, every other key keeps its revision, nothing is deleted (the
    service put without its token keeps it), and a host's DNS answers both."""
    async with etcd_with_fleet(tmp_path, version) as (cluster, client):
        before = await stored(client)
        objects = {
            "services": [
                {"name": "api", "stack_name": "shop", "links": {"shop/web": "backend"}},
                {"name": "web", "stack_name": "shop", "ports": ["8080/tcp"]},
            ],
            "containers": [
                {
                    "name": "web-1",
                    "stack_name": "shop",
                    "service_name": "web",
                    "primary_ip": "127.0.0.21",
                    "host_uuid": "host-a",
                },
                {
                    "name": "api-1",
                    "stack_name": "shop",
                    "service_name": "api",
                    "primary_ip": "127.0.0.31",
                    "host_uuid": "host-b",
                },
            ],
        }
        code, out, err = await asyncio.to_thread(run, cluster, tmp_path, "put", objects)
        assert code == 0, err
        after = await stored(client)
        changed = {key for key in after if key not in before or after[key] != before[key]}
        web1 = next(k for k, (v, _) in before.items() if k.startswith("containers/") and v["name"] == "web-1")
        api1 = next(k for k, (v, _) in after.items() if k.startswith("containers/") and v["name"] == "api-1")
        assert changed == {"services/shop/api", "services/shop/web", web1, api1}
        assert set(before) <= set(after)  # nothing deleted
        assert after[web1][0]["primary_ip"] == "127.0.0.21"
        assert after["tokens/shop/web"] == before["tokens/shop/web"]  # kept, untouched
        assert sorted(out.split()) == sorted(
            [
                f"{PREFIX}services/shop/api",
                "+",
                f"{PREFIX}services/shop/web",
                "~",
                f"{PREFIX}{web1}",
                "~",
                f"{PREFIX}{api1}",
                "+",
            ]
        )
        assert "changed 4 key(s)" in err
        code, out, err = await asyncio.to_thread(run, cluster, tmp_path, "put", objects)  # the same again
        assert (code, out) == (0, "")
        assert await stored(client) == after
        async with (
            run_metadata(tmp_path / "unused.yaml", source=f"etcd://{cluster.endpoints}{PREFIX}") as md,
            run_dns(metadata_url=f"{md.url}/2016-07-29", state_file="", max_wait=5) as dns,
        ):
            await wait_for_version(dns, version_index(md.app[STORE].snapshot.version))
            assert sorted(addresses(await ask(dns, "web.shop.rancher.internal"))) == ["127.0.0.12", "127.0.0.21"]
            assert addresses(await ask(dns, "api.shop.rancher.internal")) == ["127.0.0.31"]
            async with md.client("127.0.0.21") as s, s.get("/latest/self/service/token") as r:
                assert await r.text() == "web-secret"


async def test_a_put_that_does_not_validate_with_what_etcd_holds_writes_nothing(tmp_path: Path) -> None:
    """A container of a service etcd does not hold, a link to a missing service, a name two
    containers share given without its uuid, not a fleet file's shape: one line naming the
    file's object and the problem, exit 1, and every key as it was."""
    async with etcd_with_fleet(tmp_path) as (cluster, client):
        code, _, err = await asyncio.to_thread(
            run,
            cluster,
            tmp_path,
            "put",
            {
                "containers": [
                    {"name": "twin", "primary_ip": "127.0.0.41", "host_uuid": "host-a"},
                    {"name": "twin", "uuid": "twin-b", "primary_ip": "127.0.0.42", "host_uuid": "host-b"},
                ]
            },
        )
        assert code == 0, err
        before = await stored(client)
        cases = [
            (
                {
                    "containers": [
                        {"name": "x-1", "stack_name": "shop", "service_name": "nosuch", "primary_ip": "127.0.0.51"}
                    ]
                },
                "service 'nosuch' does not exist",
            ),
            ({"services": [{"name": "api", "stack_name": "shop", "links": {"shop/nosuch": "x"}}]}, "nosuch"),
            ({"containers": [{"name": "twin", "primary_ip": "127.0.0.43"}]}, "2 containers are named 'twin'"),
            ({"containers": [{"name": "x-2", "primary_ip": "not-an-ip"}]}, "not-an-ip"),
            ({"pods": []}, "unknown top-level key 'pods'"),
            ({}, "names no object"),
            ("containers: [unclosed", "does not parse"),
        ]
        for objects, problem in cases:
            code, out, err = await asyncio.to_thread(run, cluster, tmp_path, "put", objects)
            assert code == 1, (objects, err)
            assert out == ""
            lines = err.strip().splitlines()
            assert len(lines) == 1, lines
            assert lines[0].startswith("metadns fleet put: refused, nothing written: "), lines
            assert problem in lines[0], lines
            assert "put-" in lines[0]  # names the file
        assert await stored(client) == before


async def test_a_container_put_on_another_host_moves_and_dry_run_writes_nothing(tmp_path: Path) -> None:
    async with etcd_with_fleet(tmp_path) as (cluster, client):
        before = await stored(client)
        old = next(k for k, (v, _) in before.items() if k.startswith("containers/host-a/"))
        moved = {
            "containers": [
                {
                    "name": "web-1",
                    "stack_name": "shop",
                    "service_name": "web",
                    "primary_ip": "127.0.0.11",
                    "host_uuid": "host-b",
                }
            ]
        }
        code, out, _ = await asyncio.to_thread(run, cluster, tmp_path, "put", moved, "--dry-run")
        assert code == 0
        assert f"- {PREFIX}{old}" in out
        assert await stored(client) == before
        code, out, err = await asyncio.to_thread(run, cluster, tmp_path, "put", moved)
        assert code == 0, err
        after = await stored(client)
        assert old not in after
        new = old.replace("containers/host-a/", "containers/host-b/")
        assert after[new][0]["uuid"] == before[old][0]["uuid"]
        assert len([k for k in after if k.startswith("containers/")]) == 2


async def test_an_agents_registration_is_not_puts_to_replace(tmp_path: Path) -> None:
    async with etcd_with_fleet(tmp_path) as (cluster, client):
        lease = await client.lease_grant(30)
        agent_key = f"{PREFIX}containers/host-b/agent-1".encode()
        value = {"name": "agent-1", "uuid": "agent-1", "primary_ip": "127.0.0.61", "host_uuid": "host-b"}
        await client.put(agent_key, json.dumps(value).encode(), lease=lease)
        before = await stored(client)
        code, _, err = await asyncio.to_thread(
            run, cluster, tmp_path, "put", {"containers": [{**value, "primary_ip": "127.0.0.62"}]}
        )
        assert code == 1
        assert "registered by a host agent" in err
        assert await stored(client) == before


async def test_a_key_changed_between_the_read_and_the_write_stops_the_write(tmp_path: Path) -> None:
    """The write is conditional on what the put was validated against: a service deleted after
    the read takes the container that needs it with it (nothing written), and the put read
    again refuses it."""
    async with etcd_with_fleet(tmp_path) as (_cluster, client):
        objects = read_put_file(
            {
                "containers": [
                    {"name": "web-9", "stack_name": "shop", "service_name": "web", "primary_ip": "127.0.0.19"}
                ]
            },
            "late.yaml",
        )
        kvs, _ = await client.list_prefix(PREFIX.encode())
        plan = plan_put(kvs, PREFIX.encode(), objects, "late.yaml")
        assert "services/shop/web" in set().union(*plan.relies_on.values())
        await client.txn([], [{"request_delete_range": {"key": b64(f"{PREFIX}services/shop/web".encode())}}])
        before = await stored(client)
        with pytest.raises(PutConflict):
            await write_plan(client, PREFIX.encode(), plan)
        assert await stored(client) == before
        with pytest.raises(FleetError, match="service 'web' does not exist"):
            await put(client, PREFIX.encode(), objects, "late.yaml", dry_run=False)
        assert await stored(client) == before
