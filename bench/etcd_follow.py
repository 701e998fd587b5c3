"""The fleet in etcd: how fast a write reaches every host's DNS answers, what a follower costs,
and how long ``metadns fleet apply`` takes for a big fleet. One etcd member on loopback.

  latency  --followers metadata services (each with its DNS service) follow one prefix; one
           container's address is changed at 1, 10 and 100 changes/s for --seconds; for sampled
           changes (at most 10 per second), the time from the write until every DNS service
           answers the new address: median and p99.
  cost     CPU and RSS of one follower (metadata service) idle, and during the 100 changes/s run.
  apply    ``metadns fleet apply`` of --containers 10000 and 50000 (new fleet, then one change).

    .venv/bin/python bench/etcd_follow.py [--followers 10] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.etcd import EtcdClient, EtcdEndpoints  # noqa: E402
from shared.etcd_fleet import fleet_keys  # noqa: E402
from shared.model import Fleet  # noqa: E402
from tests.support.ports import free_ports  # noqa: E402  (free for both UDP and TCP)

PREFIX = "/metadns/bench/"


def fleet(n: int) -> dict[str, object]:
    return {
        "hosts": [{"uuid": f"h{k}", "name": f"h{k}"} for k in range(10)],
        "stacks": [{"name": "bench"}],
        "services": [{"name": f"svc-{j}", "stack_name": "bench", "ports": ["80/tcp"]} for j in range(50)],
        "containers": [
            {
                "name": f"app-{i}",
                "uuid": f"u{i}",
                "stack_name": "bench",
                "service_name": f"svc-{i % 50}",
                "primary_ip": f"10.{40 + i // 65536}.{i // 256 % 256}.{i % 256}",
                "host_uuid": f"h{i % 10}",
            }
            for i in range(n)
        ],
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def query(name: str) -> bytes:
    wire = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + wire + b"\x00\x01\x00\x01"


def answer_ip(sock: socket.socket, port: int, packet: bytes) -> str:
    sock.sendto(packet, ("127.0.0.1", port))
    try:
        reply = sock.recv(512)
    except OSError:
        return ""
    return socket.inet_ntoa(reply[-4:]) if reply[7] else ""


async def main() -> None:  # noqa: C901 (one linear script: start, measure, report)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--followers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--containers", type=int, nargs="+", default=[10000, 50000])
    parser.add_argument("--fleet", type=int, default=1000, help="containers in the fleet for the latency runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        client_port, peer_port = free_ports(2)
        etcd = subprocess.Popen(
            [
                "etcd",
                "--name",
                "b",
                "--data-dir",
                str(work / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{client_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{client_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"b=http://127.0.0.1:{peer_port}",
                "--experimental-watch-progress-notify-interval",
                "5s",
                "--quota-backend-bytes",
                str(4 << 30),
                "--log-level",
                "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs: list[subprocess.Popen[bytes]] = []
        client = EtcdClient(EtcdEndpoints.parse(f"127.0.0.1:{client_port}"))
        try:
            for _ in range(100):
                with contextlib.suppress(Exception):
                    await client.range(b"x")
                    break
                await asyncio.sleep(0.1)
            print("| fleet apply | containers | seconds | keys written |\n|---|--:|--:|--:|")
            for n in args.containers:
                path = work / f"fleet-{n}.yaml"
                data = fleet(n)
                path.write_text(yaml.safe_dump(data))
                for what in ("new", "one change"):
                    if what == "one change":
                        data["containers"][0]["primary_ip"] = "10.99.0.1"  # type: ignore[index]
                        path.write_text(yaml.safe_dump(data))
                    started = time.monotonic()
                    out = subprocess.run(
                        [
                            sys.executable,
                            "-m",
                            "consumers",
                            "fleet",
                            "apply",
                            "--etcd",
                            f"127.0.0.1:{client_port}",
                            "--prefix",
                            f"/metadns/apply{n}/",
                            str(path),
                        ],
                        capture_output=True,
                        text=True,
                        cwd=ROOT,
                        check=True,
                    )
                    elapsed = time.monotonic() - started
                    print(f"| {what} | {n:,} | {elapsed:.1f} | {len(out.stdout.splitlines()):,} |", flush=True)
            base = Fleet.from_mapping(fleet(args.fleet))
            keys = fleet_keys(base)
            ops = [{"request_put": {"key": _b64(PREFIX + k), "value": _b64(v)}} for k, v in keys.items()]
            for start in range(0, len(ops), 128):
                await client.txn([], ops[start : start + 128])
            dns_ports = []
            for _ in range(args.followers):
                md_port, dns_port = free_ports(2)
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "metadata_svc",
                            f"--listen=127.0.0.1:{md_port}",
                            f"--source=etcd://127.0.0.1:{client_port}{PREFIX}",
                            "--state-file=",
                            "--log-level=warning",
                        ],
                        cwd=ROOT,
                    )
                )
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "dns_svc",
                            f"--listen=127.0.0.1:{dns_port}",
                            f"--metadata-url=http://127.0.0.1:{md_port}/2016-07-29",
                            "--state-file=",
                            "--log-level=warning",
                            "--resolv-conf=/nonexistent",
                            "--gc-freeze-interval=0",
                        ],
                        cwd=ROOT,
                    )
                )
                dns_ports.append(dns_port)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(0.5)
            name = query("app-0.rancher.internal")
            first = base.raw["containers"][0]
            for port in dns_ports:
                for _ in range(200):
                    if answer_ip(sock, port, name) == first["primary_ip"]:
                        break
                    await asyncio.sleep(0.1)
            follower = procs[0].pid
            await asyncio.sleep(2)
            c0, t0 = cpu_s(follower), time.monotonic()
            await asyncio.sleep(args.seconds)
            idle_cpu = (cpu_s(follower) - c0) / (time.monotonic() - t0) * 100
            idle_rss = rss_mb(follower)
            print("\n| changes/s | sampled changes | write -> every DNS answers: median ms | p99 ms |")
            print("|--:|--:|--:|--:|")
            key = PREFIX + f"containers/{first['host_uuid']}/{first['uuid']}"
            busy = ""
            for rate in (1, 10, 100):
                latencies: list[float] = []
                c0, t0 = cpu_s(follower), time.monotonic()
                count = int(rate * args.seconds)
                sample_every = max(rate // 10, 1)
                for i in range(count):
                    due = t0 + i / rate
                    await asyncio.sleep(max(due - time.monotonic(), 0))
                    ip = f"10.200.{i // 250 % 250}.{i % 250 + 1}"
                    written = time.monotonic()
                    await client.put(key.encode(), _json({**first, "primary_ip": ip}))
                    if i % sample_every:
                        continue
                    pending = set(dns_ports)
                    while pending and time.monotonic() - written < 5:
                        pending = {p for p in pending if answer_ip(sock, p, name) != ip}
                    if not pending:
                        latencies.append(time.monotonic() - written)
                cpu = (cpu_s(follower) - c0) / (time.monotonic() - t0) * 100
                latencies.sort()
                p99 = latencies[min(int(len(latencies) * 0.99), len(latencies) - 1)] * 1000 if latencies else 0
                median = statistics.median(latencies) * 1000 if latencies else 0
                print(f"| {rate} | {len(latencies)} | {median:.0f} | {p99:.0f} |", flush=True)
                if rate == 100:
                    busy = f"{cpu:.0f}% CPU, {rss_mb(follower):.0f} MB RSS"
            print(
                f"\nOne follower (metadata service, {args.fleet} containers): idle {idle_cpu:.1f}% CPU, "
                f"{idle_rss:.0f} MB RSS; at 100 changes/s {busy}."
            )
        finally:
            await client.close()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
            etcd.terminate()
            etcd.wait(10)


def _b64(text: str | bytes) -> str:
    import base64

    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _json(obj: object) -> bytes:
    import json

    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
