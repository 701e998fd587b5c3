"""What ``/metrics`` reads of a running DNS server, as a type of its own.

``metrics`` needs the server's parts and ``server`` builds the metrics: naming ``DnsServer``
in ``metrics`` would make the two modules (and, through the gather step's metrics, the settings
and the gather step) one import cycle. ``DnsServer`` matches this protocol without naming it.
"""

from __future__ import annotations

from typing import Protocol

from dns_svc.replies import ClientCaches, ReplyCache, ReplyStore
from dns_svc.resolver import Resolver, TableRef
from dns_svc.steps.cache import GlobalCacheStep
from dns_svc.steps.upstream import UpstreamPool
from dns_svc.transport import Dispatcher, TcpServer


class ObservedServer(Protocol):
    """The parts of a DNS server that ``ServerCollector`` reads when scraped."""

    @property
    def resolver(self) -> Resolver: ...
    @property
    def upstream(self) -> UpstreamPool: ...
    @property
    def client_caches(self) -> ClientCaches: ...
    @property
    def global_cache(self) -> ReplyCache: ...
    @property
    def cache_store(self) -> ReplyStore: ...
    @property
    def global_step(self) -> GlobalCacheStep: ...
    @property
    def dispatcher(self) -> Dispatcher: ...
    @property
    def tcp(self) -> TcpServer | None: ...
    @property
    def tables(self) -> TableRef: ...
    @property
    def draining(self) -> bool: ...
