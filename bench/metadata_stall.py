"""The metadata service under whole-tree load, in one run: a normal request's latency idle and
while clients loop on the whole tree; whole-tree long-polls woken by one change; idle
connections under a small open-files limit.

  stall    p50/p99 of a small request (one container's IP), idle, then while --loopers clients
           fetch /latest as JSON in a loop; reported as the ratio loaded/idle.
  waiters  --waiters whole-tree blocking queries (/latest?index=N, JSON, from 10 addresses), one
           fleet change (file rewrite + SIGHUP): seconds until the last one has its answer.
  idle     the service started with RLIMIT_NOFILE 1024: --idle keep-alive connections from 20
           addresses, each idle after one request, then 50 normal requests from another address;
           how many succeed, and the refusals logged.

The service runs pinned to CPU 0 (with two CPUs or more), the clients in this process.

    .venv/bin/python bench/metadata_stall.py [--containers 1000] [--seconds 5] [--waiters 400]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.ports import free_port  # noqa: E402  (free for both UDP and TCP)


def fleet(n: int, moved: int = 0) -> dict[str, object]:
    services = 50
    containers = [
        {
            "name": f"app-{i}",
            "stack_name": "bench",
            "service_name": f"svc-{i % services}",
            "primary_ip": f"10.42.{i // 250}.{i % 250 + 1}",
            "host_uuid": "host-a",
            "labels": {"io.rancher.stack.name": "bench", "tier": f"t{i % 7}"},
            "ports": ["8080/tcp"],
        }
        for i in range(n)
    ]
    if moved:
        containers[0]["primary_ip"] = f"10.43.0.{moved}"
    return {
        "hosts": [{"uuid": "host-a", "name": "host-a", "agent_ip": "10.0.0.1"}],
        "stacks": [{"name": "bench"}],
        "services": [
            {"name": f"svc-{j}", "stack_name": "bench", "ports": ["8080/tcp"], "metadata": {"k": "v" * 40}}
            for j in range(services)
        ],
        "containers": containers,
    }


async def start(path: Path, port: int, nofile: int | None = None) -> asyncio.subprocess.Process:
    def limits() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        if (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(0, {0})

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "metadata_svc",
        f"--listen=127.0.0.1:{port}",
        f"--data={path}",
        "--state-file=",
        "--poll-interval=3600",
        "--log-level=info",
        "--max-wait=120",
        cwd=ROOT,
        preexec_fn=limits,
        stderr=asyncio.subprocess.PIPE,
    )
    async with aiohttp.ClientSession() as s:
        for _ in range(200):
            try:
                async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                    if r.status == 200:
                        return proc
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("metadata service did not start")


async def small_requests(port: int, seconds: float) -> list[float]:
    out: list[float] = []
    connector = aiohttp.TCPConnector(local_addr=("127.0.3.1", 0))
    async with aiohttp.ClientSession(connector=connector) as s:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(out) < 100_000:
            t = time.perf_counter()
            async with s.get(f"http://127.0.0.1:{port}/latest/containers/app-7/primary_ip") as r:
                await r.read()
            out.append(time.perf_counter() - t)
            await asyncio.sleep(0.005)
    return out


LOOPER = r"""
import socket, sys, time
port, k, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.4.{k + 1}", 0))
request = b"GET /latest HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n"
f = s.makefile("rb")
done, deadline = 0, time.monotonic() + seconds
while time.monotonic() < deadline and done < 100000:
    s.sendall(request)
    length = 0
    while True:
        line = f.readline()
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        if line in (b"\r\n", b""):
            break
    f.read(length)
    done += 1
print(done)
"""


async def whole_tree_loops(port: int, loopers: int, seconds: float) -> list[asyncio.subprocess.Process]:
    """Clients fetching the whole tree in a loop, in processes of their own on CPU 1: the
    measuring client must not queue behind their reads."""

    def pin() -> None:
        if (os.cpu_count() or 1) >= 2:
            os.sched_setaffinity(0, {1})

    return [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            LOOPER,
            str(port),
            str(k),
            str(seconds),
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=pin,
        )
        for k in range(loopers)
    ]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(int(len(values) * p), len(values) - 1)] * 1000


async def stall(path: Path, seconds: float, loopers: int) -> None:
    port = free_port()
    proc = await start(path, port)
    try:
        idle = await small_requests(port, seconds)
        loops = await whole_tree_loops(port, loopers, seconds + 1.0)
        await asyncio.sleep(0.5)
        loaded = await small_requests(port, seconds)
        counter = [0]
        for loop in loops:
            out, _ = await loop.communicate()
            counter[0] += int(out or 0)
        size = len(await fetch_tree(port))
        print(
            f"| stall | whole tree {size / 1e6:.1f} MB, {loopers} clients looping: {counter[0]} trees in "
            f"{seconds + 1:.1f} s | p50 idle {pct(idle, 0.5):.2f} ms, loaded {pct(loaded, 0.5):.2f} ms: "
            f"**{pct(loaded, 0.5) / pct(idle, 0.5):.2f}x** | p99 idle {pct(idle, 0.99):.2f} ms, loaded "
            f"{pct(loaded, 0.99):.2f} ms |",
            flush=True,
        )
    finally:
        proc.terminate()
        await proc.wait()


async def fetch_tree(port: int) -> bytes:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}/latest", headers={"Accept": "application/json"}) as r,
    ):
        return await r.read()


WAITER = r"""
import selectors, socket, sys, time
port, index, count, first, gz = (int(x) for x in sys.argv[1:6])
extra = "Accept-Encoding: gzip\r\n" if gz else ""
request = (f"GET /latest?index={index}&maxWait=120 HTTP/1.1\r\nHost: x\r\n{extra}"
           "Accept: application/json\r\nConnection: close\r\n\r\n").encode()
sel = selectors.DefaultSelector()
scratch = memoryview(bytearray(1 << 20))
state = {}
for k in range(count):
    s = socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.5.{first + k % 10}", 0))
    s.sendall(request)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    state[s] = [b"", None, 0]  # head so far, body length, body bytes read
stamps = []
deadline = time.monotonic() + 300
while state and time.monotonic() < deadline:
    for key, _ in sel.select(1):
        s = key.fileobj
        st = state[s]
        n = s.recv_into(scratch)
        if st[1] is None:
            st[0] += bytes(scratch[:n])
            if b"\r\n\r\n" in st[0]:
                head, _, rest = st[0].partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200") and (b"gzip" in head) == bool(gz), head[:200]
                lengths = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
                st[1] = int(lengths[0].split(b":")[1])
                st[2] = len(rest)
        else:
            st[2] += n
        if (st[1] is not None and st[2] >= st[1]) or n == 0:
            assert st[1] is not None and st[2] == st[1] and st[1] > 1000
            stamps.append(time.monotonic())
            sel.unregister(s)
            s.close()
            del state[s]
print(min(stamps), max(stamps))
"""


async def waiters(path: Path, n: int, containers: int, gz: bool) -> None:
    """Whole-tree blocking queries from four client processes (one process reading 1 GB of
    answers would measure itself, not the service)."""
    port = free_port()
    proc = await start(path, port)
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/latest/version") as r:
            index = int((await r.text()).split("-")[0])
        clients = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                WAITER,
                str(port),
                str(index),
                str(n // 4),
                str(1 + 10 * k),
                str(int(gz)),
                stdout=asyncio.subprocess.PIPE,
            )
            for k in range(4)
        ]
        await asyncio.sleep(3.0)  # all of them waiting
        assert proc.pid is not None
        cpu_before = cpu_seconds(proc.pid)
        path.write_text(yaml.safe_dump(fleet(containers, moved=1)))
        changed = time.monotonic()
        os.kill(proc.pid, signal.SIGHUP)
        stamps = [[float(x) for x in (await c.communicate())[0].split()] for c in clients]
        first, last = min(s[0] for s in stamps), max(s[1] for s in stamps)
        cpu = cpu_seconds(proc.pid) - cpu_before
        how = "gzip (as Go's HTTP client asks)" if gz else "uncompressed"
        print(
            f"| waiters | {n // 4 * 4} whole-tree blocking queries, {how}, one change | last answered "
            f"**{last - changed:.2f} s** after the change (first {first - changed:.2f} s) | service CPU "
            f"{cpu:.2f} s |",
            flush=True,
        )
    finally:
        path.write_text(yaml.safe_dump(fleet(containers)))
        proc.terminate()
        await proc.wait()


async def idle_connections(path: Path, n: int) -> None:
    port = free_port()
    proc = await start(path, port, nofile=1024)
    held: list[socket.socket] = []
    try:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"  # one request, then idle keep-alive
        for i in range(n):
            s = socket.socket()
            s.bind((f"127.0.6.{1 + i % 20}", 0))
            s.settimeout(2)
            with contextlib.suppress(OSError):
                s.connect(("127.0.0.1", port))
                s.sendall(request)
                s.recv(4096)
            held.append(s)
        await asyncio.sleep(1.5)
        ok = 0
        connector = aiohttp.TCPConnector(local_addr=("127.0.7.1", 0), force_close=True)
        async with aiohttp.ClientSession(connector=connector) as s:
            for _ in range(50):
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"http://127.0.0.1:{port}/latest/containers/app-7/primary_ip") as r:
                        ok += r.status == 200
    finally:
        for s in held:
            s.close()
        proc.terminate()
        await proc.wait()
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    print(
        f"| idle | RLIMIT_NOFILE 1024, {n} idle connections from 20 addresses | {ok}/50 normal requests "
        f"answered | refusals logged: {log.count('event=connection_refused')} line(s) |",
        flush=True,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--loopers", type=int, default=4)
    parser.add_argument("--waiters", type=int, default=400)
    parser.add_argument("--idle", type=int, default=1100)
    parser.add_argument("--only", default="stall,waiters,idle")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    wanted = args.only.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fleet.yaml"
        path.write_text(yaml.safe_dump(fleet(args.containers)))
        print(f"| case ({args.containers} containers) | setup | result | |\n|---|---|---|---|")
        if "stall" in wanted:
            await stall(path, args.seconds, args.loopers)
        if "waiters" in wanted:
            for gz in (False, True):
                await waiters(path, args.waiters, args.containers, gz)
        if "idle" in wanted:
            await idle_connections(path, args.idle)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
