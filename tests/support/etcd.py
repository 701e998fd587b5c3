"""A real etcd (Debian's etcd-server) on loopback: one member or a cluster of three, each with
its own data directory, stopped (by PID) when the test ends. Progress notifications come every
second, as a deployment should set them (the follower's idle timeout depends on them)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_ports
from tests.support.tools import require_tool


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class EtcdCluster:
    members: list[Member]
    binary: str
    log: Path
    initial_cluster: str = ""
    _started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def start(self, member: Member, state: str = "new") -> None:
        cmd = [
            self.binary,
            "--name",
            member.name,
            "--data-dir",
            str(member.data_dir),
            "--listen-client-urls",
            f"http://{member.endpoint}",
            "--advertise-client-urls",
            f"http://{member.endpoint}",
            "--listen-peer-urls",
            member.peer_url,
            "--initial-advertise-peer-urls",
            member.peer_url,
            "--initial-cluster",
            self.initial_cluster,
            "--initial-cluster-state",
            state,
            "--experimental-watch-progress-notify-interval",
            "1s",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--log-level",
            "error",
        ]
        with self.log.open("ab") as out:
            member.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        self._started.append(member.process)

    def stop(self, member: Member) -> None:
        proc = member.process
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        member.process = None

    def wait_healthy(self, member: Member, seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{member.endpoint}/health", timeout=1) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"etcd member {member.name} did not become healthy: {self.log.read_text()[-2000:]}")

    def stop_all(self) -> None:
        for proc in self._started:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)


@contextlib.contextmanager
def run_etcd(workdir: Path, members: int = 1) -> Iterator[EtcdCluster]:
    binary = require_tool("etcd", "/usr/bin/etcd")
    workdir.mkdir(parents=True, exist_ok=True)
    ports = free_ports(2 * members)  # client and peer ports, all distinct
    ms = [Member(f"m{i}", ports[2 * i], ports[2 * i + 1], workdir / f"m{i}") for i in range(members)]
    cluster = EtcdCluster(ms, binary, workdir / "etcd.log")
    cluster.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in ms)
    try:
        for m in ms:
            cluster.start(m)
        for m in ms:
            cluster.wait_healthy(m)
        yield cluster
    finally:
        cluster.stop_all()
