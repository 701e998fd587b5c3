"""Assemble the aiohttp application: state keys, the source-following task, shutdown hooks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator

from aiohttp import web

from metadata_svc.connections import ConnectionGate, request_tracker
from metadata_svc.counters import MetadataCounters
from metadata_svc.host_status import HostStatusReporter
from metadata_svc.identity import ClientIdentity
from metadata_svc.keys import COUNTERS, GATE, HOST_STATUS, IDENTITY, LONGPOLLS, SETTINGS, SOURCE, STORE
from metadata_svc.longpolls import LongPollSlots
from metadata_svc.request_errors import RequestErrorLog
from metadata_svc.routes import add_routes
from metadata_svc.settings import MetadataSettings
from metadata_svc.sources import FleetSource, FleetUpdate, SourceResult
from metadata_svc.sources.etcd import EtcdSource, parse_etcd_source
from metadata_svc.sources.file import FileSource
from metadata_svc.store import ReloadResult, VersionedStore
from shared.etcd import EtcdClient, endpoints_from_flags
from shared.fleet_changes import ObjectChange, diff_fleets
from shared.fleet_index import FleetView
from shared.kept_copy import KeptCopy
from shared.logs import log_event
from shared.model import Fleet, FleetError

log = logging.getLogger("metadata")
FIRST_LOAD_WAIT = 5.0


class SourceFollower:
    """Applies each result of a source to the store and the kept copy, logging one line each."""

    def __init__(
        self,
        source: FleetSource,
        store: VersionedStore,
        kept: KeptCopy | None,
        counters: MetadataCounters | None = None,
    ) -> None:
        self.counters = counters or MetadataCounters()
        self.source = source
        self.store = store
        self.kept = kept
        self._kept_error: str | None = None
        self.first_result = asyncio.Event()

    async def apply(self, result: SourceResult) -> None:
        store = self.store
        index: int | None = None
        changes: list[ObjectChange] | None = None
        follows_objects = isinstance(result, FleetUpdate)
        fleet: FleetView
        if isinstance(result, FleetUpdate):
            fleet, index, changes = result.fleet, result.revision, result.changes
        elif isinstance(result, tuple):
            fleet, index = result
        elif isinstance(result, Fleet):
            fleet = result
        else:
            self.counters.reloads["rejected"] += 1
            store.last_reload = ReloadResult(time.time(), False, str(result))
            log_event(
                log,
                logging.ERROR,
                "fleet_rejected",
                source=self.source.name,
                where=result.where,
                problem=result.problem,
                serving=store.snapshot.version if store.has_data else "nothing",
            )
            return
        if changes is None and store.has_data:
            # A whole fleet read (a file; etcd's first list after a kept copy): what it changed,
            # so that followers at the version served catch up by it. Off the event loop (a
            # fifth of a second at 100k); neither fleet moves meanwhile.
            changes = await asyncio.to_thread(diff_fleets, store.snapshot.fleet, fleet)
        changed = store.publish(fleet, index=index, changes=changes)
        self.counters.reloads["published" if changed else "unchanged"] += 1
        store.last_reload = ReloadResult(time.time(), True, "published" if changed else "unchanged")
        if not changed:
            log_event(log, logging.INFO, "fleet_unchanged", source=self.source.name, version=store.snapshot.version)
            return
        log_event(
            log,
            logging.INFO,
            "fleet_published",
            source=self.source.name,
            version=store.snapshot.version,
            stacks=len(fleet.stacks),
            services=len(fleet.services),
            containers=len(fleet.containers),
        )
        wanted = store.self_host_wanted
        if wanted and not store.snapshot.self_host_uuid:
            log_event(
                log,
                logging.WARNING,
                "self_host_missing",
                self_host=wanted,
                hosts=",".join(h.name or h.uuid for h in fleet.hosts) or "none",
            )
        await self.keep(fleet, store.index, coalesce=follows_objects, changes=changes if follows_objects else None)

    async def keep(
        self, fleet: FleetView, index: int, *, coalesce: bool = False, changes: list[ObjectChange] | None = None
    ) -> None:
        """Write the kept copy: at once for a whole fleet read (a restart must not repeat an
        index a client saw); at most every few seconds for a source that follows objects, whose
        indexes are its own revisions (a copy a few seconds old only means catching up)."""
        if self.kept is None:
            return
        try:
            if coalesce:
                await self.kept.save_soon(fleet, index, changes)
            else:
                await self.kept.save_in_background(fleet, index)
            self._kept_error = None
        except OSError as exc:
            self.unwritable(exc)

    def unwritable(self, exc: OSError) -> None:
        """The kept copy cannot be written: indexes follow the clock from now on (so a restart
        cannot repeat one), said once, not on every reload."""
        assert self.kept is not None
        self.store.clock_indexes = True
        self.store.kept_error = str(exc)
        if self._kept_error != str(exc):
            log_event(
                log,
                logging.WARNING,
                "kept_copy_unwritable",
                path=str(self.kept.path),
                error=str(exc),
                indexes="from the clock in ms, so that a restart cannot repeat one",
            )
        self._kept_error = str(exc)

    def check_kept(self) -> None:
        if self.kept is None:
            return
        try:
            self.kept.check_writable()
        except OSError as exc:
            self.unwritable(exc)

    def restore(self) -> None:
        if self.kept is None:
            return
        try:
            fleet, index = self.kept.load()
        except FleetError as exc:
            log_event(log, logging.INFO, "kept_copy_not_used", path=str(self.kept.path), reason=exc.problem)
            return
        self.store.restore(fleet, index)
        log_event(
            log,
            logging.INFO,
            "kept_copy_restored",
            path=str(self.kept.path),
            version=self.store.snapshot.version,
            containers=len(fleet.containers),
        )

    async def run(self, updates: AsyncIterator[SourceResult]) -> None:
        async for result in updates:
            await self.apply(result)
            self.first_result.set()


def source_for(settings: MetadataSettings) -> FleetSource:
    """``--source``: ``etcd://HOST:PORT[,...]/PREFIX`` or ``file:PATH``; else the ``--data`` file."""
    if settings.source.startswith("etcd://"):
        hosts, prefix = parse_etcd_source(settings.source)
        return EtcdSource(
            endpoints_from_flags(hosts, settings),
            prefix,
            idle_timeout=settings.etcd_idle_timeout,
            debounce=settings.etcd_debounce,
        )
    path = settings.source[len("file:") :] if settings.source.startswith("file:") else settings.data
    return FileSource(path, settings.poll_interval, use_inotify=settings.watch == "auto")


def make_runner(app: web.Application) -> web.AppRunner:
    """The runner production and tests serve ``app`` with: no access log, a bounded graceful
    shutdown, the keep-alive of ``--keepalive-timeout``, and aiohttp's own errors logged by
    ``RequestErrorLog`` (a malformed request is a throttled line, not a traceback)."""
    return web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=5,
        keepalive_timeout=app[SETTINGS].keepalive_timeout,
        logger=RequestErrorLog(log),
    )


def create_app(settings: MetadataSettings, source: FleetSource | None = None) -> web.Application:
    """The metadata application. ``source`` defaults to the ``--data`` file."""
    app = web.Application(middlewares=[request_tracker])
    app[SETTINGS] = settings
    app[IDENTITY] = ClientIdentity(settings.xff, settings.xff_trusted)
    app[GATE] = ConnectionGate(settings.max_connections_per_client, settings.max_connections, identity=app[IDENTITY])
    app[LONGPOLLS] = LongPollSlots(settings.max_longpolls_per_client, settings.longpoll_limit)
    app[COUNTERS] = MetadataCounters()
    app[STORE] = VersionedStore(self_host_uuid=settings.self_host)
    fleet_source = source or source_for(settings)
    app[SOURCE] = fleet_source

    async def follow_source(app: web.Application) -> AsyncIterator[None]:
        store = app[STORE]
        follower = SourceFollower(
            fleet_source, store, KeptCopy(settings.state_file) if settings.state_file else None, app[COUNTERS]
        )
        follower.restore()
        follower.check_kept()
        updates = fleet_source.updates()
        task = asyncio.create_task(follower.run(updates), name="metadata-source")
        # Without a kept copy, serve the source's data from the first request unless it takes
        # long to come (etcd unreachable): then start with nothing and let it arrive later.
        # With one, serve it at once and catch up (a first etcd list of 100,000 objects takes
        # longer than the wait: every restart would have waited all of it).
        try:
            if not store.has_data:
                async with asyncio.timeout(FIRST_LOAD_WAIT):
                    await follower.first_result.wait()
        except TimeoutError:
            log_event(
                log,
                logging.WARNING,
                "source_not_ready",
                source=fleet_source.name,
                waited_s=FIRST_LOAD_WAIT,
                serving="nothing yet",
            )
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, fleet_source.request_reload)
        yield
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await updates.aclose()  # type: ignore[attr-defined]
        if follower.kept is not None:
            await follower.kept.flush()

    async def report_status(app: web.Application) -> AsyncIterator[None]:
        """The host's report of what it serves, in etcd (``host_status.py``); after the
        source in the startup, so its first report has the first fleet, and before it in the
        cleanup, so the lease is revoked while the service still serves."""
        assert isinstance(fleet_source, EtcdSource)
        reporter = HostStatusReporter(
            EtcdClient(fleet_source.endpoints),
            fleet_source,
            app[STORE],
            interval=settings.status_interval,
            ttl=settings.status_ttl,
        )
        app[HOST_STATUS] = reporter
        task = asyncio.create_task(reporter.run(), name="metadata-host-status")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await reporter.close()

    async def release_waiters(app: web.Application) -> None:
        app[STORE].close()

    app.cleanup_ctx.append(follow_source)
    if isinstance(fleet_source, EtcdSource) and settings.status_interval > 0:
        app.cleanup_ctx.append(report_status)
    app.on_shutdown.append(release_waiters)
    add_routes(app)
    return app
