"""Long-poll on any path: at once when the value differs, on change, after maxWait; and fan-out."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import aiohttp
import yaml

from metadata_svc.keys import STORE
from tests.support.metadata import RunningMetadata, run_metadata


def move_ip(fleet_file: Path, name: str, new_ip: str) -> None:
    data = yaml.safe_load(fleet_file.read_text())
    for c in data["containers"]:
        if c["name"] == name:
            c["primary_ip"] = new_ip
    fleet_file.write_text(yaml.safe_dump(data))


async def version(md: RunningMetadata) -> str:
    async with md.client() as s, s.get("/latest/version") as r:
        return await r.text()


async def until_waiting(md: RunningMetadata, count: int = 1, after_index: int = 0) -> None:
    """Until ``count`` long-polls wait in the store (at an index past ``after_index``): a waiter
    is known to be asleep, rather than assumed so after a pause."""
    store = md.app[STORE]
    async with asyncio.timeout(10):
        while store.waiting < count or store.index <= after_index:
            await asyncio.sleep(0.01)


async def test_returns_at_once_when_value_differs(metadata: RunningMetadata) -> None:
    """A value that differs already: answered without waiting (the store never counts a waiter
    while the request is out; waiting, it would for maxWait's 30 s)."""
    store = metadata.app[STORE]
    async with metadata.client() as s:
        request = asyncio.ensure_future(s.get("/version?wait=true&value=init&maxWait=30"))
        while not request.done():
            assert store.waiting == 0
            await asyncio.sleep(0.005)
        r = await request
        assert r.status == 200
        assert await r.text() == await version(metadata)
        r.release()


async def test_returns_on_change_of_that_path(metadata: RunningMetadata, fleet_file: Path) -> None:
    path = "/latest/containers/shop-db-1/primary_ip?wait=true&value=127.0.0.21&maxWait=30"
    async with metadata.client() as s:
        waiter = asyncio.create_task(s.get(path))
        await until_waiting(metadata)
        assert not waiter.done()
        move_ip(fleet_file, "Shop-db-1", "127.0.0.22")
        async with asyncio.timeout(10):
            r = await waiter
        assert (r.status, await r.text()) == (200, "127.0.0.22")
        r.release()


async def test_change_elsewhere_does_not_wake_a_path_waiter(metadata: RunningMetadata, fleet_file: Path) -> None:
    path = "/latest/containers/shop-web-1/primary_ip?wait=true&value=127.0.0.11&maxWait=30"
    async with metadata.client() as s:
        waiter = asyncio.create_task(s.get(path))
        await until_waiting(metadata)
        before = metadata.app[STORE].index
        move_ip(fleet_file, "Shop-db-1", "127.0.0.22")  # another container moves
        await until_waiting(metadata, after_index=before)  # woken by the new version, asleep again
        assert not waiter.done()
        move_ip(fleet_file, "Shop-Web-1", "127.0.0.19")  # its own path changes: now it returns
        async with asyncio.timeout(10):
            r = await waiter
        assert (r.status, await r.text()) == (200, "127.0.0.19")
        r.release()


async def test_timeout_returns_200_with_the_unchanged_value(metadata: RunningMetadata) -> None:
    """It waits (the store counts the waiter), then maxWait ends the wait with the same value."""
    current = await version(metadata)
    store = metadata.app[STORE]
    async with metadata.client(headers={"Accept": "application/json"}) as s:
        request = asyncio.ensure_future(s.get(f"/latest/version?wait=true&value={current}&maxWait=0.5"))
        while store.waiting < 1:
            assert not request.done()
            await asyncio.sleep(0.005)
        r = await request
        assert r.status == 200
        assert json.loads(await r.text()) == current
        assert store.waiting == 0
        r.release()


async def test_max_wait_is_capped(fleet_file: Path) -> None:
    async with run_metadata(fleet_file, max_wait=0.3) as md:
        current = await version(md)
        # uncapped, the request would wait 100 s: the hang guard is far from both
        async with asyncio.timeout(20), md.client() as s, s.get(f"/version?wait=true&value={current}&maxWait=100") as r:
            assert r.status == 200
            assert await r.text() == current


async def test_index_blocking_query_on_the_whole_tree(metadata: RunningMetadata, fleet_file: Path) -> None:
    async with metadata.client(headers={"Accept": "application/json"}) as s:
        async with s.get("/latest/containers") as r:
            index = int(r.headers["X-Metadns-Index"])
        waiter = asyncio.create_task(s.get(f"/latest/containers?index={index}&maxWait=30"))
        await until_waiting(metadata)
        assert not waiter.done()
        move_ip(fleet_file, "infra-cache-1", "127.0.0.32")
        async with asyncio.timeout(10):
            r = await waiter
        assert int(r.headers["X-Metadns-Index"]) == index + 1
        assert "127.0.0.32" in await r.text()
        r.release()


async def test_one_change_wakes_a_thousand_waiters(metadata: RunningMetadata) -> None:
    store = metadata.app[STORE]
    current = await version(metadata)
    async with contextlib.AsyncExitStack() as stack:
        # 20 clients with 50 long-polls each: within the per-client connection cap
        sessions = [await stack.enter_async_context(metadata.client(f"127.0.5.{k + 1}")) for k in range(20)]

        async def wait_once(s: aiohttp.ClientSession) -> str:
            async with s.get(f"/version?wait=true&value={current}&maxWait=60") as r:
                assert r.status == 200
                return await r.text()

        waiters = [asyncio.create_task(wait_once(sessions[i % 20])) for i in range(1000)]
        async with asyncio.timeout(30):
            while store.waiting < 1000:
                await asyncio.sleep(0.05)
        fleet = store.snapshot.fleet
        from shared.model import Fleet

        data = fleet.to_mapping()
        data["containers"][0]["labels"] = {"changed": "yes"}
        assert store.publish(Fleet.from_mapping(data))
        async with asyncio.timeout(20):
            results = await asyncio.gather(*waiters)
    assert set(results) == {store.snapshot.version}
    assert store.waiting == 0


async def test_shutdown_releases_waiters_at_once(fleet_file: Path) -> None:
    async with run_metadata(fleet_file) as md:
        current = await version(md)
        session_cm = md.client()
        s = await session_cm.__aenter__()
        waiter = asyncio.create_task(s.get(f"/version?wait=true&value={current}&maxWait=100"))
        while md.app[STORE].waiting < 1:
            await asyncio.sleep(0.02)
    r = await waiter
    assert r.status == 200
    r.release()
    await session_cm.__aexit__(None, None, None)
