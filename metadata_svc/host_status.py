"""A host's report of what it serves, in etcd: ``<prefix>status/hosts/<host>`` under a lease.

An operator's first question when a change does not arrive is which host did not get it; Rancher
never showed it. Every metadata service that follows etcd therefore writes, in a key of its own,
the revision it serves, the newest revision it knows of, when it applied what it serves and how
long it has been behind; ``metadns fleet status`` reads them all. The key is never fleet content
(every reader of the fleet skips ``status/``, ``shared/etcd_fleet.py``), so a report moves no
version index and costs the followers no rebuild.

When it is written: when the content revision served changes (at most once a second, so a burst
of changes is one write), and every ``--status-interval`` seconds as a heartbeat, so that the
time of the last write says when the host was last heard. The lease lives ``--status-ttl``
seconds and is kept alive with the heartbeats: a killed or hung host's report vanishes by itself;
on shutdown the lease is revoked and it vanishes at once.

What "behind" means here. The watch brings every change under the prefix, this host's own
reports included; the revision etcd gave a report is a revision that exists. Until the watch has
brought it, the host knows of a revision it has not seen through its watch, so it may be missing
changes: it is behind, from the moment it learned of that revision (the oldest it has not seen).
A watch that delivers shows a lag of a few milliseconds at most, never written (a report is made
before its own write); one that stopped delivering (a stream that hangs, a member that stopped
applying) shows a lag growing with every heartbeat, although the host still reports. A host that
stops altogether writes nothing: ``fleet status`` tells it by its last write's age.

The reporter has an etcd connection of its own and never holds up the service: an etcd outage
costs one throttled log line, and the report is written again when etcd answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections import deque
from importlib import metadata
from typing import Any

from metadata_svc.sources.etcd import EtcdSource
from metadata_svc.store import VersionedStore
from shared.etcd import EtcdClient, EtcdError
from shared.etcd_fleet import host_status_key
from shared.logs import ThrottledLog, log_event

log = logging.getLogger("metadata.status")

COALESCE = 1.0  # seconds: a change of the revision served is written at most this often
TICK = 0.25  # seconds between looks at what is served (two integers compared)
REVOKE_TIMEOUT = 2.0  # seconds a shutdown waits for the lease's revocation


def metadns_version() -> str:
    try:
        return metadata.version("metadns")
    except metadata.PackageNotFoundError:  # pragma: no cover (run from a tree without an install)
        return "unknown"


def reported_host(store: VersionedStore) -> str:
    """The name this host reports under: the uuid of the fleet's host ``--self-host`` names (or
    of the fleet's only host without it); else ``--self-host`` as given (a host not registered
    yet); else this machine's hostname."""
    return store.snapshot.self_host_uuid or store.self_host_wanted or socket.gethostname()


class HostStatusReporter:
    """Writes this host's report (``report``) as described above; ``run`` until cancelled, then
    ``close``."""

    def __init__(
        self,
        client: EtcdClient,
        source: EtcdSource,
        store: VersionedStore,
        *,
        interval: float = 10.0,
        ttl: int = 30,
        coalesce: float = COALESCE,
        tick: float = TICK,
    ) -> None:
        self.client = client
        self.source = source
        self.store = store
        self.interval = interval
        self.ttl = ttl
        self.coalesce = coalesce
        self.tick = tick
        self.keepalive_every = min(interval, ttl / 3)
        self.host = ""  # the name of the key written last
        self.lease = 0
        self.written: dict[str, Any] = {}  # the last report etcd took
        self.writes = 0
        self._content = -1  # the content revision served, as last looked at
        self._applied_at = 0.0
        self._written_content = -1
        self._written_mono = 0.0  # loop time of the last write etcd took
        self._kept_alive_mono = 0.0
        self._not_before = 0.0  # no attempt before this loop time (coalescing, backoff after a failure)
        self._backoff = coalesce
        self._failing = False
        # Revisions of our own writes the watch has not brought yet, with the wall time each was
        # learned: the oldest is where being behind started.
        self._unseen: deque[tuple[int, float]] = deque(maxlen=1024)
        self._failed = ThrottledLog(log, "host_status_unwritten", interval=30.0)

    def _served(self) -> tuple[int, int]:
        """(content revision, watch revision) served; before anything came from etcd, the kept
        copy's revision (what the store serves then) and no watch."""
        content, watch = self.source.served
        return (content, watch) if watch else (self.store.index, 0)

    def _look(self) -> None:
        """Note a new content revision served (and when it came), and forget our own writes the
        watch has brought."""
        content, watch = self._served()
        if content != self._content:
            self._content = content
            reload = self.store.last_reload
            # the publish's own time when this revision was published; else now (within a tick)
            self._applied_at = reload.at if reload is not None and reload.at > self._applied_at else time.time()
        while self._unseen and self._unseen[0][0] <= watch:
            self._unseen.popleft()

    def report(self) -> dict[str, Any]:
        """What this host serves, as written to its key."""
        self._look()
        content, watch = self._served()
        now = time.time()
        behind_since = self._unseen[0][1] if self._unseen else None
        heard = max([watch, *(revision for revision, _ in self._unseen)])
        snapshot = self.store.snapshot
        status = self.source.status
        return {
            "host": reported_host(self.store),
            "revision": content,
            "watch_revision": watch,
            "heard_revision": heard,
            "applied_at": round(self._applied_at, 3),
            "behind_since": round(behind_since, 3) if behind_since is not None else None,
            "lag_s": round(max(now - behind_since, 0.0), 3) if behind_since is not None else 0.0,
            "written_at": round(now, 3),
            "heartbeat_s": self.interval,
            "version": snapshot.version if self.store.has_data else "",
            "metadns": metadns_version(),
            "node": socket.gethostname(),
            "following": status.connected,
            "problem": status.problem,
        }

    def _due(self, now: float) -> bool:
        if now < self._not_before:
            return False
        return self._content != self._written_content or now - self._written_mono >= self.interval

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._look()
            if self._due(loop.time()):
                await self.write()
            await asyncio.sleep(self.tick)

    async def write(self) -> bool:
        """Write the report once (granting, renewing or replacing the lease as needed); False,
        and one throttled line, when etcd did not take it."""
        loop = asyncio.get_running_loop()
        value = self.report()
        host = value["host"]
        try:
            if self.lease and host != self.host:  # --self-host found in the fleet since: move
                await self.client.lease_revoke(self.lease)  # the old report goes with its lease
                log_event(log, logging.INFO, "host_status_renamed", old=self.host, new=host)
                self.lease = 0
            if self.lease and loop.time() - self._kept_alive_mono >= self.keepalive_every:
                if await self.client.lease_keepalive(self.lease) <= 0:
                    self.lease = 0  # expired (etcd was out for longer than the TTL): a new one
                else:
                    self._kept_alive_mono = loop.time()
            if not self.lease:
                self.lease = await self.client.lease_grant(self.ttl)
                self._kept_alive_mono = loop.time()
            key = self.source.prefix + host_status_key(host).encode()
            revision = await self.client.put(key, json.dumps(value, separators=(",", ":")).encode(), self.lease)
        except EtcdError as exc:
            if "lease not found" in str(exc):
                self.lease = 0
            self._failed.note(host=host, problem=str(exc), retry_in_s=round(self._backoff, 1))
            self._failing = True
            self._not_before = loop.time() + self._backoff
            self._backoff = min(self._backoff * 2, self.interval)
            return False
        first = not self.writes
        self.writes += 1
        if first or self._failing or host != self.host:
            log_event(
                log,
                logging.INFO,
                "host_status_written",
                key=key.decode("utf-8", "replace"),
                lease=f"{self.lease:x}",
                ttl_s=self.ttl,
                heartbeat_s=self.interval,
                revision=value["revision"],
            )
        self.host, self.written, self._failing, self._backoff = host, value, False, self.coalesce
        self._unseen.append((revision, time.time()))
        self._written_content = value["revision"]
        self._written_mono = loop.time()
        self._not_before = self._written_mono + self.coalesce
        return True

    async def close(self) -> None:
        """Revoke the lease, so that the report goes at once rather than after its TTL."""
        if self.lease:
            try:
                async with asyncio.timeout(REVOKE_TIMEOUT):
                    await self.client.lease_revoke(self.lease)
            except (EtcdError, TimeoutError) as exc:
                log_event(
                    log, logging.WARNING, "host_status_left", host=self.host, problem=str(exc) or "no answer in time"
                )
            self.lease = 0
        with contextlib.suppress(Exception):
            await self.client.close()
