"""Real upstream resolvers for the tests: unbound on a loopback port, serving a zone of its own.

unbound is told that "." is a static local zone, so it never sends a packet beyond loopback;
everything the tests ask it comes from the ``local-data`` lines below.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port
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


@dataclass
class Unbound:
    address: tuple[str, int]
    process: subprocess.Popen[bytes]
    query_log: Path | None = None

    @property
    def spec(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def queried(self) -> list[str]:
        """The names unbound was asked, in order, lower-cased, from its own query log (the server
        made with ``log_queries=True``): what reached it, counted by unbound itself."""
        assert self.query_log is not None, "started without log_queries=True"
        if not self.query_log.exists():
            return []
        names = []
        for line in self.query_log.read_text().splitlines():
            match = re.search(r" info: \S+ (\S+) \S+ IN$", line)
            if match:
                names.append(match.group(1).lower())
        return names

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
    query = bytes.fromhex("12340100000100000000000003777777076578616d706c6504746573740000010001")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(query, address)
            return s.recv(4096)[:2] == b"\x12\x34"
        except OSError:
            return False


def unbound_config(
    workdir: Path, host: str, port: int, zone: str = ZONE, access: str = "allow", query_log: Path | None = None
) -> str:
    """An unbound that stays in the foreground, logs nowhere (or, with ``query_log``, every query
    it is asked to that file), and answers only from ``zone``."""
    logging = f'logfile: "{query_log}"\n  log-queries: yes' if query_log is not None else 'logfile: ""'
    return f"""server:
  interface: {host}@{port}
  port: {port}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{workdir}"
  pidfile: ""
  use-syslog: no
  {logging}
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
def run_unbound(
    workdir: Path,
    extra: str = "",
    host: str = "127.0.0.1",
    zone: str = ZONE,
    access: str = "allow",
    port: int = 0,
    log_queries: bool = False,
) -> Iterator[Unbound]:
    """A real unbound on ``host`` (on ``port``, when given: restarting one where it was); with
    ``log_queries``, one that logs every query it gets (``Unbound.queried``)."""
    binary = require_tool("unbound", "/usr/sbin/unbound")
    workdir.mkdir(parents=True, exist_ok=True)
    wanted = port
    for attempt in range(5):
        port = wanted or free_port(host)
        conf = workdir / "unbound.conf"
        query_log = workdir / "queries.log" if log_queries else None
        conf.write_text(unbound_config(workdir, host, port, zone + extra, access, query_log))
        proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None and not _ready((host, port), access):
            time.sleep(0.05)
        if proc.poll() is None:
            server = Unbound((host, port), proc, query_log)
            try:
                yield server
            finally:
                server.stop()
            return
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr is not None:
            proc.stderr.close()
        if "address already in use" not in err.lower() or attempt == 4 or wanted:
            raise RuntimeError(f"unbound did not start: {err}")


class ScriptedUpstream:
    """A UDP "upstream" whose replies the test decides: held back for ``delay`` seconds, cut
    short, or never sent. No real resolver can be told to do that on cue, so this stand-in is
    used only by the tests that need it, and only for the upstream's side. It sees what a real
    upstream sees: every query, its ID and the port it came from."""

    def __init__(
        self,
        delay: float = 0.0,
        host: str = "127.0.0.1",
        reply: Callable[[bytes], bytes | None] | None = None,
        copies: int = 1,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host, 0))
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.address: tuple[str, int] = self.sock.getsockname()
        self.delay = delay
        self.reply = reply or answer_a("192.0.2.55")
        self.queries: list[tuple[bytes, tuple[str, int]]] = []
        self.silent = False
        self.copies = copies  # each reply sent this many times (a duplicating network)
        self.then: tuple[bytes | None, ...] = ()  # datagrams sent right after each reply (None: it again)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> ScriptedUpstream:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            self.queries.append((data, addr))
            if self.silent:
                continue
            out = self.reply(data)
            if out is not None:
                assert self._loop is not None
                self._loop.call_later(self.delay, self._send, out, addr)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):
            for _ in range(self.copies):
                self.sock.sendto(data, addr)
            for extra in self.then:
                self.sock.sendto(data if extra is None else extra, addr)


def answer_a(address: str, ttl: int = 300) -> Callable[[bytes], bytes | None]:
    """A reply function: one A record for whatever was asked."""
    from dnslib import RR, A, DNSRecord

    def reply(query: bytes) -> bytes | None:
        request = DNSRecord.parse(query)
        out = request.reply()
        out.add_answer(RR(request.q.qname, 1, ttl=ttl, rdata=A(address)))
        return bytes(out.pack())

    return reply


def spoofed_udp(source: tuple[str, int], destination: tuple[str, int], payload: bytes) -> None:
    """Send a UDP datagram with a forged source address and port, from a raw socket (root only):
    what an off-path attacker does to plant a reply."""
    ip_src, ip_dst = socket.inet_aton(source[0]), socket.inet_aton(destination[0])
    udp = struct.pack("!HHHH", source[1], destination[1], 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0, ip_src, ip_dst)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.sendto(header + udp, (destination[0], 0))
