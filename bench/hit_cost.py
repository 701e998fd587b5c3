"""The CPU of one packet-cache hit in process, without the kernel: ``Resolver.fast_packet`` on a
query seen before, called in a loop (the best of seven rounds of 300,000). The socket costs are
the same for every build; this is the part of a hit the Python side decides, measured with far
less noise than a dnsperf run on a shared machine.

    .venv/bin/python bench/hit_cost.py                       # the build in use
    /tmp/before/.venv/bin/python bench/hit_cost.py           # another checkout's build (run it from there)
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dns_svc import compiled  # noqa: E402
from dns_svc.server import DnsServer  # noqa: E402
from dns_svc.settings import DnsSettings  # noqa: E402

ROUNDS = 7
CALLS = 300_000


def query(qid: int) -> bytes:
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\x03web\x07rancher\x08internal\x00\x00\x01\x00\x01"


async def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    answers = {"authoritative": ["rancher.internal"], "a": {"web.rancher.internal.": {"answer": ["10.1.0.1"]}}}
    (tmp / "answers.json").write_text(json.dumps({"default": answers}))
    server = DnsServer(DnsSettings(host="127.0.0.1", port=0, state_file="", answers=str(tmp / "answers.json")))
    await server.start()
    try:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.bind(("127.0.0.1", 0))
            for qid in range(3):  # the chain once, then the packet cache
                sock.sendto(query(qid), server.address)
                await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
        resolver = server.resolver
        data = query(77)
        clock = time.perf_counter
        fast_packet = cast(Any, resolver).fast_packet  # older builds read the resolver's clock inside
        try:
            fast_packet(data, "127.0.0.1", clock(), resolver.clock())
            with_now = True
        except TypeError:
            with_now = False
        best = float("inf")
        for _ in range(ROUNDS):
            started = time.process_time()
            if with_now:
                now = resolver.clock()
                for _ in range(CALLS):
                    fast_packet(data, "127.0.0.1", clock(), now)
            else:
                for _ in range(CALLS):
                    fast_packet(data, "127.0.0.1", clock())
            best = min(best, (time.process_time() - started) / CALLS * 1e6)
        print(f"compiled={compiled.in_use()} packet-cache hit: {best:.3f} us")
    finally:
        await server.close()


if __name__ == "__main__":
    asyncio.run(main())
