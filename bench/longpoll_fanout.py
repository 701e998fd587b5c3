"""Long-poll fan-out: N idle waiters on /version, one fleet change, time until the last answer.

Starts the real metadata service as its own process (pinned to CPU 0 when there are two CPUs;
the waiters run here, pinned to CPU 1), opens N raw HTTP/1.1 long-polls, measures the server's
CPU time while they sit idle, then rewrites the fleet file, sends SIGHUP and times how long
until every waiter has its answer. Prints one line per N.

    .venv/bin/python bench/longpoll_fanout.py --waiters 1000 10000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.ports import free_port  # noqa: E402  (free for both UDP and TCP)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def long_poll(port: int, version: str, source: str) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(f"GET /version?wait=true&value={version}&maxWait=120 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")
    done = time.perf_counter()
    writer.close()
    return done


async def run_one(n: int, fleet: Path, port: int, pid: int) -> str:
    version = await current_version(port)
    sources = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(n)]
    tasks = [asyncio.create_task(long_poll(port, version, src)) for src in sources]
    async with asyncio.timeout(120):  # every request has arrived and parked
        while await waiting(port) < n:
            await asyncio.sleep(0.2)
    await asyncio.sleep(0.5)
    cpu_before, idle_start = cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(3.0)
    idle_cpu = (cpu_seconds(pid) - cpu_before) / (time.perf_counter() - idle_start)
    data = yaml.safe_load(fleet.read_text())
    data["containers"][0]["labels"] = {"bench": str(time.time())}
    fleet.write_text(yaml.safe_dump(data))
    start = time.perf_counter()
    os.kill(pid, signal.SIGHUP)
    async with asyncio.timeout(120):
        finished = await asyncio.gather(*tasks)
    first, last = min(finished) - start, max(finished) - start
    return (
        f"waiters={n:<6} first_answer_ms={first * 1000:8.1f} last_answer_ms={last * 1000:8.1f} "
        f"idle_server_cpu={idle_cpu * 100:5.2f}%"
    )


async def fetch(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    body = (await reader.read()).split(b"\r\n\r\n", 1)[1].decode()
    writer.close()
    return body


async def current_version(port: int) -> str:
    return await fetch(port, "/version")


async def waiting(port: int) -> int:
    page = await fetch(port, "/status")
    return int(page.split("<th>waiting long-polls</th><td>", 1)[1].split("<", 1)[0])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waiters", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    two_cpus = (os.cpu_count() or 1) >= 2
    if two_cpus:
        os.sched_setaffinity(0, {1})
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Path(tmp) / "fleet.yaml"
        fleet.write_text((ROOT / "examples" / "fleet.yaml").read_text())
        for n in args.waiters:
            port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "metadata_svc",
                f"--listen=127.0.0.1:{port}",
                f"--data={fleet}",
                "--state-file=",
                "--poll-interval=3600",
                "--log-level=warning",  # the default limits: what production runs
            ]
            proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT)
            if two_cpus:
                os.sched_setaffinity(proc.pid, {0})
            try:
                for _ in range(100):
                    try:
                        await current_version(port)
                        break
                    except OSError:
                        await asyncio.sleep(0.1)
                print(await run_one(n, fleet, port, proc.pid), flush=True)
            finally:
                proc.terminate()
                await proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
