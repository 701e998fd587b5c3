"""A fleet of Kubernetes' size on etcd: what one change costs every host, at two fleet sizes.

For each ``--containers`` size, its own etcd (one member on loopback) and its own processes:

  apply    the whole fleet written with the real ``metadns fleet apply`` (a YAML file), timed.
  cold     ``--hosts`` hosts start at once, each one ``metadata-svc --source etcd://...`` and one
           ``dns-svc`` following it (with ``--http-listen`` for /metrics and ``--state-file`` on
           both): the time until every host's DNS answers a container written after the apply.
  memory   RSS (VmRSS) of metadata + DNS per host once every host answers, before any query but the
           cold-start probes (so the reply cache is empty), per container.
  cost     ``--rate`` single-key changes per second for ``--seconds``, no queries: CPU
           (utime + stime of metadata + DNS, /proc/PID/stat) per change per host, from the first
           write until the host answers the last one; and how long after the last write the last
           change arrived.
  latency  the same churn, with every ``rate/10``-th change sampled: the time from its write until
           every host's DNS answers the new address (UDP queries, polled every 5 ms at first, then
           every 10% of the age, at most every second), p50/p99/max and how many did not arrive
           within ``--deadline``; a deleted container's name until NXDOMAIN on every host.
  cache    a fixed set of names the changes never touch (other stacks' containers, services and
           SRV names) queried in a loop, steady and then during the same churn: the share of
           replies served from a cache (``metadns_dns_responses_total`` by ``source`` from
           /metrics), and the ratio of the two.
  restart  host 0 stopped (SIGTERM), one change written while it is down, both services started
           again with their kept copies: the time until its DNS answers, then until it answers
           the change.

Fleet shape: ``--fleet-hosts`` hosts (1,000), 20 services per stack, 5 containers per service (so
100 containers per stack: 100 stacks at 10k, 1,000 at 100k). Every service has a port (80/tcp, so
each has an SRV name); every fifth service (svc-1, svc-6, ...) links to svc-0 of its stack, and
every 100th container links to another container. The changes touch containers of the first half
of the stacks only: 18 of 20 a new primary_ip, 1 a delete, 1 the re-add of a deleted container.

Every wait is bounded (``--deadline`` per sample, ``--catchup`` for a phase to settle), every
process is stopped by its PID, and all traffic stays on loopback.

    .venv/bin/python bench/fleet_scale.py --containers 10000 100000 [--hosts 2] [--rate 100] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.etcd import EtcdClient, EtcdEndpoints  # noqa: E402
from shared.etcd_fleet import object_key  # noqa: E402
from tests.support.etcd import EtcdCluster, run_etcd  # noqa: E402
from tests.support.ports import free_ports  # noqa: E402  (free for both UDP and TCP)

PREFIX = "/metadns/scale/"
DOMAIN = "rancher.internal"
SERVICES_PER_STACK = 20
PER_SERVICE = 5
PER_STACK = SERVICES_PER_STACK * PER_SERVICE
CACHE_SOURCES = ("packet_cache", "client_cache", "global_cache")
NXDOMAIN = 3

Raw = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# The fleet


def container(i: int, hosts: int) -> Raw:
    stack, svc, k = i // PER_STACK, i % PER_STACK // PER_SERVICE, i % PER_SERVICE
    obj: Raw = {
        "name": f"s{stack}-svc{svc}-{k + 1}",
        "uuid": f"c{i}",
        "stack_name": f"s{stack}",
        "service_name": f"svc{svc}",
        "service_index": str(k + 1),
        "host_uuid": f"h{i % hosts}",
        "primary_ip": str(ipaddress.IPv4Address("10.64.0.0") + i + 1),
        "ports": ["80/tcp"],
    }
    if i % 100 == 50:
        obj["links"] = {f"s{stack}-svc0-1": "first"}
    return obj


def service(stack: int, j: int) -> Raw:
    obj: Raw = {"name": f"svc{j}", "stack_name": f"s{stack}", "ports": ["80/tcp"]}
    if j % 5 == 1:
        obj["links"] = {f"s{stack}/svc0": "upstream"}
    return obj


def fleet(n: int, hosts: int) -> Raw:
    stacks = -(-n // PER_STACK)
    return {
        "environment": {"name": "scale", "uuid": "scale-env"},
        "hosts": [
            {"uuid": f"h{k}", "name": f"host-{k}", "agent_ip": f"192.168.{k // 250}.{k % 250 + 1}"}
            for k in range(hosts)
        ],
        "stacks": [{"name": f"s{s}"} for s in range(stacks)],
        "services": [service(s, j) for s in range(stacks) for j in range(SERVICES_PER_STACK)],
        "containers": [container(i, hosts) for i in range(n)],
    }


def sentinel(hosts: int) -> Raw:
    """The container written after the apply: cold start ends when every host answers it."""
    return {
        "name": "sentinel-1",
        "uuid": "sentinel",
        "stack_name": "s0",
        "service_name": "svc0",
        "host_uuid": f"h{hosts - 1}",
        "primary_ip": "10.63.255.1",
    }


def dump(obj: Raw) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def key_of(obj: Raw) -> bytes:
    return (PREFIX + object_key("containers", obj)).encode()


@dataclass(frozen=True)
class Expect:
    """What every host must answer for ``name``: an A record ``ip``, or NXDOMAIN when ``ip`` is ''."""

    name: str
    ip: str

    def met(self, reply: Reply | None) -> bool:
        if reply is None:
            return False
        if not self.ip:
            return reply.rcode == NXDOMAIN
        return reply.rcode == 0 and self.ip in reply.addresses


@dataclass
class Change:
    key: bytes
    value: bytes | None  # None: a delete
    expect: Expect
    kind: str  # "ip", "delete", "readd"


class Churn:
    """Single-key changes of the containers of the first half of the stacks, in an endless cycle:
    of every 20, one deletes a container, one puts back a container deleted at least
    ``readd_after`` seconds before (so that its NXDOMAIN had the time to arrive), the rest give one
    a new primary_ip (each new address used once)."""

    def __init__(self, n: int, hosts: int, readd_after: float) -> None:
        half = max(-(-n // PER_STACK) // 2, 1) * PER_STACK
        self.pool = [container(i, hosts) for i in range(min(half, n))]
        self.cursor = 0
        self.serial = 0
        self.deleted: list[int] = []
        self.deleted_at: list[float] = []
        self.readd_after = readd_after

    def _next_present(self) -> int:
        for _ in range(len(self.pool)):
            i = self.cursor % len(self.pool)
            self.cursor += 1
            if i not in self.deleted:
                return i
        raise RuntimeError("every container of the pool is deleted")

    def next(self) -> Change:
        self.serial += 1
        now = time.monotonic()
        if self.serial % 20 == 17 and self.deleted and now - self.deleted_at[0] >= self.readd_after:
            self.deleted_at.pop(0)
            obj = self.pool[self.deleted.pop(0)]
            return Change(key_of(obj), dump(obj), Expect(f"{obj['name']}.{DOMAIN}", obj["primary_ip"]), "readd")
        i = self._next_present()
        obj = self.pool[i]
        if self.serial % 20 == 7:
            self.deleted.append(i)
            self.deleted_at.append(now)
            return Change(key_of(obj), None, Expect(f"{obj['name']}.{DOMAIN}", ""), "delete")
        obj["primary_ip"] = str(ipaddress.IPv4Address("10.128.0.0") + self.serial)
        return Change(key_of(obj), dump(obj), Expect(f"{obj['name']}.{DOMAIN}", obj["primary_ip"]), "ip")


def untouched_names(n: int, count: int) -> list[tuple[str, int]]:
    """(name, qtype) the churn never changes: containers, services and SRV names of the second
    half of the stacks, spread over all of them."""
    stacks = -(-n // PER_STACK)
    first = stacks // 2 if stacks > 1 else 0
    span = stacks - first
    out: list[tuple[str, int]] = []
    for i in range(min(count, span * SERVICES_PER_STACK)):
        s, j = first + i % span, i // span % SERVICES_PER_STACK
        kind = i % 3
        if kind == 0:
            out.append((f"s{s}-svc{j}-{i // span % PER_SERVICE + 1}.{DOMAIN}", 1))
        elif kind == 1:
            out.append((f"svc{j}.s{s}.{DOMAIN}", 1))
        else:
            out.append((f"_svc{j}._tcp.s{s}.{DOMAIN}", 33))
    return out


# ---------------------------------------------------------------------------------------------
# A DNS client: one UDP socket per server, replies matched by ID


@dataclass(frozen=True)
class Reply:
    rcode: int
    addresses: tuple[str, ...]


def encode_query(qid: int, name: str, qtype: int) -> bytes:
    wire = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return (
        qid.to_bytes(2, "big")
        + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + wire
        + qtype.to_bytes(2, "big")
        + b"\x00\x01"
    )


def _skip_name(data: bytes, pos: int) -> int:
    while pos < len(data):
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + length
    raise ValueError("name runs past the packet")


def decode_reply(data: bytes) -> Reply:
    rcode = data[3] & 0x0F
    qdcount, ancount = int.from_bytes(data[4:6], "big"), int.from_bytes(data[6:8], "big")
    pos = 12
    for _ in range(qdcount):
        pos = _skip_name(data, pos) + 4
    found: list[str] = []
    for _ in range(ancount):
        pos = _skip_name(data, pos)
        rtype = int.from_bytes(data[pos : pos + 2], "big")
        rdlen = int.from_bytes(data[pos + 8 : pos + 10], "big")
        pos += 10
        if rtype == 1 and rdlen == 4:
            found.append(".".join(str(b) for b in data[pos : pos + 4]))
        pos += rdlen
    return Reply(rcode, tuple(found))


class DnsClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.next_id = 0
        self.sent = 0

    @classmethod
    async def open(cls, port: int) -> DnsClient:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_datagram_endpoint(cls, remote_addr=("127.0.0.1", port))
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        future = self.waiting.pop(int.from_bytes(data[:2], "big"), None) if len(data) >= 12 else None
        if future is not None and not future.done():
            future.set_result(data)

    async def ask(self, name: str, qtype: int = 1, wait: float = 1.0) -> Reply | None:
        assert self.transport is not None
        self.next_id = (self.next_id + 1) & 0xFFFF
        qid = self.next_id
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[qid] = future
        self.transport.sendto(encode_query(qid, name, qtype))
        self.sent += 1
        try:
            data = await asyncio.wait_for(future, wait)
        except TimeoutError:
            return None
        finally:
            self.waiting.pop(qid, None)
        try:
            return decode_reply(data)
        except (ValueError, IndexError):
            return None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# ---------------------------------------------------------------------------------------------
# The hosts: one metadata service and one DNS service each, real processes


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 20 s: only this process, by its PID."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@dataclass
class Host:
    index: int
    work: Path
    etcd: str
    md_port: int = 0
    http_port: int = 0
    dns_port: int = 0
    md: subprocess.Popen[bytes] | None = None
    dns: subprocess.Popen[bytes] | None = None
    client: DnsClient | None = None
    starts: int = 0
    unanswered: int = 0  # queries of the cache loop without a reply within 1 s

    @property
    def md_state(self) -> Path:
        return self.work / f"host{self.index}-metadata.json"

    @property
    def dns_state(self) -> Path:
        return self.work / f"host{self.index}-dns.json"

    def log(self, what: str) -> Path:
        return self.work / f"host{self.index}-{what}.log"

    def start(self, bin_dir: Path) -> None:
        """Both services at once (the metadata port chosen up front); the DNS port is read from
        its ``event=listening`` line by ``connect``."""
        if not self.md_port:
            self.md_port, self.http_port = free_ports(2)
        self.starts += 1
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log("metadata").open("ab") as out:
            self.md = subprocess.Popen(
                [
                    str(bin_dir / "metadata-svc"),
                    f"--listen=127.0.0.1:{self.md_port}",
                    f"--source=etcd://{self.etcd}{PREFIX}",
                    f"--state-file={self.md_state}",
                    "--log-level=info",
                ],
                stdout=subprocess.DEVNULL,
                stderr=out,
                env=env,
            )
        with self.log("dns").open("ab") as out:
            self.dns = subprocess.Popen(
                [
                    str(bin_dir / "dns-svc"),
                    "--listen=127.0.0.1:0",
                    f"--metadata-url=http://127.0.0.1:{self.md_port}/2016-07-29",
                    f"--http-listen=127.0.0.1:{self.http_port}",
                    f"--state-file={self.dns_state}",
                    "--resolv-conf=/nonexistent",
                    "--log-level=info",
                ],
                stdout=subprocess.DEVNULL,
                stderr=out,
                env=env,
            )

    async def connect(self, deadline: float) -> None:
        """The DNS port from the newest ``event=listening`` line (this start's), then a client."""
        while time.monotonic() < deadline:
            assert self.dns is not None
            if self.dns.poll() is not None:
                raise RuntimeError(f"dns-svc of host {self.index} exited: {self.log('dns').read_text()[-2000:]}")
            found = re.findall(r"event=listening address=[0-9.]+:(\d+)", self.log("dns").read_text())
            if len(found) >= self.starts:
                self.dns_port = int(found[-1])
                if self.client is not None:
                    self.client.close()
                self.client = await DnsClient.open(self.dns_port)
                return
            await asyncio.sleep(0.02)
        raise RuntimeError(f"dns-svc of host {self.index} did not listen in time")

    def pids(self) -> tuple[int, int]:
        assert self.md is not None
        assert self.dns is not None
        return self.md.pid, self.dns.pid

    def cpu(self) -> tuple[float, float]:
        md, dns = self.pids()
        return cpu_s(md), cpu_s(dns)

    def rss(self) -> tuple[float, float]:
        md, dns = self.pids()
        return rss_mb(md), rss_mb(dns)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        for proc in (self.dns, self.md):
            stop_process(proc)

    async def ask(self, name: str, qtype: int = 1, wait: float = 1.0) -> Reply | None:
        assert self.client is not None
        return await self.client.ask(name, qtype, wait)


async def until_met(host: Host, expect: Expect, since: float, deadline: float, interval: float = 0.05) -> float | None:
    """Seconds from ``since`` until ``host`` answers as ``expect`` says, or None by ``deadline``."""
    while (now := time.monotonic()) < deadline:
        if expect.met(await host.ask(expect.name, wait=min(1.0, max(deadline - now, 0.01)))):
            return time.monotonic() - since
        await asyncio.sleep(interval)
    return None


async def all_met(hosts: Sequence[Host], expect: Expect, since: float, seconds: float) -> list[float | None]:
    deadline = time.monotonic() + seconds
    return list(await asyncio.gather(*(until_met(h, expect, since, deadline) for h in hosts)))


async def sample(hosts: Sequence[Host], expect: Expect, written: float, deadline: float) -> float | None:
    """Seconds from the write until every host answers as ``expect`` says (None: not within
    ``deadline`` seconds), polled at 5 ms, then every 10% of the age, at most every second."""
    pending = list(hosts)
    while pending:
        age = time.monotonic() - written
        if age >= deadline:
            return None
        replies = await asyncio.gather(*(h.ask(expect.name, wait=min(1.0, deadline - age)) for h in pending))
        pending = [h for h, r in zip(pending, replies, strict=True) if not expect.met(r)]
        if pending:
            await asyncio.sleep(min(max(0.005, 0.1 * (time.monotonic() - written)), 1.0))
    return time.monotonic() - written


# ---------------------------------------------------------------------------------------------
# Measurements


async def metrics(session: aiohttp.ClientSession, port: int) -> tuple[dict[str, float], float]:
    """``metadns_dns_responses_total`` by source, and ``metadns_dns_answers_serial`` (the table
    in use: whether a change was applied in between)."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    serial = 0.0
    for line in text.splitlines():
        if line.startswith("metadns_dns_responses_total{"):
            found = re.search(r'source="([^"]*)"', line)
            if found:
                out[found[1]] = out.get(found[1], 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("metadns_dns_answers_serial "):
            serial = float(line.rsplit(" ", 1)[1])
    return out, serial


def hit_rate(before: dict[str, float], after: dict[str, float]) -> tuple[float, int]:
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    total = sum(delta.values())
    hits = sum(delta.get(k, 0.0) for k in CACHE_SOURCES)
    return (hits / total if total else 0.0), int(total)


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)] if ordered else float("nan")


def ms(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value * 1000:,.0f}"


@dataclass
class Args:
    sizes: list[int]
    hosts: int
    fleet_hosts: int
    rate: float
    seconds: float
    deadline: float
    catchup: float
    cache_names: int
    cache_qps: float
    etcd_version: str
    only: set[str]
    logs: Path | None = None


@dataclass
class Result:
    size: int
    figures: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def put(self, name: str, value: float | None) -> None:
        self.figures[name] = value
        shown = "-" if value is None else f"{value:,.3f}"
        print(f"  {name}: {shown}", flush=True)


async def write(client: EtcdClient, change: Change) -> None:
    if change.value is None:
        await client.txn([], [{"request_delete_range": {"key": b64(change.key)}}])
    else:
        await client.put(change.key, change.value)


async def churn(
    client: EtcdClient,
    changes: Churn,
    rate: float,
    seconds: float,
    on_write: Callable[[int, Change, float], None] | None = None,
) -> tuple[list[Change], float]:
    """``rate * seconds`` changes on schedule (stopped at twice ``seconds`` if the writes fall
    behind); the changes written and when the last one was."""
    count = int(rate * seconds)
    written: list[Change] = []
    started = last = time.monotonic()
    for i in range(count):
        due = started + i / rate
        await asyncio.sleep(max(due - time.monotonic(), 0))
        if time.monotonic() - started > 2 * seconds:
            break
        change = changes.next()
        await write(client, change)
        last = time.monotonic()
        written.append(change)
        if on_write is not None:
            on_write(i, change, last)
    return written, last


class Bench:
    def __init__(self, args: Args, size: int, work: Path, cluster: EtcdCluster, bin_dir: Path) -> None:
        self.args = args
        self.size = size
        self.work = work
        self.cluster = cluster
        self.bin_dir = bin_dir
        self.result = Result(size)
        self.hosts = [Host(k, work, cluster.endpoints) for k in range(args.hosts)]
        self.changes = Churn(size, args.fleet_hosts, args.deadline + 1)
        self.client = EtcdClient(EtcdEndpoints.parse(cluster.endpoints), timeout=30)

    def cpu(self) -> list[tuple[float, float]]:
        return [h.cpu() for h in self.hosts]

    async def apply(self) -> None:
        data = fleet(self.size, self.args.fleet_hosts)
        path = self.work / "fleet.yaml"
        path.write_text(yaml.dump(data, Dumper=yaml.CSafeDumper, sort_keys=False))
        started = time.monotonic()
        with (self.work / "apply.out").open("wb") as out:
            applied = subprocess.run(
                [
                    str(self.bin_dir / "metadns"),
                    "fleet",
                    "apply",
                    "--etcd",
                    self.cluster.endpoints,
                    "--prefix",
                    PREFIX,
                    str(path),
                ],
                stdout=out,
                stderr=subprocess.PIPE,
                timeout=1800,
            )
        if applied.returncode:
            raise RuntimeError(f"fleet apply failed ({applied.returncode}): {applied.stderr.decode().strip()}")
        self.result.put("apply_s", time.monotonic() - started)
        self.result.put("apply_file_mb", path.stat().st_size / 1e6)

    async def cold(self) -> None:
        last = sentinel(self.args.fleet_hosts)
        await self.client.put(key_of(last), dump(last))
        expect = Expect(f"{last['name']}.{DOMAIN}", last["primary_ip"])
        started = time.monotonic()
        for h in self.hosts:
            h.start(self.bin_dir)
        deadline = started + self.args.catchup
        for h in self.hosts:
            await h.connect(deadline)
        times = await all_met(self.hosts, expect, started, max(deadline - time.monotonic(), 0.0))
        for h, t in zip(self.hosts, times, strict=True):
            self.result.put(f"cold_host{h.index}_s", t)
        self.result.put("cold_s", None if None in times else max(t for t in times if t is not None))
        if None in times:
            raise RuntimeError(f"not every host answered within --catchup {self.args.catchup} s")

    async def memory(self) -> None:
        await asyncio.sleep(2)  # the kept copies written, the first collections done
        for h in self.hosts:
            md, dns = h.rss()
            self.result.put(f"rss_host{h.index}_metadata_mb", md)
            self.result.put(f"rss_host{h.index}_dns_mb", dns)
            self.result.put(f"rss_host{h.index}_kb_per_container", (md + dns) * 1024 / self.size)

    async def settle(self, last: Change, since: float) -> list[float | None]:
        return await all_met(self.hosts, last.expect, since, self.args.catchup)

    async def idle(self) -> None:
        before, started = self.cpu(), time.monotonic()
        await asyncio.sleep(3)
        elapsed = time.monotonic() - started
        for h, b, a in zip(self.hosts, before, self.cpu(), strict=True):
            self.result.put(f"idle_host{h.index}_cpu_pct", (a[0] - b[0] + a[1] - b[1]) / elapsed * 100)

    async def cost(self) -> None:
        before = self.cpu()
        written, last_at = await churn(self.client, self.changes, self.args.rate, self.args.seconds)
        arrived = await self.settle(written[-1], last_at)
        after = self.cpu()
        n = len(written)
        self.result.put("cost_changes", n)
        for h, b, a, t in zip(self.hosts, before, after, arrived, strict=True):
            md, dns = a[0] - b[0], a[1] - b[1]
            self.result.put(f"cost_host{h.index}_ms_per_change", (md + dns) / n * 1000)
            self.result.put(f"cost_host{h.index}_metadata_ms_per_change", md / n * 1000)
            self.result.put(f"cost_host{h.index}_dns_ms_per_change", dns / n * 1000)
            self.result.put(f"cost_host{h.index}_last_arrived_s", t)

    async def latency(self) -> None:
        every = max(int(self.args.rate // 10), 1)
        tasks: list[tuple[str, asyncio.Task[float | None]]] = []

        def on_write(i: int, change: Change, at: float) -> None:
            if i % every == 0 or change.kind == "delete":
                task = asyncio.create_task(sample(self.hosts, change.expect, at, self.args.deadline))
                tasks.append((change.kind, task))

        written, last_at = await churn(self.client, self.changes, self.args.rate, self.args.seconds, on_write)
        settled = asyncio.create_task(self.settle(written[-1], last_at))
        results = [(kind, await task) for kind, task in tasks]
        arrived = await settled
        put = [t for kind, t in results if kind != "delete" and t is not None]
        gone = [t for kind, t in results if kind == "delete" and t is not None]
        self.result.put("latency_samples", sum(1 for kind, _ in results if kind != "delete"))
        self.result.put("latency_p50_s", statistics.median(put) if put else None)
        self.result.put("latency_p99_s", pct(put, 0.99) if put else None)
        self.result.put("latency_max_s", max(put) if put else None)
        self.result.put("latency_missed", sum(1 for kind, t in results if kind != "delete" and t is None))
        self.result.put("nxdomain_samples", sum(1 for kind, _ in results if kind == "delete"))
        self.result.put("nxdomain_p50_s", statistics.median(gone) if gone else None)
        self.result.put("nxdomain_p99_s", pct(gone, 0.99) if gone else None)
        self.result.put("nxdomain_missed", sum(1 for kind, t in results if kind == "delete" and t is None))
        self.result.put("latency_last_arrived_s", None if None in arrived else max(t for t in arrived if t is not None))

    async def query_loop(self, names: Sequence[tuple[str, int]], seconds: float) -> None:
        """Every host asked ``names`` in turn at ``--cache-qps`` per host, for ``seconds``."""
        count = int(self.args.cache_qps * seconds)
        started = time.monotonic()
        for i in range(count):
            due = started + i / self.args.cache_qps
            await asyncio.sleep(max(due - time.monotonic(), 0))
            if time.monotonic() - started > 2 * seconds:
                break
            name, qtype = names[i % len(names)]
            replies = await asyncio.gather(*(h.ask(name, qtype, wait=1.0) for h in self.hosts))
            for h, reply in zip(self.hosts, replies, strict=True):
                h.unanswered += reply is None

    async def cache(self) -> None:
        names = untouched_names(self.size, self.args.cache_names)
        seconds = min(self.args.seconds, 10.0)
        async with aiohttp.ClientSession() as session:

            async def scrape() -> list[tuple[dict[str, float], float]]:
                return [await metrics(session, h.http_port) for h in self.hosts]

            await self.query_loop(names, min(seconds, 2.0))  # warm
            before = await scrape()
            for h in self.hosts:
                h.unanswered = 0
            await self.query_loop(names, seconds)
            steady = await scrape()
            lost_steady = [h.unanswered for h in self.hosts]
            loop = asyncio.create_task(self.query_loop(names, seconds))
            written, last_at = await churn(self.client, self.changes, self.args.rate, seconds)
            await loop
            during = await scrape()
            lost_churn = [h.unanswered - lost for h, lost in zip(self.hosts, lost_steady, strict=True)]
        await self.settle(written[-1], last_at)
        for h, b, s, d in zip(self.hosts, before, steady, during, strict=True):
            rate_steady, n_steady = hit_rate(b[0], s[0])
            rate_churn, n_churn = hit_rate(s[0], d[0])
            self.result.put(f"cache_host{h.index}_churn_serial_moved", d[1] - s[1])
            self.result.put(f"cache_host{h.index}_steady_hit_pct", rate_steady * 100)
            self.result.put(f"cache_host{h.index}_churn_hit_pct", rate_churn * 100)
            self.result.put(f"cache_host{h.index}_churn_over_steady", rate_churn / rate_steady if rate_steady else None)
            self.result.put(f"cache_host{h.index}_replies", n_steady + n_churn)
            self.result.put(f"cache_host{h.index}_unanswered_steady", lost_steady[h.index])
            self.result.put(f"cache_host{h.index}_unanswered_churn", lost_churn[h.index])

    async def kept_written(self, seconds: float = 60.0) -> None:
        """Until both kept copies of every host have stood unchanged for 2 s."""
        deadline = time.monotonic() + seconds

        def stamp() -> list[float]:
            return [p.stat().st_mtime if p.exists() else 0.0 for h in self.hosts for p in (h.md_state, h.dns_state)]

        seen = stamp()
        while time.monotonic() < deadline:
            await asyncio.sleep(2)
            now = stamp()
            if now == seen and all(now):
                return
            seen = now
        self.result.notes.append("kept copies still changing when host 0 was stopped")

    async def restart(self) -> None:
        await self.kept_written()
        host = self.hosts[0]
        host.stop()
        change = self.changes.next()
        while change.kind != "ip":
            change = self.changes.next()
        await write(self.client, change)
        if len(self.hosts) > 1:
            await all_met(self.hosts[1:], change.expect, time.monotonic(), self.args.catchup)
        last = sentinel(self.args.fleet_hosts)
        serving = Expect(f"{last['name']}.{DOMAIN}", last["primary_ip"])
        started = time.monotonic()
        host.start(self.bin_dir)
        deadline = started + self.args.catchup
        await host.connect(deadline)
        serves = await until_met(host, serving, started, deadline, interval=0.01)
        first = await host.ask(change.expect.name)
        caught = await until_met(host, change.expect, started, deadline, interval=0.02)
        self.result.put("restart_serves_s", serves)
        self.result.put("restart_caught_up_s", caught)
        if first is not None and change.expect.met(first):
            self.result.notes.append("restart: the change was already served at the first answer")

    async def run(self) -> Result:
        phases: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("apply", self.apply),
            ("cold", self.cold),
            ("memory", self.memory),
            ("idle", self.idle),
            ("cost", self.cost),
            ("latency", self.latency),
            ("cache", self.cache),
            ("restart", self.restart),
        ]
        # Every phase after the cold start needs the hosts it starts: ``--only apply`` alone
        # measures the write of the fleet and starts no host.
        wanted = bool(self.args.only - {"apply"})
        try:
            for name, phase in phases:
                if name == "apply" or not self.args.only or name in self.args.only or (name == "cold" and wanted):
                    print(f"[{self.size:,}] {name}", flush=True)
                    await phase()
        finally:
            await self.client.close()
            for h in self.hosts:
                h.stop()
        return self.result


def b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()


# ---------------------------------------------------------------------------------------------
# The report


def _worst(
    prefix: str, suffix: str, pick: Callable[[list[float]], float] = max
) -> Callable[[dict[str, float | None], int], float | None]:
    """The worst host's figure: the highest, or with ``pick=min`` the lowest."""

    def read(f: dict[str, float | None], hosts: int) -> float | None:
        values = [f.get(f"{prefix}{k}{suffix}") for k in range(hosts)]
        return None if any(v is None for v in values) or not values else pick([v for v in values if v is not None])

    return read


def _one(name: str) -> Callable[[dict[str, float | None], int], float | None]:
    return lambda f, _hosts: f.get(name)


def _scaled(name: str, factor: float) -> Callable[[dict[str, float | None], int], float | None]:
    def read(f: dict[str, float | None], _hosts: int) -> float | None:
        value = f.get(name)
        return None if value is None else value * factor

    return read


TABLE: list[tuple[str, str, Callable[[dict[str, float | None], int], float | None]]] = [
    ("`fleet apply` of the whole fleet", "s", _one("apply_s")),
    ("cold start: every host's DNS answers the last write", "s", _one("cold_s")),
    ("RSS metadata + DNS per container (worst host)", "KB", _worst("rss_host", "_kb_per_container")),
    ("RSS metadata (worst host)", "MB", _worst("rss_host", "_metadata_mb")),
    ("RSS DNS (worst host)", "MB", _worst("rss_host", "_dns_mb")),
    ("idle CPU metadata + DNS (worst host)", "%", _worst("idle_host", "_cpu_pct")),
    ("changes written (cost run)", "", _one("cost_changes")),
    ("CPU per change per host, metadata + DNS (worst host)", "ms", _worst("cost_host", "_ms_per_change")),
    ("  of which metadata", "ms", _worst("cost_host", "_metadata_ms_per_change")),
    ("  of which DNS", "ms", _worst("cost_host", "_dns_ms_per_change")),
    ("last change arrived after the last write (worst host)", "s", _worst("cost_host", "_last_arrived_s")),
    ("write -> every host answers: samples", "", _one("latency_samples")),
    ("  p50", "ms", _scaled("latency_p50_s", 1000)),
    ("  p99", "ms", _scaled("latency_p99_s", 1000)),
    ("  max", "ms", _scaled("latency_max_s", 1000)),
    ("  not within --deadline", "", _one("latency_missed")),
    ("delete -> NXDOMAIN on every host: samples", "", _one("nxdomain_samples")),
    ("  p50", "ms", _scaled("nxdomain_p50_s", 1000)),
    ("  p99", "ms", _scaled("nxdomain_p99_s", 1000)),
    ("  not within --deadline", "", _one("nxdomain_missed")),
    ("cache hit rate, untouched names, steady (worst host)", "%", _worst("cache_host", "_steady_hit_pct", min)),
    ("cache hit rate, untouched names, during churn (worst host)", "%", _worst("cache_host", "_churn_hit_pct", min)),
    ("  churn / steady (worst host)", "", _worst("cache_host", "_churn_over_steady", min)),
    (
        "  answers serial advance in that window (0: no change applied; least host)",
        "",
        _worst("cache_host", "_churn_serial_moved", min),
    ),
    (
        "  cache loop queries without a reply within 1 s, steady (worst host)",
        "",
        _worst("cache_host", "_unanswered_steady"),
    ),
    ("  the same during churn (worst host)", "", _worst("cache_host", "_unanswered_churn")),
    ("restart with kept copy: DNS serves", "s", _one("restart_serves_s")),
    ("restart with kept copy: the change made while down served", "s", _one("restart_caught_up_s")),
]


def fmt(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def report(results: Sequence[Result], hosts: int) -> str:
    sizes = [r.size for r in results]
    head = "| | unit | " + " | ".join(f"{n:,}" for n in sizes)
    ratio = len(results) == 2
    lines = [head + (f" | {sizes[1]:,} / {sizes[0]:,} |" if ratio else " |")]
    lines.append("|---|---|" + "--:|" * (len(sizes) + (1 if ratio else 0)))
    for label, unit, read in TABLE:
        values = [read(r.figures, hosts) for r in results]
        row = f"| {label} | {unit} | " + " | ".join(fmt(v) for v in values)
        if ratio:
            a, b = values
            row += f" | {fmt(b / a) if a and b is not None else '-'}"
        lines.append(row + " |")
    if ratio:
        small, big = (_worst("rss_host", "_metadata_mb")(r.figures, hosts) for r in results)
        small_dns, big_dns = (_worst("rss_host", "_dns_mb")(r.figures, hosts) for r in results)
        if None not in (small, big, small_dns, big_dns):
            grown = (big or 0) + (big_dns or 0) - (small or 0) - (small_dns or 0)
            per = grown * 1024 / (sizes[1] - sizes[0])
            lines.append(f"\nRSS metadata + DNS per added container, {sizes[0]:,} -> {sizes[1]:,}: {per:.1f} KB")
    for r in results:
        lines.extend(f"- {r.size:,}: {note}" for note in r.notes)
    return "\n".join(lines)


@contextlib.contextmanager
def etcd_for(work: Path, version: str) -> Iterator[EtcdCluster]:
    with run_etcd(work, version=version, extra=("--quota-backend-bytes", str(8 << 30))) as cluster:
        yield cluster


async def one_size(args: Args, size: int, bin_dir: Path) -> Result:
    with (
        tempfile.TemporaryDirectory(prefix=f"fleet-scale-{size}-") as tmp,
        etcd_for(Path(tmp) / "etcd", args.etcd_version) as cluster,
    ):
        try:
            return await Bench(args, size, Path(tmp), cluster, bin_dir).run()
        finally:
            if args.logs is not None:  # the services' own lines, for a timeline of each phase
                kept = args.logs / str(size)
                kept.mkdir(parents=True, exist_ok=True)
                for log in Path(tmp).glob("host*.log"):
                    shutil.copy(log, kept / log.name)


def parse(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--containers", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--hosts", type=int, default=2, help="hosts started (metadata + DNS each)")
    parser.add_argument("--fleet-hosts", type=int, default=1000, help="hosts in the fleet")
    parser.add_argument("--rate", type=float, default=100.0, help="changes per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of churn per phase")
    parser.add_argument("--deadline", type=float, default=5.0, help="seconds a sampled change may take to arrive")
    parser.add_argument("--catchup", type=float, default=300.0, help="seconds a phase may take to settle")
    parser.add_argument("--cache-names", type=int, default=300, help="untouched names in the cache loop")
    parser.add_argument("--cache-qps", type=float, default=200.0, help="queries per second per host in the cache loop")
    parser.add_argument("--etcd-version", choices=("3.4", "3.5"), default="3.5")
    parser.add_argument(
        "--only",
        default="",
        help="comma list of phases after apply and cold (memory,idle,cost,latency,cache,restart); "
        "'apply' alone: only the fleet apply, no hosts started",
    )
    parser.add_argument("--logs", type=Path, help="copy every service's log here (one folder per size)")
    ns = parser.parse_args(argv)
    return Args(
        sizes=ns.containers,
        hosts=ns.hosts,
        fleet_hosts=ns.fleet_hosts,
        rate=ns.rate,
        seconds=ns.seconds,
        deadline=ns.deadline,
        catchup=ns.catchup,
        cache_names=ns.cache_names,
        cache_qps=ns.cache_qps,
        etcd_version=ns.etcd_version,
        only={p for p in ns.only.split(",") if p},
        logs=ns.logs,
    )


async def main() -> None:
    args = parse()
    command = shlex.join([".venv/bin/python", "bench/fleet_scale.py", *sys.argv[1:]])
    bin_dir = Path(sys.executable).parent
    print(f"$ {command}\n(etcd {args.etcd_version}, {os.cpu_count()} CPUs)", flush=True)
    results = [await one_size(args, size, bin_dir) for size in args.sizes]
    print(f"\n$ {command}\n")
    print(report(results, args.hosts))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
