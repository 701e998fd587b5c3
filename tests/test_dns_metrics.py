"""/metrics as Prometheus users read it: counters typed as counters (so ``rate()`` survives a
restart), responses by where the answer came from, durations as histograms, each upstream on its
own, and one scrape covering every ``--workers`` process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dns_svc.follower import version_index
from dns_svc.server import DnsServer
from metadata_svc.keys import STORE
from tests.support.dns import addresses, ask, dns_process_on_free_ports, rcode, run_dns, wait_for_version
from tests.support.metadata import run_metadata
from tests.support.metrics import samples, scrape, value
from tests.support.ports import free_port

pytestmark = pytest.mark.external_tool


def families(text: str) -> dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]:
    """Name -> (type, [(sample name, labels, value)])"""
    return {
        f.name: (f.type, [(s.name, s.labels, s.value) for s in f.samples]) for f in text_string_to_metric_families(text)
    }


@pytest.fixture
async def server(dns_fleet_file: Path, unbound) -> AsyncIterator[DnsServer]:
    """The real metadata service, the DNS service following it with /metrics, unbound upstream."""
    async with (
        run_metadata(dns_fleet_file) as md,
        run_dns(
            metadata_url=f"{md.url}/2016-07-29", recurse=(unbound.address,), http_host="127.0.0.1", http_port=0
        ) as dns_server,
    ):
        await wait_for_version(dns_server, version_index(md.app[STORE].snapshot.version))
        yield dns_server


async def test_responses_are_counted_by_source_type_and_rcode(server: DnsServer) -> None:
    for _ in range(3):  # local, then the client cache, then the packet cache
        assert addresses(await ask(server, "lonely.rancher.internal")) == ["127.0.0.41"]
    assert rcode(await ask(server, "nope.rancher.internal")) == "NXDOMAIN"  # authority
    for _ in range(2):  # upstream, then the global cache
        assert addresses(await ask(server, "www.example.test")) == ["192.0.2.10"]
    await ask(server, "lonely.rancher.internal", "AAAA", tcp=True)
    text = await scrape(server.http_address)
    kinds = families(text)
    for name in (
        "metadns_dns_responses",
        "metadns_dns_cache_hits",
        "metadns_dns_cache_misses",
        "metadns_dns_upstream_requests",
        "metadns_dns_bad_packets",
        "metadns_dns_cache_evictions",
    ):
        assert kinds[name][0] == "counter", name
    assert kinds["metadns_dns_request_duration_seconds"][0] == "histogram"
    assert kinds["metadns_dns_cache_entries"][0] == "gauge"

    def responses(**labels: str) -> float:
        return value(text, "metadns_dns_responses_total", None, **labels)

    assert responses(proto="udp", source="local", type="A", rcode="NOERROR") == 1
    assert responses(proto="udp", source="client_cache", type="A") == 1
    assert responses(proto="udp", source="packet_cache", type="A") == 1
    assert responses(proto="udp", source="authority", rcode="NXDOMAIN") == 1
    assert responses(proto="udp", source="upstream", rcode="NOERROR") == 1
    assert responses(proto="udp", source="global_cache") == 1
    assert responses(proto="tcp", type="AAAA") == 1
    assert responses() == 7
    # one duration per response, in the histogram of its transport and source
    assert value(text, "metadns_dns_request_duration_seconds_count") == 7
    assert value(text, "metadns_dns_request_duration_seconds_count", proto="udp", source="local") == 1
    assert value(text, "metadns_dns_request_duration_seconds_bucket", proto="udp", source="local", le="+Inf") == 1
    assert value(text, "metadns_dns_cache_hits_total", cache="packet") == 1
    assert value(text, "metadns_dns_cache_hits_total", cache="global") == 1
    assert value(text, "metadns_dns_cache_entries", cache="global") >= 1


async def test_question_types_outside_the_common_ones_share_one_label(server: DnsServer) -> None:
    for qtype in ("TYPE3000", "TYPE3001", "TYPE3002"):
        await ask(server, "lonely.rancher.internal", qtype)
    text = await scrape(server.http_address)
    assert value(text, "metadns_dns_responses_total", type="other") == 3
    assert "TYPE3000" not in text
    assert 'type="3000"' not in text


async def test_each_upstream_is_counted_on_its_own(unbound) -> None:
    dead = ("127.0.0.1", free_port())  # nothing listens: an ICMP port-unreachable
    async with run_dns(recurse=(dead, unbound.address), http_host="127.0.0.1", http_port=0) as server:
        assert addresses(await ask(server, "www.example.test")) == ["192.0.2.10"]
        text = await scrape(server.http_address)
    live, gone = f"{unbound.address[0]}:{unbound.address[1]}", f"{dead[0]}:{dead[1]}"
    assert value(text, "metadns_dns_upstream_requests_total", to=gone) == 1
    assert value(text, "metadns_dns_upstream_errors_total", to=gone, error="refused") == 1
    assert value(text, "metadns_dns_upstream_responses_total", to=gone, default=0) == 0  # no reply, no series
    assert value(text, "metadns_dns_upstream_requests_total", to=live) == 1
    assert value(text, "metadns_dns_upstream_responses_total", to=live, rcode="NOERROR") == 1
    assert value(text, "metadns_dns_upstream_request_duration_seconds_count", to=live) == 1
    assert value(text, "metadns_dns_upstream_inflight", to=live) == 0


@dataclass
class Workers:
    process: asyncio.subprocess.Process
    dns: tuple[str, int]
    http: tuple[str, int]

    async def up(self) -> float:
        """How many workers the parent's /metrics reads (0 before it answers)."""
        try:
            return value(await scrape(self.http), "metadns_dns_worker_up", default=0)
        except aiohttp.ClientError:
            return 0

    def children(self) -> list[int]:
        pid = self.process.pid
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@contextlib.asynccontextmanager
async def two_workers(unbound) -> AsyncIterator[Workers]:
    """The real ``dns-svc --workers 2 --http-listen``, once both workers are read by the parent."""
    process, log, [port, http_port] = await dns_process_on_free_ports(
        lambda port, http_port: (
            f"--listen=127.0.0.1:{port}",
            "--workers=2",
            f"--http-listen=127.0.0.1:{http_port}",
            f"--recurse={unbound.address[0]}:{unbound.address[1]}",
            "--metadata-url=http://127.0.0.1:1/2016-07-29",
        ),
        ports=2,
        ready=2,
    )
    workers = Workers(process, ("127.0.0.1", port), ("127.0.0.1", http_port))
    try:
        async with asyncio.timeout(20):
            while await workers.up() != 2:
                await asyncio.sleep(0.1)
        yield workers
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
        await log.finish()


@pytest.mark.one_loop
async def test_one_scrape_shows_every_worker(unbound) -> None:
    """--workers 2: the workers share the DNS port, the parent serves /metrics with each worker's
    series labelled; with the HTTP port shared too, scrapes alternated between workers."""
    async with two_workers(unbound) as workers:
        for _ in range(60):  # each query from a fresh socket: the kernel spreads them
            assert addresses(await ask(workers.dns, "www.example.test", timeout=2)) == ["192.0.2.10"]
        texts = [await scrape(workers.http) for _ in range(3)]
        for text in texts:  # every scrape, the whole service
            assert value(text, "metadns_dns_responses_total") == 60
            per_worker = [value(text, "metadns_dns_responses_total", worker=w) for w in ("0", "1")]
            assert sum(per_worker) == 60
            assert min(per_worker) > 0
        async with aiohttp.ClientSession() as s, s.get(f"http://{workers.http[0]}:{workers.http[1]}/healthz") as r:
            assert r.status == 200
            assert (await r.json())["workers"] == {"0": "ok", "1": "ok"}


@pytest.mark.one_loop
async def test_a_killed_worker_is_replaced_and_scraped_again(unbound) -> None:
    """A worker killed: the parent starts another in its place (one new process, the other worker
    untouched), whose endpoint the parent's /metrics reads again, and the port still answers."""
    async with two_workers(unbound) as workers:
        first = workers.children()
        os.kill(first[0], signal.SIGKILL)
        async with asyncio.timeout(20):  # replaced (after a second), and its endpoint read again
            while True:
                now = workers.children()
                if first[0] not in now and len(now) == 2 and await workers.up() == 2:
                    break
                await asyncio.sleep(0.1)
        assert first[1] in now  # the other worker was left alone
        assert len(set(now) - set(first)) == 1  # one new worker
        text = await scrape(workers.http)
        assert sorted(s.labels["worker"] for s in samples(text, "metadns_dns_worker_up")) == ["0", "1"]
        assert value(text, "metadns_dns_worker_up") == 2
        for _ in range(10):  # from fresh sockets: whichever worker the kernel picks answers
            assert addresses(await ask(workers.dns, "www.example.test", timeout=2)) == ["192.0.2.10"]
        async with aiohttp.ClientSession() as s, s.get(f"http://{workers.http[0]}:{workers.http[1]}/healthz") as r:
            assert (await r.json())["workers"] == {"0": "ok", "1": "ok"}


async def test_log_queries_gives_one_debug_line_per_query(unbound, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)  # --log-level warning: the query lines come anyway
    caplog.handler.setLevel(logging.DEBUG)  # as the service's own handler: no level of its own
    logging.getLogger("dns.query").setLevel(logging.NOTSET)
    async with run_dns(recurse=(unbound.address,), log_queries=True) as server:
        await ask(server, "www.example.test", source="127.0.0.7")
        await ask(server, "WWW.example.test", "AAAA", tcp=True)
    lines = [r for r in caplog.records if r.name == "dns.query"]
    assert len(lines) == 2
    assert all(r.levelno == logging.DEBUG for r in lines)
    first, second = (r.fields for r in lines)  # type: ignore[attr-defined]
    assert first["client"] == "127.0.0.7"
    assert first["name"] == "www.example.test."
    assert first["type"] == "A"
    assert first["rcode"] == "NOERROR"
    assert first["source"] == "upstream"
    assert first["answers"] == 1
    assert second["proto"] == "tcp"
    assert second["name"] == "WWW.example.test."
    assert second["type"] == "AAAA"


async def test_without_log_queries_no_query_lines(unbound, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with run_dns(recurse=(unbound.address,)) as server:
        await ask(server, "www.example.test")
    assert not [r for r in caplog.records if r.name == "dns.query"]
