"""Where a fleet change's CPU goes: one host (metadata service on etcd + DNS service following it)
in this process under cProfile, on the fleet of ``bench/fleet_scale.py``.

  cold     from start until the DNS service answers (the list, the first document, the table)
  change   ``--changes`` single-container address changes at ``--rate`` per second, until the
           DNS service has applied the last: CPU per change and the functions it went to

Both services run on one event loop here (in production they are two processes), so the
profile is of both together; the split by function says which side pays.

    .venv/bin/python bench/profile_fleet_change.py --containers 100000 [--changes 300] [--rate 100]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fleet_scale import PREFIX, fleet  # noqa: E402
from dns_svc.follower import version_index  # noqa: E402
from metadata_svc.keys import STORE  # noqa: E402
from shared.etcd import MAX_TXN_OPS, EtcdClient, EtcdEndpoints, b64  # noqa: E402
from shared.etcd_fleet import fleet_keys  # noqa: E402
from shared.model import Fleet  # noqa: E402
from tests.support.dns import run_dns, wait_for_version  # noqa: E402
from tests.support.etcd import run_etcd  # noqa: E402
from tests.support.metadata import run_metadata  # noqa: E402

WRITER = """
import asyncio, json, sys
sys.path.insert(0, ROOT_PATH)
from bench.fleet_scale import PREFIX, container
from shared.etcd import EtcdClient, EtcdEndpoints
from shared.etcd_fleet import object_key

async def main(endpoints, n, hosts, changes, rate):
    client = EtcdClient(EtcdEndpoints.parse(endpoints))
    for i in range(changes):
        obj = container(i * 7 % n, hosts)
        obj["primary_ip"] = f"10.200.{i // 250}.{i % 250 + 1}"
        key = (PREFIX + object_key("containers", obj)).encode()
        await client.put(key, json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())
        await asyncio.sleep(1 / rate)
    await client.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])))
""".replace("ROOT_PATH", repr(str(ROOT)))


def top(profile: cProfile.Profile, lines: int, key: str = "tottime") -> str:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats(key).print_stats(lines)
    text = out.getvalue()
    return text[text.find("   ncalls") :]


async def main(n: int, hosts: int, changes: int, rate: float, lines: int) -> None:
    with tempfile.TemporaryDirectory() as work, run_etcd(Path(work) / "etcd", members=1, version="3.5") as cluster:
        client = EtcdClient(EtcdEndpoints.parse(cluster.endpoints))
        keys = fleet_keys(Fleet.from_mapping(fleet(n, hosts)))
        ops = [{"request_put": {"key": b64(PREFIX.encode() + k.encode()), "value": b64(v)}} for k, v in keys.items()]
        for start in range(0, len(ops), MAX_TXN_OPS):
            await client.txn([], ops[start : start + MAX_TXN_OPS])
        profile = cProfile.Profile()
        started, cpu = time.perf_counter(), time.process_time()
        profile.enable()
        async with (
            run_metadata(Path(work) / "unused.yaml", source=f"etcd://{cluster.endpoints}{PREFIX}") as md,
            run_dns(metadata_url=f"{md.url}/2016-07-29", max_wait=30) as dns,
        ):
            await wait_for_version(dns, version_index(md.app[STORE].snapshot.version), seconds=600)
            profile.disable()
            print(f"cold: {time.perf_counter() - started:.1f} s wall, {time.process_time() - cpu:.1f} s CPU")
            print(top(profile, lines))
            # The writer is a process of its own, so that its gRPC calls are not in the profile.
            writer = await asyncio.create_subprocess_exec(
                sys.executable, "-c", WRITER, cluster.endpoints, str(n), str(hosts), str(changes), str(rate)
            )
            profile = cProfile.Profile()
            cpu = time.process_time()
            profile.enable()
            await writer.wait()
            _, revision = await client.list_prefix(PREFIX.encode() + b"environment")
            async with asyncio.timeout(60):
                while md.app[STORE].snapshot.index < revision - 1 or dns.tables.current.serial < md.app[STORE].index:
                    await asyncio.sleep(0.01)
            profile.disable()
            used = time.process_time() - cpu
            print(f"change: {used / changes * 1000:.2f} ms CPU per change, metadata + DNS ({changes} at {rate}/s)")
            print(top(profile, lines))
            print(top(profile, lines, "cumulative"))
        await client.close()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--containers", type=int, default=10000)
    p.add_argument("--fleet-hosts", type=int, default=1000)
    p.add_argument("--changes", type=int, default=300)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--lines", type=int, default=25)
    return p.parse_args()


if __name__ == "__main__":
    ns = parse()
    asyncio.run(main(ns.containers, ns.fleet_hosts, ns.changes, ns.rate, ns.lines))
