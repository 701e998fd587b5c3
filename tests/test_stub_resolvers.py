"""The real stub resolvers of glibc (getent) and musl (getaddrinfo built with musl-gcc) inside a
network namespace made by the test, whose resolv.conf points at metadns with a search list.
metadata, DNS and an unbound upstream all run inside that namespace, so no packet leaves it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.fleets import dns_fleet
from tests.support.tools import require_root, require_tool
from tests.support.upstream import unbound_config

pytestmark = [pytest.mark.external_tool, pytest.mark.needs_root]

ROOT = Path(__file__).resolve().parent.parent


class Namespace:
    def __init__(self, name: str) -> None:
        self.name = name
        self.processes: list[subprocess.Popen[bytes]] = []

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, timeout: float = 30) -> tuple[subprocess.CompletedProcess[str], float]:
        started = time.monotonic()
        result = subprocess.run(self.cmd(*args), capture_output=True, text=True, timeout=timeout)
        return result, time.monotonic() - started

    def start(self, *args: str, log: Path) -> None:
        with log.open("wb") as out:
            self.processes.append(subprocess.Popen(self.cmd(*args), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT))


def wait_until(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def netns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Namespace]:
    require_tool("ip")
    require_tool("getent")
    dig = require_tool("dig")
    unbound = require_tool("unbound", "/usr/sbin/unbound")
    require_root("a network namespace")
    work = tmp_path_factory.mktemp("netns")
    name = f"metadns-{uuid.uuid4().hex[:8]}"
    etc = Path("/etc/netns") / name
    subprocess.run(["ip", "netns", "add", name], check=True)
    ns = Namespace(name)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        etc.mkdir(parents=True)
        (etc / "resolv.conf").write_text(
            "nameserver 127.0.0.1\nsearch shop.rancher.internal rancher.internal\noptions timeout:2 attempts:2\n"
        )
        fleet = work / "fleet.yaml"
        fleet.write_text(yaml.safe_dump(dns_fleet(many=3)))
        (work / "unbound.conf").write_text(unbound_config(work, "127.0.0.1", 5300))
        ns.start(unbound, "-d", "-c", str(work / "unbound.conf"), log=work / "unbound.log")
        ns.start(
            sys.executable,
            "-m",
            "metadata_svc",
            "--listen=127.0.0.1:8080",
            f"--data={fleet}",
            "--state-file=",
            log=work / "metadata.log",
        )
        ns.start(
            sys.executable,
            "-m",
            "dns_svc",
            "--listen=127.0.0.1:53",
            "--metadata-url=http://127.0.0.1:8080/2016-07-29",
            "--recurse=127.0.0.1:5300",
            "--state-file=",
            "--metadata-answer=127.0.0.1",
            log=work / "dns.log",
        )

        def ready() -> bool:
            result, _ = ns.run(dig, "+short", "+time=1", "+tries=1", "@127.0.0.1", "web.shop.rancher.internal")
            return "127.0.0.11" in result.stdout

        wait_until(ready, 30, "metadns inside the namespace")
        yield ns
    finally:
        for proc in ns.processes:
            proc.terminate()
        for proc in ns.processes:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(etc, ignore_errors=True)


def test_glibc_search_list_finds_a_service(netns: Namespace) -> None:
    result, _ = netns.run("getent", "hosts", "web")
    assert result.returncode == 0
    address, canonical = result.stdout.split()[:2]
    assert address in {"127.0.0.11", "127.0.0.12"}
    assert canonical == "web.shop.rancher.internal"


def test_glibc_ahosts_with_a_partial_name(netns: Namespace) -> None:
    result, _ = netns.run("getent", "ahosts", "web.shop")
    assert result.returncode == 0
    assert {line.split()[0] for line in result.stdout.splitlines()} == {"127.0.0.11", "127.0.0.12"}


def test_glibc_upstream_name_and_missing_name(netns: Namespace) -> None:
    # (ahostsv4 would add AI_ADDRCONFIG, which fails in a namespace that has only loopback)
    result, _ = netns.run("getent", "ahosts", "www.example.test")
    assert {line.split()[0] for line in result.stdout.splitlines()} == {"192.0.2.10", "2001:db8::10"}
    missing, seconds = netns.run("getent", "hosts", "no-such-service")
    assert missing.returncode == 2
    assert missing.stdout == ""
    assert seconds < 2, "NXDOMAIN must come back at once, not after a resolver timeout"


@pytest.fixture(scope="module")
def musl_lookup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    musl_gcc = require_tool("musl-gcc")
    out = tmp_path_factory.mktemp("musl") / "lookup"
    subprocess.run(
        [musl_gcc, "-static", "-O2", "-o", str(out), str(ROOT / "tests" / "stub" / "lookup.c")],
        check=True,
        capture_output=True,
    )
    return out


def test_musl_resolves_service_container_and_upstream(netns: Namespace, musl_lookup: Path) -> None:
    for name, expected in (
        ("web", {"127.0.0.11", "127.0.0.12"}),
        ("shop-db-1.rancher.internal", {"127.0.0.21"}),
        ("db", {"127.0.0.21"}),
        ("www.example.test", {"192.0.2.10", "2001:db8::10"}),
    ):
        result, _ = netns.run(str(musl_lookup), name)
        assert result.returncode == 0, result.stdout
        assert set(result.stdout.split()) == expected, name


def test_musl_missing_name_is_nxdomain_promptly(netns: Namespace, musl_lookup: Path) -> None:
    result, seconds = netns.run(str(musl_lookup), "no-such-service")
    assert result.returncode == 2, result.stdout  # EAI_NONAME: an answer, not a failure (EAI_AGAIN)
    assert seconds < 2, "musl must not wait for a timeout"
