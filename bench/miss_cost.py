"""CPU per cache miss of the DNS service, split into user and system time, for one or more
checkouts of metadns in one run (alternating, so the machine's drift hits each alike).

Each round starts the bench upstream (unbound) and the metadata and DNS services of one checkout
(as bench/dns_compare.py does, same pinning), sends dnsperf unique names for ``--seconds``, and
reads the DNS process's user and system time from /proc.

    .venv/bin/python bench/miss_cost.py --rounds 2 /tmp/before .
    .venv/bin/python bench/miss_cost.py --rounds 3 .:pure .    # the pure-Python and the compiled modules

A checkout written ``PATH:pure`` runs with ``METADNS_PURE_PYTHON=1`` (``dns_svc/compiled.py``).
Each checkout's services run with its own ``.venv`` when it has one (its own compiled build).

Saturated (the default), a faster build answers more queries per wake-up, which lowers its CPU
per query further; ``--paced QPS`` offers every build the same rate instead (below the slowest
one's peak), so that the figure is the cost of one miss at a given load.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def load_compare(root: Path) -> Any:
    """bench/dns_compare.py as a module, starting the services from checkout ``root``."""
    spec = importlib.util.spec_from_file_location("dns_compare", HERE / "dns_compare.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dns_compare"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    module.ROOT = root  # the services are started from this checkout
    return module


@contextlib.contextmanager
def metadns_running(b: Any) -> Iterator[tuple[int, int, dict[str, Path], Path]]:
    """The bench upstream and metadns as dns_compare starts them: (DNS port, DNS pid, the
    workloads' query files, a scratch directory), all stopped on the way out."""
    with tempfile.TemporaryDirectory() as tmp:
        data = b.make_data(Path(tmp))
        queries = b.write_queries(data)
        procs = b.Processes()
        try:
            upstream = b.start_upstream(procs, data)
            port, _metadata, pid = b.start_metadns(procs, data, upstream)
            yield port, pid, queries, Path(tmp)
        finally:
            procs.stop_all()


def measure(root: Path, seconds: float, pure: bool = False, paced: int = 0) -> tuple[float, float, float]:
    """(queries per second, user us per query, system us per query)."""
    b = load_compare(root)
    os.environ.pop("METADNS_PURE_PYTHON", None)
    if pure:  # the services started below inherit it
        os.environ["METADNS_PURE_PYTHON"] = "1"
    with metadns_running(b) as (port, pid, queries, _tmp):

        def times() -> tuple[int, int]:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return int(fields[11]), int(fields[12])

        user0, sys0 = times()
        started = time.monotonic()
        qps, _avg, _lost, _ = b.dnsperf(port, queries["miss"], seconds, 1, paced=paced, once=True)
        user1, sys1 = times()
        answered = qps * (time.monotonic() - started)
        tick = os.sysconf("SC_CLK_TCK")
        return qps, (user1 - user0) / tick / answered * 1e6, (sys1 - sys0) / tick / answered * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", help="checkouts of metadns (each with .venv), PATH:pure: pure Python")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--paced", type=int, default=0, help="queries per second to offer (0: as many as answered)")
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float, float]]] = {root: [] for root in args.roots}
    for _ in range(args.rounds):
        for root in args.roots:
            path, _, mode = root.partition(":")
            qps, user, system = measure(Path(path).resolve(), args.seconds, pure=mode == "pure", paced=args.paced)
            results[root].append((qps, user, system))
            print(f"{root}: qps={qps:.0f} user={user:.1f}us sys={system:.1f}us total={user + system:.1f}us", flush=True)
    # The mean, and the median and lowest round's total: on a shared VM a round only ever loses
    # to noise (another tenant, a slow core), so the lowest is the least disturbed one.
    print(
        "\n| checkout | QPS | user us/miss | system us/miss | total us/miss | median total | lowest total |"
        "\n|---|--:|--:|--:|--:|--:|--:|"
    )
    for root, rows in results.items():
        n = len(rows)
        qps, user, system = (sum(r[i] for r in rows) / n for i in range(3))
        totals = [r[1] + r[2] for r in rows]
        median, lowest = statistics.median(totals), min(totals)
        print(
            f"| {root} | {qps:,.0f} | {user:.1f} | {system:.1f} | {user + system:.1f} | {median:.1f} | {lowest:.1f} |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
