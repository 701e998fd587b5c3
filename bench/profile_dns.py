"""Where the DNS service's CPU goes per query, by layer: ``perf record`` on the server process
while dnsperf runs one workload of bench/dns_compare.py (same data, same pinning), the samples
split by where they fell and scaled to the measured CPU per query.

    .venv/bin/python bench/profile_dns.py --only cached,miss          # the build in use
    METADNS_PURE_PYTHON=1 .venv/bin/python bench/profile_dns.py       # the pure-Python modules

Layers: the kernel (sockets, epoll, waking the peer), the interpreter (libpython: bytecode, object
allocation, dict and bytes operations called from Python or from compiled code), the compiled
metadns modules (mypyc's library), uvloop/libuv, libc, and the rest. Needs perf (Debian:
linux-perf) and root or perf_event_paranoid <= 1.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from miss_cost import load_compare, metadns_running  # noqa: E402

LAYERS = ("kernel", "interpreter", "compiled metadns", "uvloop/libuv", "libc", "other")


def layer_of(dso: str) -> str:
    if dso.startswith("[kernel"):
        return "kernel"
    if "__mypyc" in dso:  # mypyc's one library holds the code of every compiled module
        return "compiled metadns"
    if dso.startswith("loop.cpython") or "libuv" in dso:
        return "uvloop/libuv"
    if "libpython" in dso or dso.startswith("python3") or ".cpython-" in dso:  # the stdlib's C modules too
        return "interpreter"
    if dso.startswith(("libc.so", "libc-", "ld-linux")):
        return "libc"
    return "other"


def profile(b: Any, workload: str, seconds: float) -> tuple[float, float, dict[str, float], list[tuple[str, float]]]:
    """(QPS, CPU us per query, us per query per layer, the top symbols in us per query)."""
    with metadns_running(b) as (port, pid, queries, tmp):
        once = workload == "miss"
        if not once:
            b.dnsperf(port, queries[workload], 120, 1, once=True)  # warm every cache
        result: dict[str, float] = {}

        def load() -> None:
            qps, _avg, _lost, _ = b.dnsperf(port, queries[workload], seconds, 1, once=once)
            result["qps"] = qps

        cpu_before, started = b.cpu_seconds(pid), time.monotonic()
        runner = threading.Thread(target=load)
        runner.start()
        time.sleep(min(1.0, seconds / 4))
        out = tmp / "perf.data"
        subprocess.run(
            ["perf", "record", "-q", "-F", "2000", "-p", str(pid), "-o", str(out), "--", "sleep", str(seconds / 2)],
            check=True,
            capture_output=True,
        )
        runner.join()
        elapsed = time.monotonic() - started
        cpu_us = (b.cpu_seconds(pid) - cpu_before) / max(result["qps"] * elapsed, 1) * 1e6
        report = subprocess.run(
            ["perf", "report", "-i", str(out), "--no-children", "--sort", "dso,sym", "--stdio", "-q", "-t", "\t"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    layers: dict[str, float] = collections.defaultdict(float)
    symbols: list[tuple[str, float]] = []
    for line in report.splitlines():
        parts = [p.strip() for p in line.split("\t") if p.strip()]
        if len(parts) < 3 or not parts[0].endswith("%"):
            continue
        share = float(parts[0].rstrip("%")) / 100
        dso, sym = parts[1], parts[2]
        layers[layer_of(dso)] += share * cpu_us
        symbols.append((f"{sym} ({dso})", share * cpu_us))
    return result["qps"], cpu_us, dict(layers), symbols[:15]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="cached,miss")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    if shutil.which("perf") is None:
        sys.exit("profile_dns: perf is not installed")
    b = load_compare(HERE.parent)
    mode = "pure Python" if os.environ.get("METADNS_PURE_PYTHON") else "the build in use"
    print(f"| workload ({mode}) | QPS | CPU us/query | " + " | ".join(LAYERS) + " |")
    print("|---|--:|--:|" + "--:|" * len(LAYERS))
    tops = []
    for workload in args.only.split(","):
        qps, cpu_us, layers, symbols = profile(b, workload, args.seconds)
        cells = " | ".join(f"{layers.get(layer, 0.0):.1f}" for layer in LAYERS)
        print(f"| {workload} | {qps:,.0f} | {cpu_us:.1f} | {cells} |", flush=True)
        tops.append((workload, symbols))
    for workload, symbols in tops:
        print(f"\n{workload}: top symbols, us per query")
        for name, us in symbols:
            print(f"  {us:5.2f}  {name}")


if __name__ == "__main__":
    main()
