"""The metadata service's limits as its clients meet them: a client over a limit gets an HTTP
answer (429 or 503 with Retry-After), never a reset; limits count the client as identified
(X-Forwarded-For from a trusted proxy); long-polls never take the slots ordinary requests need;
and the defaults carry a host's worth of long-polls."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import yaml

from metadata_svc.keys import GATE, LONGPOLLS, STORE
from metadata_svc.settings import MetadataSettings
from tests.support.metadata import RawClient, RunningMetadata, run_metadata, start_metadata, stop


async def wait_for(predicate, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def raw_clients() -> AsyncIterator[list[RawClient]]:
    clients: list[RawClient] = []
    try:
        yield clients
    finally:
        for client in clients:
            client.close()


async def current_version(md: RunningMetadata) -> str:
    return md.app[STORE].snapshot.version


def change_fleet(fleet_file: Path, ip: str) -> None:
    """Rewrite the fleet atomically with shop-db-1 at ``ip``."""
    data = yaml.safe_load(fleet_file.read_text())
    for container in data["containers"]:
        if container["name"].lower() == "shop-db-1":
            container["primary_ip"] = ip
    tmp = fleet_file.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, fleet_file)


def test_the_defaults_carry_a_host_of_long_polls_and_no_client_takes_them_all() -> None:
    """1,000 long-polls from one address (or one trusted proxy), at least 10,000 in all, one
    client never the whole total, and long-polls never every connection."""
    s = MetadataSettings()
    assert s.max_longpolls_per_client >= 1000
    assert s.max_connections_per_client > s.max_longpolls_per_client  # room for its other requests
    assert s.longpoll_limit >= 10000
    assert s.longpoll_limit > s.max_longpolls_per_client
    assert s.longpoll_limit < s.max_connections


async def test_a_connection_over_the_total_is_answered_503_and_one_that_sends_nothing_is_dropped(
    fleet_file: Path,
) -> None:
    async with run_metadata(fleet_file, max_connections=4) as md, raw_clients() as held:
        port = int(md.url.rsplit(":", 1)[1])
        gate = md.app[GATE]
        gate.refusal_wait = 0.3
        gate.pressure_idle = 60.0  # nothing here is idle long enough to be closed for room
        for i in range(4):
            held.append(await RawClient.open(port, f"127.0.11.{i + 1}"))
        await wait_for(lambda: len(gate.open) == 4)
        late = await RawClient.open(port, "127.0.11.9")
        held.append(late)
        late.send("/latest/version")
        status, headers, body = await late.answer()
        assert (status, headers["retry-after"]) == (503, "1")
        assert b"every connection is busy" in body
        silent = await RawClient.open(port, "127.0.11.10")
        held.append(silent)
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(silent.answer(), 5)
        assert gate.aborted == 1
        await wait_for(lambda: gate.refusing == 0)


async def test_long_polls_over_a_limit_get_429_and_ordinary_requests_are_still_served(fleet_file: Path) -> None:
    """Per client 3, in all 5: the 4th of one client and the 6th in all are answered 429 with
    Retry-After at once, not parked; an ordinary request from the client at its limit is served;
    the change wakes every parked one."""
    async with (
        run_metadata(fleet_file, max_longpolls_per_client=3, max_longpolls=5) as md,
        raw_clients() as clients,
    ):
        port = int(md.url.rsplit(":", 1)[1])
        version = await current_version(md)
        poll = f"/latest/version?wait=true&value={version}&maxWait=30"
        parked = []
        for source in ("127.0.12.1",) * 3 + ("127.0.12.2",) * 2:
            client = await RawClient.open(port, source)
            clients.append(client)
            client.send(poll)
            parked.append(client)
        await wait_for(lambda: md.app[STORE].waiting == 5)
        for source, why in (("127.0.12.1", b"from this client"), ("127.0.12.3", b"on this server")):
            over = await RawClient.open(port, source)
            clients.append(over)
            over.send(poll)
            status, headers, body = await asyncio.wait_for(over.answer(), 5)
            assert (status, headers["retry-after"]) == (429, "1"), body
            assert why in body
        ordinary = await RawClient.open(port, "127.0.12.1")
        clients.append(ordinary)
        ordinary.send("/latest/containers/shop-db-1/primary_ip")
        assert (await asyncio.wait_for(ordinary.answer(), 5))[::2] == (200, b"127.0.0.21")
        assert md.app[STORE].waiting == 5
        change_fleet(fleet_file, "127.0.0.99")
        answers = await asyncio.wait_for(asyncio.gather(*(c.answer() for c in parked)), 10)
        assert {(status, body != version.encode()) for status, _, body in answers} == {(200, True)}
        assert md.app[LONGPOLLS].held == 0


async def test_behind_a_trusted_proxy_each_client_is_counted_apart(fleet_file: Path) -> None:
    """With --xff every connection comes from the proxy's address: the per-address connection cap
    (5 here) does not apply to it, and the long-poll cap (2 here) counts each forwarded client."""
    async with (
        run_metadata(fleet_file, xff=True, max_connections_per_client=5, max_longpolls_per_client=2) as md,
        raw_clients() as clients,
    ):
        port = int(md.url.rsplit(":", 1)[1])
        version = await current_version(md)
        poll = f"/latest/version?wait=true&value={version}&maxWait=30"
        for i in range(20):
            client = await RawClient.open(port, "127.0.0.1")
            clients.append(client)
            client.send(poll, forwarded_for=f"10.9.0.{1 + i // 2}")
        await wait_for(lambda: md.app[STORE].waiting == 20)
        third = await RawClient.open(port, "127.0.0.1")
        clients.append(third)
        third.send(poll, forwarded_for="10.9.0.1")
        status, headers, body = await asyncio.wait_for(third.answer(), 5)
        assert (status, headers["retry-after"]) == (429, "1"), body
        assert md.app[GATE].refused.total == 0  # no connection was refused on the proxy's address


def enough_open_files(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        message = f"needs an open-files limit of {wanted} (hard limit here: {hard})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def park_and_wake(port: int, fleet_file: Path, sources: Sequence[tuple[str, str | None]]) -> list[int]:
    """One long-poll per (source address, X-Forwarded-For); once all are parked (as /status
    tells), change the fleet; every answer's status."""
    clients: list[RawClient] = []
    try:
        probe = await RawClient.open(port)
        probe.send("/latest/version")
        version = (await probe.answer())[2].decode()
        probe.close()
        for source, xff in sources:
            client = await RawClient.open(port, source)
            client.send(f"/latest/version?wait=true&value={version}&maxWait=60", forwarded_for=xff)
            clients.append(client)
        async with asyncio.timeout(60):
            while True:
                probe = await RawClient.open(port, "127.0.250.1")
                probe.send("/metrics")
                text = (await probe.answer())[2].decode()
                probe.close()
                line = next(x for x in text.splitlines() if x.startswith("metadns_metadata_longpoll_waiters "))
                if float(line.split()[1]) >= len(sources):
                    break
                await asyncio.sleep(0.2)
        ordinary = await RawClient.open(port, sources[0][0])  # the busiest client, at its limit
        ordinary.send("/latest/containers/shop-db-1/primary_ip", forwarded_for=sources[0][1])
        assert (await asyncio.wait_for(ordinary.answer(), 10))[0] == 200
        ordinary.close()
        change_fleet(fleet_file, "127.0.0.98")
        started = time.perf_counter()
        answers = await asyncio.wait_for(asyncio.gather(*(c.answer() for c in clients), return_exceptions=True), 60)
        print(f"{len(sources)} long-polls answered {time.perf_counter() - started:.2f} s after the change")
        statuses = [a[0] if isinstance(a, tuple) else type(a).__name__ for a in answers]
        assert all(isinstance(a, tuple) and a[2] != version.encode() for a in answers if a[0] == 200)  # type: ignore[index]
        return statuses  # type: ignore[return-value]
    finally:
        for client in clients:
            client.close()


async def every_long_poll_answered(fleet_file: Path, sources: Sequence[tuple[str, str | None]], *flags: str) -> None:
    """The real service with the default limits (and ``flags``): every one of ``sources``'
    long-polls parks, and the change answers every one with 200, nothing refused."""
    proc, port = await start_metadata(fleet_file, *flags)
    try:
        statuses = await park_and_wake(port, fleet_file, sources)
    finally:
        log = await stop(proc, fleet_file)
    assert statuses.count(200) == len(sources), {s: statuses.count(s) for s in set(statuses)}
    assert "event=connection_refused" not in log
    assert "event=longpoll_refused" not in log


@pytest.mark.no_cover
@pytest.mark.slow
async def test_ten_thousand_long_polls_from_a_thousand_addresses_are_all_woken(fleet_file: Path) -> None:
    """10 long-polls from each of 1,000 addresses, with the default limits: every one parks, an
    ordinary request still gets through, and the change answers all 10,000 (no reset, no 429).
    How long the wake-up takes is measured in bench/longpoll_fanout.py."""
    enough_open_files(10_000 + 200)
    sources = [(f"127.0.{20 + i // 250}.{1 + i % 250}", None) for i in range(1000) for _ in range(10)]
    await every_long_poll_answered(fleet_file, sources)


@pytest.mark.parametrize("via", ["one address", "one trusted proxy"])
async def test_a_thousand_long_polls_from_one_address_or_through_one_proxy_all_work(fleet_file: Path, via: str) -> None:
    """Host-network containers share the host's address; behind a proxy (--xff) every client shares
    the proxy's. With the default limits 1,000 long-polls that way all park and all are woken."""
    enough_open_files(1000 + 200)
    if via == "one address":
        await every_long_poll_answered(fleet_file, [("127.0.30.1", None)] * 1000)
    else:
        sources = [("127.0.0.1", f"10.8.{i // 250}.{1 + i % 250}") for i in range(1000)]
        await every_long_poll_answered(fleet_file, sources, "--xff")


async def test_a_flood_of_malformed_requests_costs_a_line_per_kind_not_a_traceback_each(fleet_file: Path) -> None:
    """1,000 requests aiohttp cannot parse (a 60 KB path, a 100 KB header, 10,000 headers, not
    HTTP at all): each is still answered 400, and the log gets one line per kind, no traceback
    (each used to write an ERROR with ~1.5 KB of traceback)."""
    proc, port = await start_metadata(fleet_file)
    kinds = {
        "long path": f"GET /{'a' * 60_000} HTTP/1.1\r\nHost: md\r\n\r\n".encode(),
        "long header": f"GET / HTTP/1.1\r\nHost: md\r\nX-Big: {'b' * 100_000}\r\n\r\n".encode(),
        "many headers": b"GET / HTTP/1.1\r\nHost: md\r\n"
        + b"".join(b"X-%d: y\r\n" % i for i in range(10_000))
        + b"\r\n",
        "not http": b"\x16\x03\x01\x02\x00 hello\r\n\r\n",
    }
    statuses: list[int | str] = []
    try:
        started_log = len((fleet_file.parent / "metadata.log").read_bytes())  # the start-up lines
        for i in range(1000):
            payload = list(kinds.values())[i % len(kinds)]
            client = await RawClient.open(port)
            try:
                client.writer.write(payload)
                try:
                    statuses.append((await asyncio.wait_for(client.answer(), 5))[0])
                except (ConnectionResetError, asyncio.IncompleteReadError) as exc:
                    statuses.append(type(exc).__name__)
            finally:
                client.close()
    finally:
        log = await stop(proc, fleet_file)
    assert set(statuses) == {400}, {s: statuses.count(s) for s in set(statuses)}
    lines = [line for line in log.splitlines() if "event=bad_http_request" in line]
    assert "Traceback" not in log
    assert 1 <= len(lines) <= len(kinds), lines
    assert all(len(line) < 400 for line in lines), lines
    flood_log = len(log.encode()) - started_log
    assert flood_log < 4 * 1024, f"{flood_log} bytes of log for 1,000 malformed requests"
