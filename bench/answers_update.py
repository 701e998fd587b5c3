"""What one container's new address costs the DNS service: the answers table updated in place
(``TableRef.update``: the table and the client caches), against today's rebuild (a new table,
compared with the old one name by name), and against working the change out from two whole
fleets (``diff_fleets``, what ``DnsServer.apply_fleet`` does with a full document). The fleets
themselves are made outside the timings: that is the metadata side's and the follower's cost.

    .venv/bin/python bench/answers_update.py --containers 10000 100000 --updates 200
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scale import fleet as fleet_data  # noqa: E402
from dns_svc.answers import answers_from_fleet  # noqa: E402
from dns_svc.replies import ClientCaches  # noqa: E402
from dns_svc.resolver import TableRef  # noqa: E402
from shared.fleet_changes import ObjectChange, diff_fleets  # noqa: E402
from shared.model import Fleet  # noqa: E402

VIEWS = 1000  # clients that asked something, so that their views are built


def moved(fleet: Fleet, index: int, ip: str) -> tuple[Fleet, ObjectChange]:
    """``fleet`` with container ``index`` at ``ip``, and that change as an ObjectChange."""
    old = fleet.containers[index]
    new = dataclasses.replace(old, primary_ip=ip)
    containers = (*fleet.containers[:index], new, *fleet.containers[index + 1 :])
    after = Fleet(fleet.environment, fleet.hosts, fleet.stacks, fleet.services, containers, fleet.digest, fleet.raw)
    return after, ObjectChange("containers", old.uuid, old, new)


def run(n: int, updates: int) -> dict[str, float]:
    fleet = Fleet.from_mapping(fleet_data(n))
    started = time.process_time()
    table = answers_from_fleet(fleet, metadata_answer=["169.254.169.250"])
    build_s = time.process_time() - started
    caches = ClientCaches(100_000)
    ref = TableRef(table, caches)
    for c in fleet.containers[:VIEWS]:
        table.view(c.primary_ip)

    update_cpu: list[float] = []
    for k in range(updates):
        index = (k * 7919) % n
        after, change = moved(fleet, index, f"10.200.{(k >> 8) & 255}.{k & 255}")
        started = time.process_time()
        ref.update(after, [change], k + 2)
        update_cpu.append(time.process_time() - started)
        fleet = after

    after, _ = moved(fleet, 1, "10.201.0.1")
    started = time.process_time()
    changes = diff_fleets(fleet, after)
    diff_s = time.process_time() - started
    assert len(changes) == 1
    started = time.process_time()
    rebuilt = answers_from_fleet(after, metadata_answer=["169.254.169.250"])
    same = rebuilt.same_answers(table)
    names = rebuilt.changed_names(table)
    rebuild_s = time.process_time() - started
    assert not same
    assert names is not None
    return {
        "containers": n,
        "names": len(table.records),
        "build_s": build_s,
        "update_median_ms": statistics.median(update_cpu) * 1e3,
        "update_p99_ms": sorted(update_cpu)[int(len(update_cpu) * 0.99) - 1] * 1e3,
        "diff_fleets_ms": diff_s * 1e3,
        "rebuild_compare_ms": rebuild_s * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--containers", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--updates", type=int, default=200)
    args = parser.parse_args()
    print("| containers | owner names | update in place, CPU median / p99 | diff_fleets | rebuild + compare |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.containers:
        r = run(n, args.updates)
        print(
            f"| {n:,} | {int(r['names']):,} | {r['update_median_ms']:.3f} / {r['update_p99_ms']:.3f} ms "
            f"| {r['diff_fleets_ms']:.0f} ms | {r['rebuild_compare_ms']:.0f} ms |",
            flush=True,
        )


if __name__ == "__main__":
    main()
