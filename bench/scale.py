"""How the data side grows with the fleet: validation, answers-table rebuild, metadata tree
size, and resident memory with a full reply cache. Each size runs in a fresh process so its
memory figure is its own.

    .venv/bin/python bench/scale.py --containers 1000 10000 50000 --cache-entries 100000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def fleet(n: int) -> dict[str, Any]:
    per_service = 20
    services = max(n // per_service, 1)
    return {
        "hosts": [{"uuid": f"host-{h}", "name": f"host-{h}", "agent_ip": f"192.168.0.{h + 1}"} for h in range(50)],
        "stacks": [{"name": f"stack-{s}"} for s in range(max(services // 10, 1))],
        "services": [
            {
                "name": f"svc-{j}",
                "stack_name": f"stack-{j // 10}",
                "ports": ["80/tcp"],
                "links": {f"stack-{j // 10}/svc-{(j + 1) % services}": "next"} if (j + 1) // 10 == j // 10 else {},
            }
            for j in range(services)
        ],
        "containers": [
            {
                "name": f"c-{i}",
                "stack_name": f"stack-{(i % services) // 10}",
                "service_name": f"svc-{i % services}",
                "host_uuid": f"host-{i % 50}",
                "primary_ip": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
                "dns_search": [f"stack-{(i % services) // 10}.rancher.internal"],
            }
            for i in range(n)
        ],
    }


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 1e6


def dns_memory(n: int, cache_entries: int) -> dict[str, Any]:
    """What a DNS process holds: the fleet rebuilt from the compact document, the answers table,
    1,000 client views and a full reply cache. Measured in a process that builds nothing else."""
    import gc

    from dnslib import RR, DNSRecord

    from dns_svc.answers import answers_from_fleet
    from dns_svc.chain import Answer, Source
    from dns_svc.replies import ReplyCache
    from dns_svc.steps.cache.step import entry_for
    from shared.model import Fleet

    doc = json.dumps({"fleet": Fleet.from_mapping(fleet(n)).raw})
    gc.collect()
    start = current_rss_mb()
    f = Fleet.from_trusted(json.loads(doc)["fleet"], "x")
    del doc
    table = answers_from_fleet(f, metadata_answer=["169.254.169.250"])
    for i in range(0, n, max(n // 1000, 1)):
        table.view(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}")
    q = DNSRecord.question("name.example.test", "A")
    reply = q.reply()
    reply.add_answer(*RR.fromZone("name.example.test. 300 IN A 192.0.2.1"))
    wire = bytes(reply.pack())
    cache = ReplyCache(cache_entries)
    for i in range(cache_entries):
        stored = entry_for(Answer(wire, Source.UPSTREAM), 0.0, 3600, 2)
        assert stored is not None
        cache.put((f"\x04n{i:07d}\x07example\x04test\x00".encode(), 1, 1, 0), stored)
    gc.collect()
    return {
        "dns_rss_mb": round(current_rss_mb(), 1),
        "dns_data_mb": round(current_rss_mb() - start, 1),
        "cache_entries": len(cache),
        "table_names": len(table.records),
    }


def one(n: int, cache_entries: int) -> dict[str, Any]:
    from dnslib import RR, DNSRecord

    from dns_svc.answers import answers_from_fleet
    from dns_svc.chain import Answer, Source
    from dns_svc.replies import ReplyCache
    from dns_svc.steps.cache.step import entry_for
    from metadata_svc.tree import TreeBuilder
    from shared.model import Fleet

    data = fleet(n)
    base = rss_mb()
    t0 = time.perf_counter()
    f = Fleet.from_mapping(data)
    t1 = time.perf_counter()
    rebuilds = []  # three runs: one on this VM can be twice another (collector, neighbours)
    for _ in range(3):
        started = time.perf_counter()
        table = answers_from_fleet(f, metadata_answer=["169.254.169.250"])
        rebuilds.append(time.perf_counter() - started)
    rebuilds.sort()
    t2 = time.perf_counter()
    for i in range(0, n, max(n // 1000, 1)):  # client views are built on first query
        table.view(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}")
    t3 = time.perf_counter()
    tree_new = TreeBuilder(f, "2016-07-29", "1-x", "").default_tree()
    json_new = json.dumps(tree_new)
    t4 = time.perf_counter()
    del tree_new
    fleet_doc = json.dumps({"fleet": f.raw}, separators=(",", ":"))
    refresh_start = time.perf_counter()  # what the DNS service does on a change
    again = Fleet.from_trusted(json.loads(fleet_doc)["fleet"], "x")
    new_table = answers_from_fleet(again, metadata_answer=["169.254.169.250"])
    same = new_table.same_answers(table)
    refresh = time.perf_counter() - refresh_start
    assert same
    cache = ReplyCache(cache_entries)
    q = DNSRecord.question("name.example.test", "A")
    reply = q.reply()
    reply.add_answer(*RR.fromZone("name.example.test. 300 IN A 192.0.2.1"))
    wire = bytes(reply.pack())
    for i in range(cache_entries):
        stored = entry_for(Answer(wire, Source.UPSTREAM), 0.0, 3600, 2)
        assert stored is not None
        cache.put((f"\x04n{i:07d}\x07example\x04test\x00".encode(), 1, 1, 0), stored)
    return {
        "containers": n,
        "validate_ms": round((t1 - t0) * 1000, 1),
        "answers_ms": round(rebuilds[1] * 1000, 1),
        "answers_range": f"{rebuilds[0] * 1000:.0f}-{rebuilds[2] * 1000:.0f}",
        "views_1000_ms": round((t3 - t2) * 1000, 1),
        "tree_2016_ms": round((t4 - t3) * 1000, 1),
        "tree_2016_mb": round(len(json_new) / 1e6, 1),
        "fleet_doc_mb": round(len(fleet_doc) / 1e6, 1),
        "dns_refresh_ms": round(refresh * 1000, 1),
        "cache_entries": cache_entries,
        "rss_start_mb": round(base, 1),
        "rss_peak_mb": round(rss_mb(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--containers", type=int, nargs="+", default=[1000, 10000, 50000])
    parser.add_argument("--cache-entries", type=int, default=100000)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-dns", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.cache_entries)))
        return
    if args.one_dns:
        print(json.dumps(dns_memory(args.one_dns, args.cache_entries)))
        return
    print(
        "| containers | validate | answers rebuild (median of 3, range) | 1,000 client views | tree 2016-07-29 |"
        " JSON: tree / fleet doc |"
        " DNS refresh on change | DNS process RSS (its data) |"
    )
    print("|--:|--:|--:|--:|--:|--:|--:|--:|")
    for n in args.containers:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--cache-entries", str(args.cache_entries)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
        r = json.loads(out)
        mem = json.loads(
            subprocess.run(
                [sys.executable, __file__, "--one-dns", str(n), "--cache-entries", str(args.cache_entries)],
                capture_output=True,
                text=True,
                check=True,
                cwd=ROOT,
            ).stdout
        )
        print(
            f"| {n:,} | {r['validate_ms']} ms | {r['answers_ms']} ms ({r['answers_range']}) | "
            f"{r['views_1000_ms']} ms | "
            f"{r['tree_2016_ms']} ms | {r['tree_2016_mb']} / {r['fleet_doc_mb']} MB | {r['dns_refresh_ms']} ms | "
            f"{mem['dns_rss_mb']} MB ({mem['dns_data_mb']} MB, {mem['cache_entries']:,} cached replies) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
