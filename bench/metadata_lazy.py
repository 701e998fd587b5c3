"""The first metadata request after a fleet change, for one container: what confd,
go-rancher-metadata and scripts ask all the time. Before the tree became lazy, that request built
the whole tree of its API version.

For each path, --rounds times: the fleet file rewritten with one container moved, SIGHUP, wait
until ``/healthz`` shows the new index (it reads no tree), then the first request for the path
(timed), then the same request again (warm). The whole list ``/latest/containers`` is measured the
same way, for comparison: it still builds the whole tree, once per change.

The fleet: --containers containers on up to 1,000 hosts, 100 per service, 20 services per stack.
The service runs pinned to CPU 0 (with two CPUs or more), the client in this process.

    .venv/bin/python bench/metadata_lazy.py [--containers 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.ports import free_port  # noqa: E402  (free for both UDP and TCP)


def ip(i: int) -> str:
    return f"127.{16 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}"


def fleet(n: int, moved: int) -> dict[str, Any]:
    hosts = max(1, min(1000, n // 100))
    services = max(1, n // 100)
    stacks = max(1, services // 20)
    containers = [
        {
            "name": f"app-{i}",
            "stack_name": f"stack-{i % services % stacks}",
            "service_name": f"svc-{i % services}",
            "primary_ip": ip(i),
            "host_uuid": f"host-{i % hosts}",
            "labels": {"io.rancher.stack.name": f"stack-{i % services % stacks}", "tier": f"t{i % 7}"},
            "ports": ["8080/tcp"],
        }
        for i in range(n)
    ]
    containers[-1]["primary_ip"] = f"127.200.0.{moved % 250 + 1}"  # the change
    return {
        "hosts": [
            {"uuid": f"host-{h}", "name": f"host-{h}", "agent_ip": f"10.0.{h // 250}.{h % 250 + 1}"}
            for h in range(hosts)
        ],
        "stacks": [{"name": f"stack-{s}"} for s in range(stacks)],
        "services": [
            {"name": f"svc-{j}", "stack_name": f"stack-{j % stacks}", "ports": ["8080/tcp"]} for j in range(services)
        ],
        "containers": containers,
    }


async def start(path: Path, port: int) -> asyncio.subprocess.Process:
    def pin() -> None:
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
        "--log-level=warning",
        cwd=ROOT,
        preexec_fn=pin,
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.returncode is None:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            if (await healthz(port))["status"] == "ok":
                return proc
        await asyncio.sleep(0.1)
    raise RuntimeError("metadata service did not start")


async def healthz(port: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
        return await r.json()  # type: ignore[no-any-return]


async def timed_get(port: int, path: str, source_ip: str) -> tuple[float, bytes]:
    connector = aiohttp.TCPConnector(local_addr=(source_ip, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s:
        started = time.perf_counter()
        async with s.get(f"http://127.0.0.1:{port}{path}") as r:
            body = await r.read()
            assert r.status == 200, (path, r.status, body[:200])
        return time.perf_counter() - started, body


def write(path: Path, data: dict[str, Any]) -> None:
    """Written whole, then renamed into place: the service never reads half a file."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data))
    partial.replace(path)


async def change(proc: asyncio.subprocess.Process, path: Path, port: int, n: int, moved: int) -> None:
    before = (await healthz(port))["index"]
    write(path, fleet(n, moved))
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGHUP)
    while (await healthz(port))["index"] == before:
        await asyncio.sleep(0.02)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--containers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.containers
    asks = [
        ("/latest/self/container/name", ip(n // 2), f"app-{n // 2}"),
        (f"/latest/containers/app-{n // 3}/primary_ip", "127.0.0.1", ip(n // 3)),
        ("/latest/containers", "127.0.0.1", None),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fleet.json"
        write(path, fleet(n, 0))
        port = free_port()
        proc = await start(path, port)
        moved = 0
        try:
            print(f"| path ({n} containers) | first request after a change, ms (median, max) | warm, ms |")
            print("|---|--:|--:|")
            for url, source_ip, expected in asks:
                first, warm = [], []
                for _ in range(args.rounds):
                    moved += 1
                    await change(proc, path, port, n, moved)
                    seconds, body = await timed_get(port, url, source_ip)
                    assert expected is None or body.decode() == expected, (url, body[:200])
                    first.append(seconds * 1000)
                    warm.append((await timed_get(port, url, source_ip))[0] * 1000)
                print(
                    f"| `{url}` | {statistics.median(first):.1f} ({max(first):.1f}) | {statistics.median(warm):.1f} |",
                    flush=True,
                )
        finally:
            proc.terminate()
            await proc.wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
