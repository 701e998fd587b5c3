"""metadns side by side with dnsmasq and unbound, same data, same pinning, one run.

Every server gets the same 1,000 fleet names, and the SRV records of 50 services only for the
mixed workload (dnsmasq scans its SRV list linearly on every query: giving it SRV records it is
not asked for would measure that, not its speed at names); peers are started afresh for each
workload. Same upstream (a separate unbound serving ext.test and a wildcard miss.test); every
server pinned to CPU 0, unbound with one thread (per-core speed); dnsperf and the upstream on
CPU 1. The bare-Python ceiling (bench/ceiling.py: learnt replies, ID patched, one callback per
datagram) runs beside them where it can answer (local names, cached recursion). Workloads:

  local      1,000 local names, queried from 50 source addresses (metadns: 50 client caches)
  local-1src the same names from one address (one dnsperf: the load generator is not the limit)
  mixed      local A, AAAA (NODATA) and SRV
  cached     1,000 upstream names, already in the cache
  miss       unique names, each answered by the upstream
  lone       local names from one address, one query in flight: the latency of a query that
             has the server to itself (a batch must never hold it back)
  churn      metadns only: local, with a fleet version change every second

Throughput runs are unthrottled; p99 comes from a second run paced (-Q) at half of the
server's own measured peak, with per-query latencies. Everything started is stopped at the end.

    .venv/bin/python bench/dns_compare.py [--duration 10] [--only local,cached]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.ports import free_port, free_ports  # noqa: E402  (free for both UDP and TCP)


def python_of(root: Path) -> str:
    """The interpreter metadns runs with from checkout ``root``: its own venv's, so that a
    checkout compared against another (bench/miss_cost.py) runs with its own compiled build."""
    own = root / ".venv" / "bin" / "python"
    return str(own) if own.exists() else sys.executable


NAMES = 1000
SERVICES = 50
SOURCES = 50
WORKLOADS = ("local", "local-1src", "mixed", "cached", "miss", "lone", "churn")
DOMAIN = "rancher.internal"


def ip_of(i: int) -> str:
    return f"10.{40 + i // 65536}.{(i // 256) % 256}.{i % 256 + 1 if i % 256 < 254 else 1}"


@dataclass
class Data:
    workdir: Path
    fleet: Path
    ips: list[str]

    def name(self, i: int) -> str:
        return f"app-{i}.{DOMAIN}"

    def service_of(self, i: int) -> int:
        return i % SERVICES


def make_data(workdir: Path, version: int = 0) -> Data:
    ips = [f"10.42.{i // 250}.{i % 250 + 1}" for i in range(NAMES)]
    if version:
        ips[version % NAMES] = f"10.43.{version // 250 % 250}.{version % 250 + 1}"
    containers = [
        {"name": f"app-{i}", "stack_name": "bench", "service_name": f"svc-{i % SERVICES}", "primary_ip": ips[i]}
        for i in range(NAMES)
    ]
    containers += [{"name": f"client-{k}", "primary_ip": f"127.0.10.{k + 1}"} for k in range(SOURCES)]
    fleet = {
        "stacks": [{"name": "bench"}],
        "services": [{"name": f"svc-{j}", "stack_name": "bench", "ports": ["80/tcp"]} for j in range(SERVICES)],
        "containers": containers,
    }
    path = workdir / "fleet.yaml"
    tmp = workdir / "fleet.yaml.tmp"
    tmp.write_text(yaml.safe_dump(fleet))
    os.replace(tmp, path)
    return Data(workdir, path, ips)


def write_queries(data: Data) -> dict[str, Path]:
    w = data.workdir
    files = {
        "local": [f"{data.name(i)} A" for i in range(NAMES)],
        "mixed": [
            q
            for i in range(NAMES)
            for q in (f"{data.name(i)} A", f"{data.name(i)} AAAA", f"_svc-{i % SERVICES}._tcp.bench.{DOMAIN} SRV")
        ],
        "cached": [f"e{i}.ext.test A" for i in range(NAMES)],
        "miss": [f"u{i}.miss.test A" for i in range(400_000)],
    }
    out = {}
    for name, lines in files.items():
        out[name] = w / f"{name}.txt"
        out[name].write_text("\n".join(lines) + "\n")
    out["churn"] = out["local-1src"] = out["lone"] = out["local"]
    return out


def wait_udp(port: int, qname: bytes = b"\x03www\x07example\x04test\x00", seconds: float = 20.0) -> None:
    query = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + qname + b"\x00\x01\x00\x01"
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                s.sendto(query, ("127.0.0.1", port))
                if s.recv(4096)[:2] == b"\xbe\xef":
                    return
            except OSError:
                time.sleep(0.1)
    raise RuntimeError(f"nothing answers on port {port}")


class Processes:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], cpu: int, log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(["taskset", "-c", str(cpu), *cmd], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def stop(self, pid: int) -> None:
        for proc in self.procs:
            if proc.pid == pid and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        self.procs = [proc for proc in self.procs if proc.pid != pid]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def unbound_conf(workdir: Path, port: int, body: str) -> Path:
    conf = workdir / f"unbound-{port}.conf"
    conf.write_text(f"""server:
  interface: 127.0.0.1@{port}
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
  num-threads: 1
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  do-not-query-localhost: no
  msg-cache-size: 64m
  rrset-cache-size: 128m
  harden-referral-path: no
  qname-minimisation: no
{body}
remote-control:
  control-enable: no
""")
    return conf


def start_upstream(p: Processes, data: Data) -> int:
    port = free_port()
    lines = [
        'local-zone: "." static',
        'local-zone: "ext.test." static',
        'local-data: "ext.test. 3600 IN SOA ns.ext.test. a.ext.test. 1 3600 600 86400 300"',
        'local-zone: "miss.test." redirect',
        'local-data: "miss.test. 300 IN A 192.0.2.99"',
    ]
    lines += [f'local-data: "e{i}.ext.test. 3600 IN A 192.0.2.{i % 250 + 1}"' for i in range(NAMES)]
    lines.append('local-data: "www.example.test. 300 IN A 192.0.2.10"')
    conf = unbound_conf(data.workdir, port, "\n".join(f"  {x}" for x in lines))
    p.start(["unbound", "-d", "-c", str(conf)], 1, data.workdir / "upstream.log")
    wait_udp(port)
    return port


def start_metadns(p: Processes, data: Data, upstream: int) -> tuple[int, subprocess.Popen[bytes], int]:
    md_port, dns_port = free_ports(2)
    md = p.start(
        [
            python_of(ROOT),
            "-m",
            "metadata_svc",
            f"--listen=127.0.0.1:{md_port}",
            f"--data={data.fleet}",
            "--state-file=",
            "--poll-interval=3600",
            "--log-level=warning",
        ],
        1,
        data.workdir / "metadata.log",
    )
    dns = p.start(
        [
            python_of(ROOT),
            "-m",
            "dns_svc",
            f"--listen=127.0.0.1:{dns_port}",
            f"--metadata-url=http://127.0.0.1:{md_port}/2016-07-29",
            f"--recurse=127.0.0.1:{upstream}",
            "--state-file=",
            "--log-level=warning",
            "--cache-capacity=500000",
        ],
        0,
        data.workdir / "dns.log",
    )
    wait_udp(dns_port, b"\x05app-0\x07rancher\x08internal\x00")
    return dns_port, md, dns.pid


def start_dnsmasq(p: Processes, data: Data, upstream: int, with_srv: bool) -> tuple[int, int]:
    """Dnsmasq with the names, and the SRV records only when the workload asks for them:
    dnsmasq scans its --srv-host list linearly for every query, which is not its speed at names."""
    port = free_port()
    hosts = data.workdir / "hosts"
    hosts.write_text("".join(f"{ip} app-{i}.{DOMAIN}\n" for i, ip in enumerate(data.ips)))
    srv = [f"--srv-host=_svc-{i % SERVICES}._tcp.bench.{DOMAIN},app-{i}.{DOMAIN},80" for i in range(NAMES)]
    srv = srv if with_srv else []
    binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    proc = p.start(
        [
            binary,
            "-k",
            f"--port={port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            f"--addn-hosts={hosts}",
            f"--server=127.0.0.1#{upstream}",
            "--cache-size=10000",
            "--local-ttl=1",
            "--user=root",
            "--pid-file=",
            f"--local=/{DOMAIN}/",
            "--dns-forward-max=1000",
            *srv,
        ],
        0,
        data.workdir / "dnsmasq.log",
    )
    wait_udp(port, b"\x05app-0\x07rancher\x08internal\x00")
    return port, proc.pid


def start_unbound_peer(p: Processes, data: Data, upstream: int, with_srv: bool) -> tuple[int, int]:
    """Unbound with one thread on one core (``num-threads: 1``), the per-core reference."""
    port = free_port()
    # unbound refuses special-use names (RFC 6761) such as .test by default: undo that, or it
    # would answer the ext.test and miss.test workloads with NXDOMAIN without asking upstream.
    lines = [
        'local-zone: "test." nodefault',
        f'local-zone: "{DOMAIN}." static',
        f'local-data: "{DOMAIN}. 1 IN SOA ns.{DOMAIN}. a.{DOMAIN}. 1 60 10 86400 1"',
    ]
    lines += [f'local-data: "app-{i}.{DOMAIN}. 1 IN A {ip}"' for i, ip in enumerate(data.ips)]
    if with_srv:
        lines += [
            f'local-data: "_svc-{i % SERVICES}._tcp.bench.{DOMAIN}. 1 IN SRV 0 10 80 app-{i}.{DOMAIN}."'
            for i in range(NAMES)
        ]
    body = "\n".join(f"  {x}" for x in lines) + f'\nforward-zone:\n  name: "."\n  forward-addr: 127.0.0.1@{upstream}\n'
    conf = unbound_conf(data.workdir, port, body)
    proc = p.start(["unbound", "-d", "-c", str(conf)], 0, data.workdir / "unbound-peer.log")
    wait_udp(port, b"\x05app-0\x07rancher\x08internal\x00")
    return port, proc.pid


def start_ceiling(p: Processes, data: Data, learn_from: int, queries: list[Path]) -> tuple[int, int]:
    """bench/ceiling.py, taught the replies to ``queries`` by metadns."""
    port = free_port()
    files = [arg for path in queries for arg in ("--queries", str(path))]
    proc = p.start(
        [sys.executable, str(ROOT / "bench" / "ceiling.py"), f"--port={port}", f"--learn-from={learn_from}", *files],
        0,
        data.workdir / "ceiling.log",
    )
    wait_udp(port, b"\x05app-0\x07rancher\x08internal\x00", seconds=120)
    return port, proc.pid


@dataclass
class Result:
    qps: float
    avg_ms: float
    p99_ms: float
    lost: float
    cpu_us: float  # server CPU time per answered query


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dnsperf(
    port: int,
    queries: Path,
    seconds: float,
    sources: int = 1,
    paced: int = 0,
    once: bool = False,
    outstanding: int = 200,
) -> tuple[float, float, float, list[float]]:
    """Run dnsperf from ``sources`` addresses at once; (qps, avg latency s, lost fraction, latencies)."""
    procs = []
    per_source_outstanding = max(outstanding // sources, 4) if outstanding >= 4 else outstanding
    for k in range(sources):
        cmd = [
            "taskset",
            "-c",
            "1",
            "dnsperf",
            "-s",
            "127.0.0.1",
            "-p",
            str(port),
            "-d",
            str(queries),
            "-l",
            str(seconds),
            "-t",
            "2",
            "-q",
            str(per_source_outstanding),
            "-c",
            "1",
        ]
        if sources > 1:
            cmd += ["-a", f"127.0.10.{k + 1}"]
        if paced:
            cmd += ["-Q", str(max(paced // sources, 1)), "-v"]
        if once:
            cmd += ["-n", "1"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    qps = avg = sent = lost = 0.0
    latencies: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        for line in out.splitlines():
            parts = line.split()
            if line.startswith("  Queries per second:"):
                qps += float(parts[-1])
            elif line.startswith("  Average Latency (s):"):
                avg += float(parts[3]) / len(procs)
            elif line.startswith("  Queries sent:"):
                sent += float(parts[-1])
            elif line.startswith("  Queries lost:"):
                lost += float(parts[2])
            elif paced and line.startswith("> "):
                try:
                    latencies.append(float(parts[-1]))
                except ValueError:  # a timed-out query: it counts at the top of the distribution
                    latencies.append(2.0)
    return qps, avg, (lost / sent if sent else 0.0), latencies


# One query at a time from one socket, pinned beside dnsperf: dnsperf at one outstanding query
# waits between sends, so it measures its own pauses, not the server. Bounded in count and time.
PING_PONG = """import socket, sys, time
port, path, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
names = [line.split()[0] for line in open(path)]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2.0)
s.connect(("127.0.0.1", port))
lat, lost, deadline = [], 0, time.monotonic() + seconds
while time.monotonic() < deadline and len(lat) + lost < 200000:
    i = len(lat) + lost
    qid = i % 65536
    wire = b"".join(bytes([len(p)]) + p.encode() for p in names[i % len(names)].split(".")) + b"\\0"
    query = qid.to_bytes(2, "big") + b"\\1\\0\\0\\1\\0\\0\\0\\0\\0\\0" + wire + b"\\0\\1\\0\\1"
    t = time.perf_counter()
    s.send(query)
    try:
        while s.recv(4096)[:2] != query[:2]:
            pass
    except TimeoutError:
        lost += 1
        continue
    lat.append(time.perf_counter() - t)
lat.sort()
print(len(lat), lost, sum(lat) / max(len(lat), 1), lat[int(len(lat) * 0.99)] if lat else 0.0)
"""


def ping_pong(port: int, queries: Path, seconds: float, pid: int) -> Result:
    """One query in flight: (answered per second, average and p99 latency, lost, CPU per query)."""
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    out = subprocess.run(
        ["taskset", "-c", "1", sys.executable, "-c", PING_PONG, str(port), str(queries), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout.split()
    elapsed = time.monotonic() - started
    answered, lost, avg, p99 = int(out[0]), int(out[1]), float(out[2]), float(out[3])
    cpu_us = (cpu_seconds(pid) - cpu_before) / max(answered, 1) * 1e6
    return Result(answered / elapsed, avg * 1000, p99 * 1000, lost / max(answered + lost, 1), cpu_us)


def measure(
    port: int, queries: Path, seconds: float, sources: int, pid: int, warm: bool = True, once: bool = False
) -> Result:
    if warm:  # one full pass first, however long it takes: fill every cache
        dnsperf(port, queries, 120, max(sources, 1), once=True)
    if sources == 0:  # "lone": one query in flight
        return ping_pong(port, queries, seconds, pid)
    cpu_before, started = cpu_seconds(pid), time.monotonic()
    qps, avg, lost, _ = dnsperf(port, queries, seconds, sources, once=once)
    elapsed = time.monotonic() - started
    cpu_us = (cpu_seconds(pid) - cpu_before) / max(qps * elapsed, 1) * 1e6
    # the latency target is at half of this server's own peak, not at a rate some server cannot take
    _, _, _, lat = dnsperf(port, queries, min(seconds, 5), sources, paced=max(int(qps / 2), 100), once=once)
    lat.sort()
    p99 = lat[int(len(lat) * 0.99)] if lat else float("nan")
    return Result(qps, avg * 1000, p99 * 1000, lost, cpu_us)


def churn(data: Data, metadata: subprocess.Popen[bytes], stop_after: float) -> Iterator[None]:
    """Generator used as a ticker: rewrite the fleet and SIGHUP metadata once a second."""
    started, version = time.monotonic(), 1
    while time.monotonic() - started < stop_after:
        make_data(data.workdir, version)
        os.kill(metadata.pid, signal.SIGHUP)
        version += 1
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--only", default=",".join(WORKLOADS))
    args = parser.parse_args()
    for tool in ("dnsperf", "unbound", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run scripts/bootstrap.sh test (as root) first")
    if not (shutil.which("dnsmasq") or Path("/usr/sbin/dnsmasq").exists()):
        sys.exit("dnsmasq is missing: run scripts/bootstrap.sh test (as root) first")
    wanted = args.only.split(",")
    rows: list[tuple[str, str, Result]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = make_data(workdir)
        queries = write_queries(data)
        procs = Processes()
        try:
            upstream = start_upstream(procs, data)
            metadns_port, metadata_proc, metadns_pid = start_metadns(procs, data, upstream)
            ceiling = start_ceiling(procs, data, metadns_port, [queries["local"], queries["cached"]])
            for workload in ("local", "local-1src", "mixed", "cached", "miss", "lone"):
                if workload not in wanted:
                    continue
                sources = SOURCES if workload == "local" else 0 if workload == "lone" else 1
                # each peer gets only the data this workload needs, started afresh for it
                with_srv = workload == "mixed"
                servers = {
                    "metadns": (metadns_port, metadns_pid),
                    "dnsmasq": start_dnsmasq(procs, data, upstream, with_srv),
                    "unbound": start_unbound_peer(procs, data, upstream, with_srv),
                }
                if workload in ("local", "local-1src", "cached", "lone"):
                    servers["ceiling"] = ceiling
                for name, (port, pid) in servers.items():
                    result = measure(
                        port,
                        queries[workload],
                        args.duration,
                        sources,
                        pid,
                        warm=workload != "miss",
                        once=workload == "miss",
                    )
                    rows.append((workload, name, result))
                    print(
                        f"{workload:7} {name:8} qps={result.qps:9.0f} avg={result.avg_ms:6.3f}ms "
                        f"p99={result.p99_ms:6.3f}ms lost={result.lost * 100:.2f}% cpu={result.cpu_us:.1f}us/q",
                        flush=True,
                    )
                for peer in ("dnsmasq", "unbound"):
                    procs.stop(servers[peer][1])
            if "churn" in wanted:
                import threading

                stop = threading.Event()

                def tick() -> None:
                    for _ in churn(data, metadata_proc, args.duration + 10):
                        if stop.wait(1.0):
                            return

                ticker = threading.Thread(target=tick, daemon=True)
                ticker.start()
                result = measure(metadns_port, queries["churn"], args.duration, SOURCES, metadns_pid)
                stop.set()
                ticker.join()
                rows.append(("churn", "metadns", result))
                print(
                    f"churn   metadns  qps={result.qps:9.0f} avg={result.avg_ms:6.3f}ms "
                    f"p99={result.p99_ms:6.3f}ms lost={result.lost * 100:.2f}%",
                    flush=True,
                )
        finally:
            procs.stop_all()
    print()
    print(table(rows))


def table(rows: list[tuple[str, str, Result]]) -> str:
    """The markdown table for bench/RESULTS.md: QPS, ratios, p99 and loss per workload."""
    by = {(w, n): r for w, n, r in rows}

    def qps(r: Result | None) -> str:
        return f"{r.qps:,.0f}" if r else "-"

    def ratio(m: Result, r: Result | None) -> str:
        return f"{m.qps / r.qps:.2f}x" if r and r.qps else "-"

    def p99(r: Result | None) -> str:
        return f"{r.p99_ms:.2f}" if r else "-"

    def cpu(r: Result | None) -> str:
        return f"{r.cpu_us:.1f}" if r else "-"

    lines = [
        "| workload | metadns qps | dnsmasq qps | unbound qps (1 core) | ceiling qps | metadns/dnsmasq | "
        "metadns/unbound | metadns/ceiling | p99 ms metadns / dnsmasq / unbound | "
        "CPU us/query metadns / dnsmasq / unbound / ceiling | lost metadns |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for workload in WORKLOADS:
        m = by.get((workload, "metadns"))
        if m is None:
            continue
        d, u, c = by.get((workload, "dnsmasq")), by.get((workload, "unbound")), by.get((workload, "ceiling"))
        lines.append(
            f"| {workload} | {qps(m)} | {qps(d)} | {qps(u)} | {qps(c)} | {ratio(m, d)} | {ratio(m, u)} | "
            f"{ratio(m, c)} | {p99(m)} / {p99(d)} / {p99(u)} | {cpu(m)} / {cpu(d)} / {cpu(u)} / {cpu(c)} | "
            f"{m.lost * 100:.2f}% |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
