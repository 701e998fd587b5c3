"""Prometheus metrics of the metadata service on ``GET /metrics``.

Counters are plain integers bumped by the handlers and read at scrape time by a collector of
our own (no lock, no metric object on the request path), exported as Prometheus counters with
``_total``, so ``rate()`` survives restarts; gauges are read from the store and the source.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from metadata_svc.keys import COUNTERS, SOURCE, STORE

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def path_kind(segments: list[str]) -> str:
    """A small fixed set of labels for request paths (never the path itself: unbounded)."""
    if not segments:
        return "root"
    first = segments[0].lower()
    if first in ("self", "version", "containers", "services", "stacks", "hosts"):
        return first
    return "other"


class _Collector(Collector):
    def __init__(self, app: web.Application) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        counters, store = self.app[COUNTERS], self.app[STORE]
        requests = CounterMetricFamily(
            "metadns_metadata_requests", "HTTP requests for metadata paths", labels=["kind", "status"]
        )
        for (kind, code), value in sorted(counters.requests.items()):
            requests.add_metric([kind, str(code)], value)
        yield requests
        reloads = CounterMetricFamily(
            "metadns_metadata_reloads", "Fleets read from the source, by result", labels=["result"]
        )
        for result, value in sorted(counters.reloads.items()):
            reloads.add_metric([result], value)
        yield reloads
        deltas = CounterMetricFamily(
            "metadns_metadata_fleet_deltas",
            "Fleet changes asked for with ?since=, by result (served; gone: the whole document next)",
            labels=["result"],
        )
        for result in ("served", "gone"):
            deltas.add_metric([result], counters.deltas[result])
        yield deltas
        yield _gauge("metadns_metadata_longpoll_waiters", "Long-polls waiting for a change", store.waiting)
        yield _gauge("metadns_metadata_index", "Version index served", store.index)
        fleet = store.snapshot.fleet
        size = GaugeMetricFamily("metadns_metadata_fleet_objects", "Objects of the fleet served", labels=["kind"])
        for kind, items in (
            ("hosts", fleet.hosts),
            ("stacks", fleet.stacks),
            ("services", fleet.services),
            ("containers", fleet.containers),
        ):
            size.add_metric([kind], len(items))
        yield size
        etcd: Any = getattr(self.app[SOURCE], "status", None)
        if etcd is not None:
            yield _gauge("metadns_metadata_source_up", "1 while the etcd source is connected", int(etcd.connected))
            yield _gauge("metadns_metadata_source_revision", "etcd revision the source has applied", etcd.revision)
            yield _gauge("metadns_metadata_source_held_back", "etcd objects held back as invalid", len(etcd.held_back))
            # How far behind the fleet may be: the watch hears from etcd at least every progress
            # interval while it is healthy, so this age is the source's lag bound.
            yield _gauge(
                "metadns_metadata_source_last_heard_seconds",
                "Seconds since etcd last answered the watch",
                time.monotonic() - etcd.heard_at if etcd.heard_at else -1,
            )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    family.add_metric([], value)
    return family


def metrics_handler(app: web.Application) -> Any:
    registry = CollectorRegistry()
    registry.register(_Collector(app))

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})

    return handle
