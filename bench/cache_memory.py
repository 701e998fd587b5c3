"""Memory of the DNS caches under one bound: --clients clients, each with --per-client local
answers in its own partition, plus upstream answers, all in one ``ReplyStore`` of --capacity
entries. Reports the entries kept and the bytes they hold (tracemalloc), so the bound can be
turned into a memory figure.

    .venv/bin/python bench/cache_memory.py [--capacity 100000] [--clients 10000] [--per-client 1000]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

from dnslib import RR, A, DNSRecord

from dns_svc.replies import NOT_LOCAL, CachedReply, ClientCaches, ReplyCache, ReplyStore
from dns_svc.wire import layout


def reply(name: str, addresses: int) -> bytes:
    r = DNSRecord.question(name).reply()
    for i in range(addresses):
        r.add_answer(RR(name, 1, ttl=1, rdata=A(f"10.42.{i // 250}.{i % 250 + 1}")))
    return bytes(r.pack())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--per-client", type=int, default=1000)
    args = parser.parse_args()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    store = ReplyStore(args.capacity)
    caches = ClientCaches(store)
    upstream = ReplyCache(store=store, stale_for=86400)
    wires = [reply(f"svc-{i}.stack.rancher.internal", 1 + i % 4) for i in range(256)]
    started = time.perf_counter()
    puts = 0
    for client in range(args.clients):
        view = caches.for_view(f"10.42.{client // 250}.{client % 250 + 1}")
        for k in range(args.per_client):
            key = (f"name-{k}.rancher.internal".encode(), 1, 1, 0)
            if k % 4 == 3:
                view.put(key, NOT_LOCAL)
            else:
                wire = wires[(client + k) % len(wires)]
                view.put(key, CachedReply(wire, layout(wire), 0.0, 1e9, False))
            puts += 1
            if puts % 10 == 0:
                ukey = (f"u{puts}.example.com".encode(), 1, 1, 0)
                wire = wires[puts % len(wires)]
                upstream.put(ukey, CachedReply(wire, layout(wire), 0.0, 300.0, True))
    elapsed = time.perf_counter() - started
    used = tracemalloc.get_traced_memory()[0] - before
    kept = len(store)
    print(
        f"| {args.clients:,} clients x {args.per_client:,} answers asked, + upstream | {puts:,} puts | "
        f"{kept:,} entries kept (bound {args.capacity:,}), {store.evictions:,} evicted | "
        f"{used / 1e6:.1f} MB, {used / max(kept, 1):.0f} B per entry | {puts / elapsed / 1000:.0f}k puts/s |"
    )


if __name__ == "__main__":
    main()
