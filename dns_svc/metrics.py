"""Prometheus metrics of the DNS service, served as text on its HTTP port (``--http-listen``).

Each server has its own registry (no process-wide globals), so tests and ``--workers`` processes
never mix their counts.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class GatherMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.queries = Counter("metadns_gather_queries", "Queries answered by gathering clusters", ["qtype"],
                               registry=registry)
        self.subqueries = Counter("metadns_gather_subqueries", "Sub-queries sent to clusters, by result",
                                  ["cluster", "rcode"], registry=registry)
        self.latency = Histogram("metadns_gather_subquery_seconds", "Time to a cluster's answer", ["cluster"],
                                 registry=registry, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                             0.1, 0.25, 0.5, 1.0, 2.5))


class _Snapshot(Collector):
    """Gauges read at scrape time from the server's own counters (no per-query metric cost)."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self.read = read

    def collect(self):  # type: ignore[no-untyped-def]
        for name, value in self.read().items():
            family = GaugeMetricFamily(f"metadns_{name}", f"metadns {name.replace('_', ' ')}")
            family.add_metric([], value)
            yield family


class Metrics:
    def __init__(self, read_counters: Callable[[], dict[str, float]]) -> None:
        self.registry = CollectorRegistry()
        self.gather = GatherMetrics(self.registry)
        self.registry.register(_Snapshot(read_counters))

    async def handle(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE})
