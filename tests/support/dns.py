"""The real DNS service on 127.0.0.1 (UDP and TCP on one ephemeral port), and clients:
dnspython from any 127.0.0.x source address, and real ``dig``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import re
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype

from dns_svc.server import DnsServer
from dns_svc.settings import DnsSettings
from tests.support.logs import ProcessLog
from tests.support.ports import free_ports
from tests.support.tools import require_tool


class FakeClock:
    """Injected into the caches so TTL countdown is tested by moving time, not by sleeping."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.asynccontextmanager
async def run_dns(clock: Any = None, **overrides: Any) -> AsyncIterator[DnsServer]:
    settings = DnsSettings(
        **{
            "host": "127.0.0.1",
            "port": 0,
            "state_file": "",
            "metadata_answer": ("127.0.0.250",),
            "recurser_timeout": 0.5,
            **overrides,
        }
    )
    server = DnsServer(settings, clock) if clock is not None else DnsServer(settings)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def wait_for_version(server: DnsServer, serial: int, seconds: float = 10.0, version: str | None = None) -> None:
    """Until the DNS service has applied metadata's ``serial`` (and exact ``version``, when given)."""
    async with asyncio.timeout(seconds):
        while server.tables.current.serial < serial or (
            version is not None and (server.follower is None or server.follower.version != version)
        ):
            await asyncio.sleep(0.01)


async def ask(
    server: DnsServer | tuple[str, int],
    qname: str,
    qtype: str = "A",
    source: str = "127.0.0.1",
    *,
    tcp: bool = False,
    use_edns: int | bool = False,
    payload: int = 1232,
    want_dnssec: bool = False,
    timeout: float = 3.0,
) -> dns.message.Message:
    address = server.address if isinstance(server, DnsServer) else server
    query = dns.message.make_query(qname, qtype, use_edns=use_edns, payload=payload, want_dnssec=want_dnssec)
    if tcp:
        return await dns.asyncquery.tcp(query, address[0], port=address[1], source=source, timeout=timeout)
    return await dns.asyncquery.udp(
        query,
        address[0],
        port=address[1],
        source=source,
        timeout=timeout,
        ignore_trailing=False,
        raise_on_truncation=False,
        # A datagram from any other address is not the answer: dropped, the answer still waited
        # for (a reply sent from the wrong socket still fails, by timing out). Under load, a late
        # reply to another test's query whose client port was freed and handed to this one made
        # dnspython raise UnexpectedSource here.
        ignore_unexpected=True,
    )


def addresses(reply: dns.message.Message) -> list[str]:
    return [
        rd.address for rrset in reply.answer if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) for rd in rrset
    ]


def rcode(reply: dns.message.Message) -> str:
    return dns.rcode.to_text(reply.rcode())


@dataclasses.dataclass
class DigResult:
    status: str
    answer: list[str]
    flags: list[str]
    raw: str


async def dig(server: DnsServer, *args: str, source: str = "127.0.0.1") -> DigResult:
    """Run the real dig (without blocking the server's event loop) and read its status line,
    flags and answer section."""
    binary = require_tool("dig")
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"@{server.address[0]}",
        "-p",
        str(server.address[1]),
        "-b",
        source,
        "+time=3",
        "+tries=1",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        stdout, _ = await proc.communicate()
    out = stdout.decode()
    status, flags, answer, section = "", [], [], ""
    for line in out.splitlines():
        if "status:" in line:
            status = line.split("status:")[1].split(",")[0].strip()
        if line.startswith(";; flags:"):
            flags = line.split(";", 3)[2].replace("flags:", "").split()
        if line.startswith(";; ") and "SECTION" in line:
            section = line
        elif section.startswith(";; ANSWER") and line and not line.startswith(";"):
            answer.append(" ".join(line.split()))
    return DigResult(status, answer, flags, out)


async def udp_exchange(
    address: tuple[str, int], packet: bytes, wait: float = 3.0, source: str = "127.0.0.1"
) -> bytes | None:
    """Send raw bytes over UDP and return the first datagram back, or None after ``wait``.
    A connected socket with ``sock_sendall``/``sock_recv``: uvloop has no ``sock_sendto``."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.bind((source, 0))
        s.connect(address)
        await loop.sock_sendall(s, packet)
        try:
            async with asyncio.timeout(wait):
                return await loop.sock_recv(s, 65535)
        except TimeoutError:
            return None


async def dns_process(*flags: str, stderr: int = asyncio.subprocess.PIPE, **env: str) -> asyncio.subprocess.Process:
    """The real DNS service (``python -m dns_svc``) with ``flags``: no state file and no
    resolv.conf unless ``env`` (METADNS_DNS_* variables) says otherwise."""
    environment = {**os.environ, "METADNS_DNS_STATE_FILE": "", "METADNS_DNS_RESOLV_CONF": "/nonexistent", **env}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "dns_svc", *flags, env=environment, stderr=stderr)


async def listening_address(log: ProcessLog) -> tuple[str, int]:
    """Where a real ``dns-svc`` listens, from its ``event=listening`` line (``--listen`` with port
    0: the service picks the port, and no other program can take it first)."""
    line = (await log.wait_for("event=listening"))[0]
    found = re.search(r"address=([0-9.]+):(\d+)", line)
    assert found is not None, line
    return (found[1], int(found[2]))


def _clashed(text: str) -> bool:
    """A port was taken: the service's one line, or a worker's traceback."""
    return "already in use" in text.lower()


def _settled(log: ProcessLog, ready: int) -> bool:
    return len(log.matching("event=listening")) >= ready or _clashed(log.text)


async def dns_process_on_free_ports(
    flags: Callable[..., Sequence[str]], ports: int = 1, ready: int = 1, attempts: int = 5, **env: str
) -> tuple[asyncio.subprocess.Process, ProcessLog, list[int]]:
    """The real DNS service on ports picked for it, once ``ready`` processes (workers) have
    logged ``event=listening``: ``flags(*ports)`` gives its flags. For ports that must be known up
    front (workers share one fixed port; --http-listen). Another program can take a port between
    its pick and the service's bind: then this process is stopped and another one started on
    other ports."""
    for attempt in range(attempts):
        numbers = free_ports(ports)
        proc = await dns_process(*flags(*numbers), stderr=asyncio.subprocess.PIPE, **env)
        log = ProcessLog(proc.stderr)
        with contextlib.suppress(AssertionError):  # ended, or not up in time: told apart below
            await log.until(functools.partial(_settled, log, ready), f"{ready} listening")
        if len(log.matching("event=listening")) >= ready and not _clashed(log.text):
            return proc, log, numbers
        if proc.returncode is None:  # a clash for one worker, or no start at all: this one is ours to stop
            proc.terminate()  # SIGTERM: a parent stops its workers too (SIGKILL would orphan them)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
        await proc.wait()
        text = await log.finish()
        if not _clashed(text) or attempt == attempts - 1:
            raise AssertionError(f"dns-svc did not start:\n{text}")
    raise AssertionError("unreachable")


async def serve_fleet(server: DnsServer, data: dict[str, Any], serial: int) -> None:
    """Hand ``server`` a fleet as the follower would (built off the loop, swapped in on it)."""
    import copy

    from shared.model import Fleet

    await server.apply_fleet(Fleet.from_mapping(copy.deepcopy(data)), serial)
