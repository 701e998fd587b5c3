"""End to end with real memcached servers (Debian's memcached on 127.0.0.6x:11211): a sharded
pool rendered from the fleet, and a small consistent-hashing client built from the rendered
list puts every key on the server the hash picks, and finds it there."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from consumers.render.command import RenderLoop, RenderSettings
from tests.support.metadata import run_metadata
from tests.support.tools import require_tool

MEMCACHED_IPS = ("127.0.0.61", "127.0.0.62", "127.0.0.63")


class Ring:
    """Ketama-style consistent hashing over a server list (160 points per server)."""

    def __init__(self, servers: list[str]) -> None:
        points = sorted(
            (int(hashlib.md5(f"{s}-{i}".encode()).hexdigest()[:8], 16), s) for s in servers for i in range(160)
        )
        self.hashes = [h for h, _ in points]
        self.servers = [s for _, s in points]

    def server(self, key: str) -> str:
        h = int(hashlib.md5(key.encode()).hexdigest()[:8], 16)
        return self.servers[bisect.bisect(self.hashes, h) % len(self.hashes)]


async def memcached(server: str, command: bytes) -> bytes:
    host, port = server.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(command)
        await writer.drain()
        out = b""
        while not out.endswith((b"STORED\r\n", b"END\r\n", b"ERROR\r\n")):
            chunk = await reader.read(4096)
            if not chunk:
                break
            out += chunk
        return out
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def memcached_servers() -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    binary = require_tool("memcached", "/usr/bin/memcached")
    procs = [
        subprocess.Popen([binary, "-l", ip, "-p", "11211", "-U", "0", "-u", "nobody", "-m", "16"])
        for ip in MEMCACHED_IPS
    ]
    try:
        async with asyncio.timeout(10):
            for ip in MEMCACHED_IPS:
                while True:
                    try:
                        await memcached(f"{ip}:11211", b"get ready\r\n")
                        break
                    except OSError:
                        await asyncio.sleep(0.05)
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


async def test_sharded_pool_client_hits_the_right_servers(tmp_path: Path) -> None:
    fleet = {
        "stacks": [{"name": "infra"}],
        "services": [{"name": "memc", "stack_name": "infra", "ports": ["11211/tcp"]}],
        "containers": [
            {
                "name": f"memc-{i}",
                "stack_name": "infra",
                "service_name": "memc",
                "primary_ip": ip,
                "service_index": str(i + 1),
            }
            for i, ip in enumerate(reversed(MEMCACHED_IPS))
        ],
    }
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(fleet))
    async with memcached_servers(), run_metadata(fleet_file) as md:
        output = tmp_path / "mcrouter.json"
        settings = RenderSettings(
            output=str(output),
            pool_setup="sharded",
            servers="metadata://infra/memc",
            metadata_url=f"{md.url}/2016-07-29",
            once=True,
        )
        assert await RenderLoop(settings).run() == 0
        config = json.loads(output.read_text())
        assert config["route"] == "PoolRoute|A"
        pool = config["pools"]["A"]["servers"]
        # stable order: by service index, whatever order the fleet lists them in
        assert pool == [f"{ip}:11211" for ip in reversed(MEMCACHED_IPS)]
        ring = Ring(pool)
        keys = [f"user:{i}" for i in range(300)]
        for key in keys:
            value = key.encode()
            reply = await memcached(ring.server(key), b"set %s 0 0 %d\r\n%s\r\n" % (key.encode(), len(value), value))
            assert reply == b"STORED\r\n"
        placed: dict[str, int] = dict.fromkeys(pool, 0)
        for key in keys:
            for server in pool:
                found = (await memcached(server, f"get {key}\r\n".encode())).startswith(b"VALUE")
                assert found == (server == ring.server(key)), (key, server)
                placed[server] += found
        assert all(count > 30 for count in placed.values())  # every server holds its share
        # the same fleet renders the same pool, so the ring and every key's place stay put
        assert await RenderLoop(settings).run() == 0
        assert json.loads(output.read_text())["pools"]["A"]["servers"] == pool


pytestmark = [pytest.mark.external_tool, pytest.mark.filterwarnings("ignore::ResourceWarning")]
