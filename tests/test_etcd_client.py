"""The etcd client on real etcd (3.4 and 3.5): pages pinned to one revision; a member slow to
complete a connection's handshake is waited for."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.etcd import EtcdClient, EtcdEndpoints, KeyValue
from tests.support.etcd import VERSIONS, run_etcd
from tests.support.tcp_proxy import tcp_proxy

pytestmark = pytest.mark.external_tool


class WritesBetweenPages(EtcdClient):
    """A client that, after its first page, has someone else write under the prefix."""

    def __init__(self, endpoints: EtcdEndpoints, writer: EtcdClient) -> None:
        super().__init__(endpoints)
        self.writer = writer
        self.pages = 0

    async def range(
        self, key: bytes, range_end: bytes = b"", *, revision: int = 0, limit: int = 0, serializable: bool = False
    ) -> tuple[list[KeyValue], int, bool]:
        found = await super().range(key, range_end, revision=revision, limit=limit, serializable=serializable)
        self.pages += 1
        if self.pages == 1:
            await self.writer.put(b"/p/k00", b"changed")  # already read
            await self.writer.put(b"/p/k99", b"late")  # not yet read
        return found


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_list_in_pages_is_every_key_at_the_first_pages_revision(tmp_path: Path, version: str) -> None:
    with run_etcd(tmp_path / "etcd", version=version) as cluster:
        endpoints = EtcdEndpoints.parse(cluster.endpoints)
        async with EtcdClient(endpoints) as writer:
            for i in range(10):
                await writer.put(f"/p/k{i:02d}".encode(), f"v{i}".encode())
            await writer.put(b"/q/outside", b"x")
            client = WritesBetweenPages(endpoints, writer)
            async with client:
                kvs, revision = await client.list_prefix(b"/p/", page=3)
            assert client.pages == 4
            assert [kv.key for kv in kvs] == [f"/p/k{i:02d}".encode() for i in range(10)]
            assert [kv.value for kv in kvs] == [f"v{i}".encode() for i in range(10)]  # as at the first page
            assert max(kv.mod_revision for kv in kvs) <= revision
            later, now = await writer.list_prefix(b"/p/")
            assert now == revision + 2
            assert len(later) == 11


async def test_a_member_slow_to_answer_a_new_connection_is_waited_for(tmp_path: Path) -> None:
    """The first bytes of etcd on a connection (its HTTP/2 SETTINGS frame) come 1.5 s late, as
    from a busy etcd or machine: the call waits for them within its own deadline (5 s). gRPC's
    ``min_reconnect_backoff_ms`` is its connect timeout; at 200 ms this call failed at once
    ("connection attempt timed out before receiving SETTINGS frame")."""
    with run_etcd(tmp_path / "etcd") as cluster:
        member = cluster.members[0]
        async with (
            tcp_proxy(("127.0.0.1", member.client_port), first_reply_delay=1.5) as proxy,
            EtcdClient(EtcdEndpoints.parse(f"127.0.0.1:{proxy.port}")) as client,
        ):
            await client.put(b"/slow/k", b"v")
            assert [kv.value for kv in (await client.range(b"/slow/k"))[0]] == [b"v"]
