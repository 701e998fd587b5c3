"""X-Forwarded-For: believed only with --xff and only from a trusted proxy address."""

from __future__ import annotations

from pathlib import Path

from metadata_svc.identity import parse_networks
from tests.support.metadata import run_metadata


async def test_xff_from_trusted_proxy_picks_the_container(fleet_file: Path) -> None:
    async with run_metadata(fleet_file, xff=True, xff_trusted=parse_networks(["127.0.0.1/32"])) as md:
        async with md.client("127.0.0.1") as s:
            async with s.get("/latest/self/container/name", headers={"X-Forwarded-For": "127.0.0.21"}) as r:
                assert await r.text() == "shop-db-1"
            # a chain: the rightmost untrusted hop is the client
            xff = {"X-Forwarded-For": "127.0.0.31, 127.0.0.12"}
            async with s.get("/latest/self/container/name", headers=xff) as r:
                assert await r.text() == "shop-web-2"
        async with md.client("127.0.0.11") as s:  # not a trusted proxy: the header is a lie
            async with s.get("/latest/self/container/name", headers={"X-Forwarded-For": "127.0.0.21"}) as r:
                assert await r.text() == "shop-web-1"
            async with s.get("/latest/self/service/token", headers={"X-Forwarded-For": "127.0.0.21"}) as r:
                assert await r.text() == "web-secret"
