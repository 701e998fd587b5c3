"""Real upstream resolvers for the tests: unbound on a loopback port, serving a zone of its own.

unbound is told that "." is a static local zone, so it never sends a packet beyond loopback;
everything the tests ask it comes from the ``local-data`` lines below.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.tools import require_tool

ZONE = """\
local-zone: "." static
local-zone: "example.test." static
local-data: "example.test. 3600 IN SOA ns.example.test. admin.example.test. 7 3600 600 86400 30"
local-data: "www.example.test. 300 IN A 192.0.2.10"
local-data: "www.example.test. 300 IN AAAA 2001:db8::10"
local-data: "payments.example.test. 120 IN A 192.0.2.20"
local-data: "alias.example.test. 300 IN CNAME www.example.test."
local-data: 'txt.example.test. 300 IN TXT "hello from upstream"'
local-data: "_ldap._tcp.example.test. 300 IN SRV 0 5 389 www.example.test."
local-zone: "wild.test." redirect
local-data: "wild.test. 60 IN A 192.0.2.99"
"""


def reserve_port() -> int:
    """A free port number for a third-party daemon that needs one up front (UDP and TCP)."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no free port")


@dataclass
class Unbound:
    address: tuple[str, int]
    process: subprocess.Popen[bytes]

    @property
    def spec(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


def _ready(address: tuple[str, int], access: str = "allow") -> bool:
    query = bytes.fromhex("12340100000100000000000003777777076578616d706c650474657374000001" "0001")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(query, address)
            return s.recv(4096)[:2] == b"\x12\x34"
        except OSError:
            return False


def unbound_config(workdir: Path, host: str, port: int, zone: str = ZONE, access: str = "allow") -> str:
    """An unbound that stays in the foreground, logs nowhere, and answers only from ``zone``."""
    return f"""server:
  interface: {host}@{port}
  port: {port}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{workdir}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  do-ip6: no
  access-control: 127.0.0.0/8 {access}
  module-config: "iterator"
  do-not-query-localhost: yes
  edns-buffer-size: 1232
  minimal-responses: no
{zone}
remote-control:
  control-enable: no
"""


@contextlib.contextmanager
def run_unbound(workdir: Path, extra: str = "", host: str = "127.0.0.1", zone: str = ZONE,
                access: str = "allow") -> Iterator[Unbound]:
    binary = require_tool("unbound", "/usr/sbin/unbound")
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        port = reserve_port()
        conf = workdir / "unbound.conf"
        conf.write_text(unbound_config(workdir, host, port, zone + extra, access))
        proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None and not _ready((host, port), access):
            time.sleep(0.05)
        if proc.poll() is None:
            server = Unbound((host, port), proc)
            try:
                yield server
            finally:
                server.stop()
            return
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr is not None:
            proc.stderr.close()
        if "address already in use" not in err.lower() or attempt == 4:
            raise RuntimeError(f"unbound did not start: {err}")
