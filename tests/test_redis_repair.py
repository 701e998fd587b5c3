"""``metadns redis-repair``: unit rules on nodes.conf, and a real three-master redis cluster
(Debian's redis-server) that survives a full restart on new addresses only with the repair."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from consumers.redis_repair import NodesConfError, parse_nodes_conf, repair
from tests.support.metadata import run_metadata
from tests.support.tools import require_tool

pytestmark = pytest.mark.external_tool

A = "a" * 40
B = "b" * 40
SAMPLE = f"""{A} 10.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-8191
{B} 10.0.0.2:7000@17000,redis-1 master - 0 1700000000000 2 connected 8192-16383
vars currentEpoch 2 lastVoteEpoch 0
"""


def test_repair_rewrites_mapped_nodes_and_reports_the_rest() -> None:
    result = repair(SAMPLE, {A: "redis-0", B: "redis-1"}, {"redis-0": "10.0.1.1"})
    assert result.changed == {A: ("10.0.0.1:7000@17000", "10.0.1.1:7000@17000")}
    assert result.unmapped == {B: "container redis-1 is not in the fleet"}
    lines = result.text.splitlines()
    assert lines[0].startswith(f"{A} 10.0.1.1:7000@17000 myself,master")
    assert lines[1] == SAMPLE.splitlines()[1]
    assert lines[2] == "vars currentEpoch 2 lastVoteEpoch 0"


@pytest.mark.parametrize(
    "broken",
    [
        "garbage\n",
        f"{A} 10.0.0.1:7000@17000 master\n",
        "vars currentEpoch 2\n",
        f"{'z' * 40} 1.2.3.4:1@2 m - 0 0 1 c\n",
    ],
    ids=["garbage", "short-line", "no-nodes", "bad-id"],
)
def test_malformed_nodes_conf_is_refused(broken: str) -> None:
    with pytest.raises(NodesConfError):
        parse_nodes_conf(broken)


OLD = ("127.0.0.71", "127.0.0.72", "127.0.0.73")
NEW = ("127.0.0.81", "127.0.0.82", "127.0.0.83")
PORT = 7000


def redis_cli(*args: str, timeout: float = 10) -> str:
    cli = require_tool("redis-cli")
    return subprocess.run([cli, *args], capture_output=True, text=True, timeout=timeout).stdout


def start_node(server: str, ip: str, workdir: Path) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    # Each node announces its own address: on loopback the kernel would show peers 127.0.0.1.
    return subprocess.Popen(
        [
            server,
            "--bind",
            ip,
            "--port",
            str(PORT),
            "--cluster-enabled",
            "yes",
            "--cluster-announce-ip",
            ip,
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            "--dir",
            str(workdir),
            "--appendonly",
            "no",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--logfile",
            str(workdir / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_ping(ip: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if redis_cli("-h", ip, "-p", str(PORT), "ping", timeout=2).strip() == "PONG":
            return
        time.sleep(0.05)
    raise AssertionError(f"redis on {ip} did not start")


def cluster_state(ip: str) -> str:
    for line in redis_cli("-h", ip, "-p", str(PORT), "cluster", "info").splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return ""


def stop_all(procs: list[subprocess.Popen[bytes]], ips: tuple[str, ...]) -> None:
    for ip in ips:
        redis_cli("-h", ip, "-p", str(PORT), "shutdown", "save", timeout=5)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fleet(ips: tuple[str, ...]) -> dict[str, object]:
    return {
        "stacks": [{"name": "data"}],
        "services": [{"name": "redis", "stack_name": "data"}],
        "containers": [
            {"name": f"redis-{i}", "stack_name": "data", "service_name": "redis", "primary_ip": ip}
            for i, ip in enumerate(ips)
        ],
    }


@pytest.mark.slow
async def test_cluster_survives_a_full_restart_on_new_addresses(tmp_path: Path) -> None:
    server = require_tool("redis-server", "/usr/bin/redis-server")
    dirs = [tmp_path / f"redis-{i}" for i in range(3)]
    procs = [start_node(server, ip, d) for ip, d in zip(OLD, dirs, strict=True)]
    try:
        for ip in OLD:
            wait_ping(ip)
        created = redis_cli("--cluster", "create", *(f"{ip}:{PORT}" for ip in OLD), "--cluster-yes", timeout=60)
        assert "All 16384 slots covered" in created, created
        deadline = time.monotonic() + 20
        while cluster_state(OLD[0]) != "ok" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cluster_state(OLD[0]) == "ok"
        for i in range(50):
            assert redis_cli("-c", "-h", OLD[0], "-p", str(PORT), "set", f"key:{i}", f"value-{i}").strip() == "OK"
        ids = {
            redis_cli("-h", ip, "-p", str(PORT), "cluster", "myid").strip(): f"redis-{i}" for i, ip in enumerate(OLD)
        }
    finally:
        stop_all(procs, OLD)
    mapping = tmp_path / "nodes.yaml"
    mapping.write_text(yaml.safe_dump(ids))
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(fleet(NEW)))

    # Without the repair: the same restart on new addresses never becomes healthy.
    unrepaired = [tmp_path / f"plain-{i}" for i in range(3)]
    for src, dst in zip(dirs, unrepaired, strict=True):
        shutil.copytree(src, dst)
    procs = [start_node(server, ip, d) for ip, d in zip(NEW, unrepaired, strict=True)]
    try:
        for ip in NEW:
            wait_ping(ip)
        time.sleep(6)  # three node timeouts
        assert cluster_state(NEW[0]) != "ok"
    finally:
        stop_all(procs, NEW)

    # With the repair run before each node starts: the cluster is whole again, data included.
    async with run_metadata(fleet_file) as md:
        for d in dirs:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "consumers",
                "redis-repair",
                "--nodes-conf",
                str(d / "nodes.conf"),
                "--mapping",
                str(mapping),
                "--metadata-url",
                f"{md.url}/2016-07-29",
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ},
            )
            _, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            assert err.decode().count("event=node_moved") == 3
            assert (d / "nodes.conf.bak").exists()
    procs = [start_node(server, ip, d) for ip, d in zip(NEW, dirs, strict=True)]
    try:
        for ip in NEW:
            wait_ping(ip)
        deadline = time.monotonic() + 30
        while cluster_state(NEW[0]) != "ok" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert cluster_state(NEW[0]) == "ok"
        for i in range(50):
            assert redis_cli("-c", "-h", NEW[1], "-p", str(PORT), "get", f"key:{i}").strip() == f"value-{i}"
    finally:
        stop_all(procs, NEW)


async def test_unreadable_metadata_or_file_changes_nothing(tmp_path: Path) -> None:
    conf = tmp_path / "nodes.conf"
    conf.write_text("this is not a nodes.conf\n")
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(fleet(NEW)))
    async with run_metadata(fleet_file) as md:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "consumers",
            "redis-repair",
            "--nodes-conf",
            str(conf),
            "--metadata-url",
            f"{md.url}/2016-07-29",
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert "event=repair_refused" in err.decode()
    assert conf.read_text() == "this is not a nodes.conf\n"
    assert not (tmp_path / "nodes.conf.bak").exists()


def test_node_ids_from_container_labels() -> None:
    from consumers.redis_repair import DEFAULT_LABEL, fleet_names

    containers = [
        {"name": "redis-0", "primary_ip": "10.0.1.1", "labels": {DEFAULT_LABEL: A.upper()}},
        {"name": "redis-1", "primary_ip": "10.0.1.2", "labels": {}},
    ]
    by_label, addresses = fleet_names(containers, DEFAULT_LABEL)  # type: ignore[arg-type]
    assert by_label == {A: "redis-0"}
    assert addresses == {"redis-0": "10.0.1.1", "redis-1": "10.0.1.2"}
    result = repair(SAMPLE, by_label, addresses)
    assert list(result.changed) == [A]
    assert result.unmapped == {B: "no container name for this node id"}
