"""Prometheus metrics of the DNS service, served as text on its HTTP port (``--http-listen``).

Nothing here runs per query. The hot path adds to plain integers (``tally``, the channels, the
caches); a collector reads them at scrape time and exports them by Prometheus conventions:
counters as counters (``_total``), sizes as gauges, durations as histograms. Each server has its
own registry (no process-wide globals), so tests never mix counts; with ``--workers`` the parent
process serves one endpoint for all workers (``workers.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from dns_svc.observed import ObservedServer
from dns_svc.tally import Durations, qtype_label, rcode_label

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


PAST_GLOBAL_CACHE = ("stale", "upstream", "gather", "failure")
PAST_CLIENT_CACHE = ("local", "authority", "global_cache", "refused", *PAST_GLOBAL_CACHE)


class GatherMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.queries = Counter(
            "metadns_gather_queries", "Queries answered by gathering clusters", ["qtype"], registry=registry
        )
        self.subqueries = Counter(
            "metadns_gather_subqueries",
            "Sub-queries sent to clusters, by result",
            ["cluster", "rcode"],
            registry=registry,
        )
        self.latency = Histogram(
            "metadns_gather_subquery_seconds",
            "Time to a cluster's answer",
            ["cluster"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )


def _histogram(family: HistogramMetricFamily, labels: list[str], durations: Durations) -> None:
    family.add_metric(labels, durations.cumulative(), durations.total)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class ServerCollector(Collector):
    """Everything the server counts, read when scraped."""

    def __init__(self, server: ObservedServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        resolver, tally, pool = server.resolver, server.resolver.tally, server.upstream
        responses = CounterMetricFamily(
            "metadns_dns_responses",
            "Responses sent, by transport, where the answer came from, question type and rcode",
            labels=["proto", "source", "type", "rcode"],
        )
        merged: dict[tuple[str, str, str, str], int] = {}
        for (proto, source, qtype, rcode), n in list(tally.responses.items()):
            key = (proto, source, qtype_label(qtype), rcode_label(rcode))
            merged[key] = merged.get(key, 0) + n
        for labels, n in sorted(merged.items()):
            responses.add_metric(list(labels), n)
        yield responses
        durations = HistogramMetricFamily(
            "metadns_dns_request_duration_seconds",
            "Time from a query read to its reply ready, by transport and where the answer came from",
            labels=["proto", "source"],
        )
        for (proto, source), d in sorted(tally.durations.items()):
            _histogram(durations, [proto, source], d)
        yield durations

        cache_hits = CounterMetricFamily("metadns_dns_cache_hits", "Answers served from a cache", labels=["cache"])
        cache_misses = CounterMetricFamily(
            "metadns_dns_cache_misses", "Cache lookups that found nothing", labels=["cache"]
        )
        for cache in ("packet_cache", "client_cache", "global_cache"):
            cache_hits.add_metric([cache.removesuffix("_cache")], tally.total(cache))
        # A miss is read off where the answer came from: every answer from below a cache missed it.
        cache_misses.add_metric(["client"], sum(tally.total(s) for s in PAST_CLIENT_CACHE))
        cache_misses.add_metric(["global"], sum(tally.total(s) for s in PAST_GLOBAL_CACHE))
        yield cache_hits
        yield cache_misses
        entries = GaugeMetricFamily("metadns_dns_cache_entries", "Entries held, by cache", labels=["cache"])
        entries.add_metric(["client"], len(server.client_caches))
        entries.add_metric(["global"], len(server.global_cache))
        entries.add_metric(["packet"], len(resolver.packets))
        yield entries
        yield _gauge(
            "metadns_dns_cache_capacity",
            "Entries all caches may hold together (--cache-capacity)",
            server.cache_store.capacity,
        )
        yield _counter(
            "metadns_dns_cache_evictions",
            "Entries dropped to stay within --cache-capacity",
            server.cache_store.evictions,
        )
        yield _counter(
            "metadns_dns_stale_answers",
            "Expired answers served while the upstreams failed (RFC 8767)",
            server.global_step.stale_served,
        )

        requests = CounterMetricFamily(
            "metadns_dns_upstream_requests", "Queries sent to each upstream over UDP", labels=["to"]
        )
        replies = CounterMetricFamily(
            "metadns_dns_upstream_responses", "Replies from each upstream, by rcode", labels=["to", "rcode"]
        )
        errors = CounterMetricFamily(
            "metadns_dns_upstream_errors", "Queries to each upstream that got no reply, by why", labels=["to", "error"]
        )
        upstream_durations = HistogramMetricFamily(
            "metadns_dns_upstream_request_duration_seconds", "Time to each upstream's reply", labels=["to"]
        )
        inflight = GaugeMetricFamily(
            "metadns_dns_upstream_inflight", "Queries waiting for each upstream", labels=["to"]
        )
        for to, ch in pool.channels():
            requests.add_metric([to], ch.sent)
            for rcode, n in sorted(ch.rcodes.items()):
                replies.add_metric([to, rcode_label(rcode)], n)
            for why, n in sorted(ch.errors.items()):
                errors.add_metric([to, why], n)
            _histogram(upstream_durations, [to], ch.durations)
            inflight.add_metric([to], len(ch))
        yield from (requests, replies, errors, upstream_durations, inflight)
        counts = pool.counters()
        yield _counter(
            "metadns_dns_upstream_merged", "Queries that joined an identical one in flight", counts["merged"]
        )
        yield _counter(
            "metadns_dns_upstream_mismatched",
            "Datagrams on an upstream socket that were not its reply (forgeries, late duplicates)",
            counts["mismatched"],
        )
        yield _counter(
            "metadns_dns_upstream_malformed", "Upstream replies that could not be walked", counts["malformed"]
        )

        yield _counter(
            "metadns_dns_bad_packets", "Packets that were not a query we answer", server.dispatcher.bad.total
        )
        yield _counter(
            "metadns_dns_resolve_failures",
            "Queries whose resolution raised (answered SERVFAIL)",
            server.dispatcher.failed.total,
        )
        yield _gauge(
            "metadns_dns_chain_inflight",
            "Queries being answered by the chain's coroutines",
            len(server.dispatcher.tasks),
        )
        tcp = server.tcp
        yield _gauge("metadns_dns_tcp_connections", "Open TCP connections", tcp.connections if tcp else 0)
        yield _counter(
            "metadns_dns_tcp_evicted", "Idle TCP connections closed for a newcomer", tcp.evicted if tcp else 0
        )
        yield _counter("metadns_dns_tcp_refused", "TCP connections turned away", tcp.refused.total if tcp else 0)
        yield _gauge("metadns_dns_answers_serial", "Serial of the answers table in use", server.tables.current.serial)
        yield _gauge("metadns_dns_draining", "1 while shutting down (lameduck and drain)", int(server.draining))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gather = GatherMetrics(self.registry)

    def watch(self, server: ObservedServer) -> None:
        self.registry.register(ServerCollector(server))

    def text(self) -> bytes:
        return generate_latest(self.registry)

    async def handle(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.text(), headers={"Content-Type": CONTENT_TYPE})
