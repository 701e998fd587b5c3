"""Keeps the answers table in step with the metadata service by long-polling its version.

On a new version it fetches the whole tree once, rebuilds the table and swaps it in; the
client caches are cleared only when the answers really changed. While metadata is unreachable
it keeps answering from the last table, retries with backoff, and logs the outage once when it
starts and once when it ends. The last good fleet is kept on disk for restarts.

At start, metadata not answering yet is no outage: both services are usually started together
(compose, systemd, ``scripts/run.sh``), and the DNS service asks before metadata listens. Until
it has reached metadata once, the follower retries quietly (debug lines) for a grace period,
and says ERROR only if metadata is still unreachable after it. Once it has reached metadata,
losing it is logged at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from urllib.parse import urlsplit

import aiohttp

from shared.fleet_changes import ObjectChange
from shared.fleet_document import FLEET_PATH, decode_fleet_delta, decode_fleet_document
from shared.fleet_index import FleetIndex, FleetView
from shared.kept_copy import KeptCopy
from shared.logs import log_event
from shared.model import Fleet, FleetError

log = logging.getLogger("dns.metadata")

STARTUP_GRACE = 10.0
"""Seconds a follower that has never reached metadata retries quietly before it logs the outage:
long enough for a metadata service started at the same time to load its fleet and listen."""

STARTUP_MAX_BACKOFF = 1.0
"""The longest wait between retries within the grace period: metadata coming up is answered
within a second, not after a backoff grown for an outage."""


def version_index(version: str) -> int:
    """The counter part of a metadns version (``<index>-<hash>``); other servers' versions give 0."""
    head = version.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


class VersionFollower:
    def __init__(
        self,
        base_url: str,
        apply: Callable[[FleetView, int], Awaitable[None]],
        *,
        apply_changes: Callable[[FleetView, list[ObjectChange], int], Awaitable[None]] | None = None,
        max_wait: int = 30,
        kept: KeptCopy | None = None,
        max_backoff: float = 30.0,
        startup_grace: float = STARTUP_GRACE,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.apply = apply
        self.apply_changes = apply_changes
        # What this host serves, updated per object by the metadata service's deltas
        # (``?since=``); None until a whole document came, or against another rancher-metadata.
        self.fleet: FleetIndex | None = None
        self.deltas = 0  # versions caught up with by their changes alone
        self.waits_on_changes = True  # False against a metadata service without ?since=
        self.max_wait = max_wait
        self.kept = kept
        self.max_backoff = max_backoff
        self.startup_grace = startup_grace
        self.version: str | None = None
        # None: never reached yet (within or past the grace period); then True or False.
        self.reachable: bool | None = None
        self.failures = 0  # failed attempts in a row: the current outage's, or the start's
        self.started = time.monotonic()
        self.restored: int | None = None
        parts = urlsplit(self.base_url)
        self.fleet_url: str | None = f"{parts.scheme}://{parts.netloc}{FLEET_PATH}"
        # What a fleet update runs inside: the process's collector policy, when it has one.
        self.updating: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext

    def load_kept(self) -> tuple[FleetView, int] | None:
        """The kept fleet to start from before metadata has answered, if there is a usable one."""
        if self.kept is None:
            return None
        try:
            fleet, index = self.kept.load()
        except FleetError as exc:
            log_event(log, logging.INFO, "kept_copy_not_used", path=str(self.kept.path), reason=exc.problem)
            return None
        self.restored = index
        if self.kept.version and isinstance(fleet, FleetIndex) and self.fleet_url is not None:
            # What changed since then, when metadata still has it, is all there is to fetch.
            self.fleet, self.version = fleet, self.kept.version
        log_event(
            log, logging.INFO, "kept_copy_restored", path=str(self.kept.path), serial=index, version=self.kept.version
        )
        return fleet, index

    def in_grace(self) -> bool:
        """Never reached metadata, and started less than the grace period ago."""
        return self.reachable is None and time.monotonic() - self.started < self.startup_grace

    async def run(self) -> None:
        backoff = 0.5
        self.started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=self.max_wait + 15, connect=5)
        async with aiohttp.ClientSession(timeout=timeout, headers={"Accept": "application/json"}) as session:
            while True:
                try:
                    await self.step(session)
                    backoff = 0.5
                except (aiohttp.ClientError, TimeoutError, ValueError, FleetError) as exc:
                    self.failures += 1
                    quiet = self.in_grace()
                    self.report_failure(str(exc) or type(exc).__name__, quiet, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, STARTUP_MAX_BACKOFF if quiet else self.max_backoff, self.max_backoff)

    def report_failure(self, error: str, quiet: bool, retry_in: float) -> None:
        """One line per failed attempt: debug within the start's grace period and during an
        outage already said; the error when an outage starts."""
        if quiet:
            log_event(
                log,
                logging.DEBUG,
                "metadata_not_yet_reachable",
                url=self.base_url,
                error=error,
                attempt=self.failures,
                retry_in=retry_in,
            )
        elif self.reachable is not False:
            serving = self.version or ("kept copy" if self.restored is not None else "no data yet")
            log_event(
                log,
                logging.ERROR,
                "metadata_unreachable",
                url=self.base_url,
                error=error,
                serving=serving,
                retry=f"exponential backoff up to {int(self.max_backoff)}s",
                attempts=self.failures,
            )
            self.reachable = False
        else:
            log_event(
                log, logging.DEBUG, "metadata_retry_failed", url=self.base_url, error=error, attempt=self.failures
            )

    async def fetch_changes(
        self, session: aiohttp.ClientSession, *, wait: bool = False
    ) -> tuple[str, list[ObjectChange]] | None:
        """What changed since the version this host serves (``?since=``), against the fleet it
        serves; with ``wait``, once there is a change (or ``max_wait`` ran out: then the version
        is this host's and nothing changed). None when the metadata service has not kept those
        changes (410) or does not know ``since`` (an older one answers the whole document):
        then the whole document."""
        if self.fleet_url is None or self.fleet is None or self.version is None:
            return None
        fleet = self.fleet
        params = {"since": self.version}
        if wait:
            params.update({"wait": "true", "maxWait": str(self.max_wait)})
        async with session.get(self.fleet_url, params=params) as resp:
            if resp.status in (404, 410):
                return None
            resp.raise_for_status()
            body = await resp.read()
        if b'"since":' not in body[:256]:
            self.waits_on_changes = False  # a metadata service without deltas: /version, then the document
            return None
        return await asyncio.to_thread(decode_fleet_delta, body, fleet)

    async def fetch(self, session: aiohttp.ClientSession, version: str) -> tuple[str, FleetView]:
        """The fleet as one compact document from metadns's metadata service, or the whole
        tree from any rancher-metadata compatible one."""
        if self.fleet_url is not None:
            async with session.get(self.fleet_url) as resp:
                if resp.status == 404:
                    self.fleet_url = None
                else:
                    resp.raise_for_status()
                    return await asyncio.to_thread(decode_fleet_document, await resp.read(), version)
        async with session.get(self.base_url) as resp:
            resp.raise_for_status()
            tree = await asyncio.to_thread(json.loads, await resp.read())
        if not isinstance(tree, dict):
            raise ValueError("metadata tree is not an object")
        # Any rancher-metadata: validate what it sent, off the event loop.
        return str(tree.get("version") or version), await asyncio.to_thread(Fleet.from_mapping, tree)

    async def step(self, session: aiohttp.ClientSession) -> None:
        """One wait for the next version and its application: with a fleet of its own, by the
        changes alone (one long-poll on ``?since=``, one request per version); otherwise by a
        ``/version`` long-poll and the whole document."""
        if self.waits_on_changes and self.fleet is not None and self.version is not None:
            started = time.perf_counter()
            delta = await self.fetch_changes(session, wait=True)
            if delta is not None:
                self._reached(delta[0])
                if delta[0] != self.version:  # else the wait ran out, and nothing changed
                    await self._apply_delta(*delta, started)
                return
            if self.waits_on_changes:  # 410: the changes since our version are gone
                self._reached(self.version)
                await self._apply_whole(session, self.version, started)
                return
        url = f"{self.base_url}/version"
        params = {"wait": "true", "value": self.version, "maxWait": str(self.max_wait)} if self.version else None
        async with session.get(url, params=params) as resp:
            resp.raise_for_status()
            version = await resp.json(content_type=None)
        if not isinstance(version, str):
            raise ValueError("metadata /version is not a string")
        self._reached(version)
        if version == self.version:
            return
        started = time.perf_counter()
        delta = await self.fetch_changes(session)
        if delta is not None and self.fleet is not None:
            await self._apply_delta(*delta, started)
        else:
            await self._apply_whole(session, version, started)

    def _reached(self, version: str) -> None:
        if self.reachable is not True:
            if self.reachable is False:
                log_event(log, logging.WARNING, "metadata_reachable", url=self.base_url, version=version)
            elif self.failures:  # reached within the start's grace period: said, but no warning
                log_event(
                    log,
                    logging.INFO,
                    "metadata_reachable",
                    url=self.base_url,
                    version=version,
                    after_attempts=self.failures + 1,
                )
            self.reachable = True
        self.failures = 0

    async def _apply_delta(self, applied: str, changes: list[ObjectChange], started: float) -> None:
        assert self.fleet is not None
        fleet: FleetView = self.fleet
        self.fleet.apply(changes)  # on the event loop, in one step: no query sees half of it
        self.deltas += 1
        if self.apply_changes is not None:
            await self.apply_changes(fleet, changes, version_index(applied))
        else:
            with self.updating():
                await self.apply(fleet, version_index(applied))
        await self._applied(applied, fleet, changes, started)

    async def _apply_whole(self, session: aiohttp.ClientSession, version: str, started: float) -> None:
        # Parsing a large fleet takes a while: it happens off the event loop, so queries keep
        # being answered meanwhile.
        with self.updating():
            applied, whole = await self.fetch(session, version)
            # A metadns document comes as an index, kept so the next versions come as changes.
            self.fleet = whole if isinstance(whole, FleetIndex) else None
            fleet = whole
            await self.apply(fleet, version_index(applied))
        await self._applied(applied, fleet, None, started)

    async def _applied(
        self, applied: str, fleet: FleetView, changes: list[ObjectChange] | None, started: float
    ) -> None:
        self.version = applied
        log_event(
            log,
            logging.INFO,
            "answers_updated",
            version=applied,
            containers=len(fleet.containers),
            changed="all" if changes is None else len(changes),
            build_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        if self.kept is not None:
            try:
                await self.kept.save_soon(fleet, version_index(applied), changes, version=applied)
            except OSError as exc:
                log_event(log, logging.WARNING, "kept_copy_unwritable", path=str(self.kept.path), error=str(exc))
