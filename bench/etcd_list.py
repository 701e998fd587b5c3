"""A cold list of a big prefix: etcd's gRPC API (what ``shared/etcd.py`` speaks) against the JSON
gateway it replaced, in one run, on one etcd 3.4 member on loopback (the gateway is on there).

Each round lists every key under the prefix at one revision, in pages of ``--page`` pinned to
the first page's revision (what the metadata service does when it starts or lists again), from
a client made for the round (new connection, new channel):

  grpc     ``EtcdClient.list_prefix``: protobuf over HTTP/2
  gateway  the removed transport's way, kept here only: ``POST /v3/kv/range`` with aiohttp, JSON
           with base64 keys and values, each page's keys and values decoded to bytes

Reported per transport: wall time, this process's CPU time (user + system) and etcd's per
list, median and best of ``--rounds`` rounds, the two transports alternating. The objects are
container JSON as ``metadns fleet apply`` writes it (~230 bytes each).

    .venv/bin/python bench/etcd_list.py [--objects 100000] [--rounds 5] [--page 500]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.etcd import EtcdClient, EtcdEndpoints, b64, prefix_end  # noqa: E402

PREFIX = b"/metadns/bench/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_of(pid: int) -> float:
    """A process's user + system CPU seconds (etcd's: the gateway's JSON is made there)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def container(i: int) -> bytes:
    return json.dumps(
        {
            "name": f"app-{i}",
            "uuid": f"u{i}",
            "stack_name": "bench",
            "service_name": f"svc-{i % 50}",
            "primary_ip": f"10.{40 + i // 65536}.{i // 256 % 256}.{i % 256}",
            "host_uuid": f"h{i % 10}",
            "state": "running",
            "health_state": "healthy",
            "labels": {"io.metadns.bench": "yes"},
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


async def grpc_list(endpoint: str, page: int) -> int:
    async with EtcdClient(EtcdEndpoints.parse(endpoint), timeout=60) as client:
        kvs, _ = await client.list_prefix(PREFIX, page=page)
    return len(kvs)


async def gateway_list(endpoint: str, page: int) -> int:
    """The gateway client's list, as it was: paged ranges pinned to the first revision."""
    out: list[tuple[bytes, bytes, int]] = []
    start, end, revision = PREFIX, prefix_end(PREFIX), 0
    async with aiohttp.ClientSession() as session:
        while True:
            body: dict[str, object] = {"key": b64(start), "range_end": b64(end), "limit": page}
            if revision:
                body["revision"] = revision
            async with session.post(f"http://{endpoint}/v3/kv/range", data=json.dumps(body)) as r:
                doc = await r.json(content_type=None)
            kvs = [
                (base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", "")), int(kv["mod_revision"]))
                for kv in doc.get("kvs") or ()
            ]
            revision = revision or int(doc["header"]["revision"])
            out.extend(kvs)
            if not doc.get("more") or not kvs:
                return len(out)
            start = kvs[-1][0] + b"\0"


async def load(endpoint: str, n: int) -> None:
    async with EtcdClient(EtcdEndpoints.parse(endpoint), timeout=60) as client:
        for start in range(0, n, 128):
            ops = [
                {
                    "request_put": {
                        "key": b64(PREFIX + f"containers/h{i % 10}/u{i}".encode()),
                        "value": b64(container(i)),
                    }
                }
                for i in range(start, min(start + 128, n))
            ]
            await client.txn([], ops)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--page", type=int, default=500)
    parser.add_argument("--etcd", default="/usr/bin/etcd", help="the etcd binary (its gateway must be on)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        client_port, peer_port = free_port(), free_port()
        endpoint = f"127.0.0.1:{client_port}"
        etcd = subprocess.Popen(
            [
                args.etcd,
                "--name",
                "b",
                "--data-dir",
                str(Path(tmp) / "etcd"),
                "--listen-client-urls",
                f"http://{endpoint}",
                "--advertise-client-urls",
                f"http://{endpoint}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"b=http://127.0.0.1:{peer_port}",
                "--quota-backend-bytes",
                str(4 << 30),
                "--log-level",
                "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    async with EtcdClient(EtcdEndpoints.parse(endpoint)) as probe:
                        await probe.range(b"x")
                    break
                except Exception:
                    await asyncio.sleep(0.1)
            started = time.monotonic()
            await load(endpoint, args.objects)
            print(f"loaded {args.objects} objects in {time.monotonic() - started:.1f} s", file=sys.stderr)
            lists: dict[str, Callable[[str, int], Awaitable[int]]] = {"grpc": grpc_list, "gateway": gateway_list}
            wall: dict[str, list[float]] = {name: [] for name in lists}
            spent: dict[str, list[float]] = {name: [] for name in lists}
            server: dict[str, list[float]] = {name: [] for name in lists}
            for _ in range(args.rounds):
                for name, run in lists.items():
                    t0, c0, s0 = time.perf_counter(), cpu(), cpu_of(etcd.pid)
                    count = await run(endpoint, args.page)
                    wall[name].append(time.perf_counter() - t0)
                    spent[name].append(cpu() - c0)
                    server[name].append(cpu_of(etcd.pid) - s0)
                    assert count == args.objects, (name, count)
            print(f"\n{args.objects:,} objects, pages of {args.page}, {args.rounds} rounds\n")
            print(
                "| transport | wall: median | best | client CPU: median | best | etcd CPU: median | best |\n"
                "|---|--:|--:|--:|--:|--:|--:|"
            )
            for name in lists:
                print(
                    f"| {name} | {statistics.median(wall[name]):.2f} s | {min(wall[name]):.2f} s "
                    f"| {statistics.median(spent[name]):.2f} s | {min(spent[name]):.2f} s "
                    f"| {statistics.median(server[name]):.2f} s | {min(server[name]):.2f} s |"
                )
            ratio = statistics.median(wall["gateway"]) / statistics.median(wall["grpc"])
            cpu_ratio = statistics.median(spent["gateway"]) / statistics.median(spent["grpc"])
            print(f"\ngateway / grpc: wall x{ratio:.2f}, client CPU x{cpu_ratio:.2f}")
        finally:
            etcd.terminate()
            etcd.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
