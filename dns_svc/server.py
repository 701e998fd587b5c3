"""The DNS server: the chain assembled in one place, the listeners, and the table's feed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable, Sequence

from aiohttp import web

from dns_svc import compiled, mmsg
from dns_svc.answers import AnswersTable, answers_from_fleet
from dns_svc.answers_file import AnswersFileWatcher
from dns_svc.chain import Chain, Step
from dns_svc.collector import CollectorSchedule
from dns_svc.follower import VersionFollower
from dns_svc.metrics import Metrics
from dns_svc.replies import ClientCaches, ReplyCache, ReplyStore
from dns_svc.resolver import RecursionPolicy, Resolver, TableRef
from dns_svc.settings import DnsSettings
from dns_svc.steps.authority import Authority
from dns_svc.steps.cache import ClientCacheStep, GlobalCacheStep
from dns_svc.steps.gather import GatherStep
from dns_svc.steps.local import LocalAnswers
from dns_svc.steps.upstream import UpstreamPool
from dns_svc.tally import query_log
from dns_svc.transport import Dispatcher, TcpServer, UdpListener
from shared.fleet_changes import ObjectChange, diff_fleets
from shared.fleet_index import FleetView
from shared.kept_copy import KeptCopy
from shared.logs import log_event
from shared.model import Fleet

log = logging.getLogger("dns")


# More objects than this in one change and a new table is built off the event loop instead:
# applied in place, they would hold queries up for longer than a rebuild's swap does.
MAX_CHANGES_IN_PLACE = 1000


def _objects(fleet: FleetView) -> int:
    return len(fleet.hosts) + len(fleet.stacks) + len(fleet.services) + len(fleet.containers)


class StartupError(RuntimeError):
    """The service cannot start serving what it was told to: one line, a non-zero exit."""


def build_chain(
    settings: DnsSettings,
    client_caches: ClientCaches,
    global_step: GlobalCacheStep,
    upstream: UpstreamPool,
    metrics: Metrics,
) -> Chain:
    """The resolution order, top to bottom. Each step answers or hands the query down."""
    gather: list[Step] = []
    if settings.gather_domain:
        gather.append(
            GatherStep(settings.gather_domain, settings.clusters, upstream, settings.gather_timeout, metrics.gather)
        )
    return Chain(
        [
            ClientCacheStep(client_caches),
            LocalAnswers(settings.ttl, settings.ndots, chase=upstream.lookup, memo=client_caches),
            global_step,
            *gather,  # merged answers come back up through the global cache
            Authority(settings.ttl, settings.ndots),
            upstream,
        ],
    )


class DnsServer:
    def __init__(self, settings: DnsSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.cache_store = ReplyStore(settings.cache_capacity)
        self.client_caches = ClientCaches(self.cache_store, clock)
        self.global_cache = ReplyCache(clock=clock, store=self.cache_store, stale_for=settings.serve_stale)
        self.upstream = UpstreamPool(settings.recurse, settings.recurser_timeout, settings.recurse_from_resolv_conf)
        self.tables = TableRef(self.table_for(Fleet.empty(), 0), self.client_caches)
        self._applying = asyncio.Lock()  # one fleet change at a time, in the order they came
        self.metrics = Metrics()
        self.global_step = GlobalCacheStep(
            self.global_cache, settings.cache_max_ttl, settings.servfail_ttl, settings.stale_answer_timeout
        )
        self.resolver = Resolver(
            self.tables,
            self.client_caches,
            build_chain(settings, self.client_caches, self.global_step, self.upstream, self.metrics),
            RecursionPolicy(settings.allow_recursion),
            clock,
        )
        self.dispatcher = Dispatcher(self.resolver, udp_cap=settings.max_udp_size)
        if settings.log_queries:
            self.resolver.tally.log_queries = True
            query_log.setLevel(logging.DEBUG)  # its own level: the query lines, not every debug line
        self.follower: VersionFollower | None = None
        self.answers_watcher: AnswersFileWatcher | None = None
        self._udp: UdpListener | None = None
        self._tcp: asyncio.Server | None = None
        self.tcp: TcpServer | None = None
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self._http: web.AppRunner | None = None
        self.http_address: tuple[str, int] | None = None
        self.address: tuple[str, int] = (settings.host, settings.port)
        self.metrics.watch(self)

    async def _serve_http(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics.handle)
        app.router.add_get("/healthz", self._healthz)
        self._http = web.AppRunner(app, access_log=None)
        await self._http.setup()
        if self.settings.http_unix:
            await web.UnixSite(self._http, self.settings.http_unix).start()
            return
        site = web.TCPSite(
            self._http, self.settings.http_host, self.settings.http_port, reuse_port=self.settings.reuse_port or None
        )
        await site.start()
        # The runner's public ``addresses`` (a TCP site's socket names), not the site's private server:
        # with --http-port 0 this is where the port picked is read back.
        addresses = self._http.addresses
        self.http_address = tuple(addresses[0][:2]) if addresses else None

    async def _healthz(self, _request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"status": "draining", "serial": self.tables.current.serial}, status=503)
        return web.json_response({"status": "ok", "serial": self.tables.current.serial})

    def in_flight(self) -> int:
        """Queries taken in and not answered yet: relayed upstream, or in the chain."""
        return self.upstream.in_flight() + len(self.dispatcher.tasks)

    async def drain(self) -> None:
        """Stop like CoreDNS's lameduck and uvicorn's graceful shutdown: /healthz fails first (for
        ``--lameduck`` seconds, still serving), then no new queries are read, and the ones in
        flight are answered, for up to ``--drain-timeout`` seconds."""
        s = self.settings
        self.draining = True
        if s.lameduck > 0:
            await asyncio.sleep(s.lameduck)
        if self._udp is not None:
            self._udp.stop_reading()
        if self._tcp is not None:
            self._tcp.close()
        if self.tcp is not None:
            self.tcp.stop()
        pending = self.in_flight()
        log_event(log, logging.INFO, "draining", in_flight=pending, timeout_s=s.drain_timeout)
        deadline = time.monotonic() + s.drain_timeout
        while (self.in_flight() or (self.tcp is not None and self.tcp.connections)) and time.monotonic() < deadline:  # noqa: ASYNC110 (counts, no event to wait on)
            await asyncio.sleep(0.02)
        log_event(
            log, logging.INFO, "drained", answered=pending - min(pending, self.in_flight()), dropped=self.in_flight()
        )

    def table_for(self, fleet: FleetView, serial: int) -> AnswersTable:
        s = self.settings
        return answers_from_fleet(
            fleet,
            domain=s.domain,
            metadata_answer=s.metadata_answer,
            default_recurse=s.recurse,
            never_recurse_to=s.never_recurse_to,
            ttl=s.ttl,
            serial=serial,
        )

    async def apply_fleet(self, fleet: FleetView, serial: int) -> None:
        """A whole fleet (a full document, the kept copy): its difference to the fleet served,
        worked out off the event loop, applied in place (``apply_changes``); a new table when
        there is no fleet to compare with (an answers file's table)."""
        async with self._applying:
            base = self.tables.current.fleet
            # The difference in size is at least the number of changes: past the in-place
            # limit (a first fleet after the empty one), rebuild without working them out.
            if base is not None and abs(_objects(base) - _objects(fleet)) <= MAX_CHANGES_IN_PLACE:
                changes = await asyncio.to_thread(diff_fleets, base, fleet)
                if len(changes) <= MAX_CHANGES_IN_PLACE:
                    self._apply_changes(fleet, changes, serial)
                    return
            await self._rebuild(fleet, serial)

    async def apply_changes(self, fleet: FleetView, changes: Sequence[ObjectChange], serial: int) -> None:
        """A fleet change as the objects it touched (``fleet``: the fleet after them)."""
        async with self._applying:
            if self.tables.current.fleet is None or len(changes) > MAX_CHANGES_IN_PLACE:
                await self._rebuild(fleet, serial)
            else:
                self._apply_changes(fleet, changes, serial)

    def _apply_changes(self, fleet: FleetView, changes: Sequence[ObjectChange], serial: int) -> None:
        """On the event loop, in one piece (``TableRef``): a change costs what it touches, a
        millisecond or so per object, so even a few thousand objects stall queries less than the
        rebuild's collector pauses and its comparison of every name."""
        delta = self.tables.update(fleet, changes, serial)
        log_event(
            log,
            logging.DEBUG,
            "table_updated",
            serial=serial,
            objects=len(changes),
            names=len(delta.names) if delta.names is not None else "all",
            views=len(delta.views) if delta.views is not None else "all",
        )

    async def _rebuild(self, fleet: FleetView, serial: int) -> None:
        """Build the new table off the event loop (a 10k fleet takes a while), swap it in on it."""
        current = self.tables.current

        def build() -> tuple[AnswersTable, bool, set[str] | None]:
            table = self.table_for(fleet, serial)
            changed = not table.same_answers(current)
            return table, changed, table.changed_names(current) if changed else set()

        table, changed, names = await asyncio.to_thread(build)
        if self.tables.current is current:
            self.tables.swap(table, changed, names)
        else:
            self.tables.swap(table)
        log_event(log, logging.DEBUG, "table_swapped", serial=serial, answers_changed=changed)

    def apply_table(self, table: AnswersTable) -> None:
        self.tables.swap(table)

    async def start(self) -> None:
        s = self.settings
        if s.answers:
            self.answers_watcher = AnswersFileWatcher(s.answers, self.apply_table)
            if not self.answers_watcher.load():
                # an empty zone would answer NXDOMAIN for every fleet name, authoritatively
                raise StartupError(f"--answers {s.answers} cannot be served (the reason is logged above)")
            self._tasks.append(asyncio.create_task(self.answers_watcher.run(), name="answers-file"))
        elif s.metadata_url:
            self.follower = VersionFollower(
                s.metadata_url,
                self.apply_fleet,
                apply_changes=self.apply_changes,
                max_wait=s.max_wait,
                startup_grace=s.metadata_grace,
                kept=KeptCopy(s.state_file) if s.state_file else None,
            )
            kept = self.follower.load_kept()
            if kept is not None:
                await self.apply_fleet(*kept)
            self._tasks.append(asyncio.create_task(self.follower.run(), name="metadata-follower"))
        await self._listen()
        if self.settings.http_host or self.settings.http_unix:
            await self._serve_http()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        log_event(
            log,
            logging.INFO,
            "listening",
            address=f"{self.address[0]}:{self.address[1]}",
            upstreams=",".join(f"{h}:{p}" for h, p in s.recurse) or "none",
            source=s.answers or s.metadata_url or "none",
            compiled=compiled.in_use(),  # the mypyc build of the hot path, or the pure-Python modules
            udp_io=mmsg.state(),  # mmsg: recvmmsg/sendmmsg batches; else why recvfrom/sendto (off, none, stale)
        )

    def reload(self) -> None:
        if self.answers_watcher is not None:
            self.answers_watcher.request_reload()

    async def _listen(self) -> None:
        """TCP first on the requested port (0: any), then UDP on the same number, retried when
        an ephemeral TCP port happens to be taken for UDP."""
        s = self.settings
        tcp = self.tcp = TcpServer(self.dispatcher, s.tcp_idle_timeout, s.tcp_max_connections, s.tcp_per_client)
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        for attempt in range(20):
            server = await asyncio.start_server(
                tcp.handle,
                self.settings.host,
                self.settings.port,
                family=family,
                reuse_address=True,
                reuse_port=self.settings.reuse_port or None,
                backlog=1024,
            )
            port = server.sockets[0].getsockname()[1]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            if self.settings.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((self.settings.host, port))
            except OSError:
                sock.close()
                server.close()
                await server.wait_closed()
                if self.settings.port or attempt == 19:
                    raise
                continue
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, 4 << 20)
            self._tcp, self._udp = server, UdpListener(self.dispatcher, sock)
            self.address = (self.settings.host, port)
            return

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.follower is not None and self.follower.kept is not None:
            await self.follower.kept.flush()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        for task in list(self.dispatcher.tasks):
            task.cancel()
        if self._http is not None:
            await self._http.cleanup()
        self.upstream.close()

    async def serve_forever(self) -> None:
        await self.start()
        s = self.settings
        if s.gc_freeze_interval > 0:  # a whole process of its own: its collector is ours to schedule
            collector = CollectorSchedule(s.gc_freeze_interval, s.gc_full_interval)
            self._tasks.append(asyncio.create_task(collector.run(), name="collector"))
            if self.follower is not None:
                self.follower.updating = collector.long_lived
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
            await self.drain()
        finally:
            await self.close()
            log_event(log, logging.INFO, "stopped")
