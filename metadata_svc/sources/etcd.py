"""The fleet from etcd: every host's metadata service follows the same prefix.

Follow algorithm (what Kubernetes' reflector and confd do, with their users' lessons):

1. **List** the prefix at one revision R (paged, every page pinned to R).
2. **Watch** from the revision the content last changed + 1 (so the deletes since then replay,
   and every host agrees on that revision), with progress notifications and the leader required
   (a watch on a member cut off from its cluster would otherwise hang quietly), read with an
   idle timeout. Each watch response is applied as a unit, never half.
3. Bursts are **debounced** (``debounce`` seconds): a mass restart rebuilds the fleet once, not
   once per event.
4. **Compaction** ("required revision has been compacted"): list again, watch again.
   A lost connection or a member without a leader: the next endpoint, with backoff and jitter,
   resuming from the last revision seen. Every ``resync`` seconds the whole prefix is read again
   and compared, as a safety net (etcd 3.4.23 has watch bugs fixed only later in 3.4).
5. Every object is validated on its own (``shared.etcd_fleet``): a bad one is held back and
   reported with its key, and never keeps the rest of the fleet from being served.

The version index is the etcd revision at which the content last changed (the newest object's
``mod_revision``, or a later delete): the same data has the same version on every host.
An outage (no endpoint answers, no quorum) keeps the last fleet served; it is said once when it
starts and once when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from metadata_svc.sources import FleetUpdate, SourceResult
from shared.collector import paused_then_frozen
from shared.etcd import COMPACTED, EtcdClient, EtcdEndpoints, EtcdError, WatchResult, prefix_end
from shared.etcd_fleet import STATUS_PREFIX, is_status_key
from shared.etcd_objects import EtcdObjects
from shared.fleet_changes import ObjectChange
from shared.logs import log_event
from shared.model import FleetError

log = logging.getLogger("metadata.etcd")


def parse_etcd_source(text: str) -> tuple[str, str]:
    """``etcd://HOST:PORT[,HOST:PORT...]/PREFIX`` -> (endpoints, prefix ending in "/")."""
    if not text.startswith("etcd://"):
        raise ValueError(f"not an etcd:// source: {text!r}")
    rest = text[len("etcd://") :]
    hosts, _, prefix = rest.partition("/")
    if not hosts:
        raise ValueError(f"{text!r}: no etcd endpoint")
    prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/metadns/v1/"
    return hosts, prefix


@dataclass
class EtcdStatus:
    """What ``/status`` shows of the source."""

    endpoint: str = ""
    revision: int = 0
    connected: bool = False
    problem: str = ""
    held_back: dict[str, str] = field(default_factory=dict)
    heard_at: float = 0.0  # time.monotonic() of etcd's last answer (watch progress included)


class EtcdSource:
    def __init__(
        self,
        endpoints: EtcdEndpoints,
        prefix: str,
        *,
        debounce: float = 0.1,
        resync: float = 300.0,
        idle_timeout: float = 30.0,
        backoff_max: float = 5.0,
    ) -> None:
        self.endpoints = endpoints
        self.prefix = prefix.encode()
        self.name = f"etcd://{','.join(u.split('://', 1)[1] for u in endpoints.urls)}{prefix}"
        self.debounce = debounce
        self.resync = resync
        self.idle_timeout = idle_timeout
        self.backoff_max = backoff_max
        self.status = EtcdStatus()
        self._reload = asyncio.Event()
        self._objects = EtcdObjects()
        # A debounce window's watch responses, applied together (each one whole).
        self._puts: dict[str, bytes] = {}
        self._deletes: set[str] = set()
        self._created: dict[str, int] = {}
        self._first = True  # the first list: what changed is everything, said as "not known"
        self._changed_at = 0  # the revision at which the content last changed
        self._revision = 0  # the revision we are at (the watch resumes after it)
        self._listed_at = 0.0
        self._replay = True  # watch from the content's revision (False once that history is compacted)

    @property
    def served(self) -> tuple[int, int]:
        """(content revision, watch revision) of the fleet the store serves, for the host's
        status report (``metadata_svc/host_status.py``). Both move only together with what is
        published (applying a watch response, building and publishing run without yielding to
        the event loop), so a reader never sees a revision that is not served yet. The watch
        covers ``status/`` too: the reporter's own writes coming back through it are how it
        tells a watch that stopped delivering."""
        return self._changed_at, self._revision

    def request_reload(self) -> None:
        self._reload.set()

    def _key(self, raw: bytes) -> str:
        return raw[len(self.prefix) :].decode("utf-8", "replace")

    async def updates(self) -> AsyncIterator[SourceResult]:
        client = EtcdClient(self.endpoints)
        backoff = 0.2
        try:
            while True:
                try:
                    if self._revision == 0:
                        listed = await self._list(client)
                        if listed is not None:
                            yield listed
                    async for update in self._follow(client):
                        yield update
                        backoff = 0.2
                except EtcdError as exc:
                    if exc.code == COMPACTED:
                        log_event(
                            log, logging.WARNING, "etcd_compacted", revision=self._revision, action="listing again"
                        )
                        self._revision, self._replay = 0, False
                        continue
                    self._outage(client, str(exc))
                except (OSError, ValueError) as exc:
                    self._outage(client, f"{type(exc).__name__}: {exc}")
                else:
                    continue  # a watch that ended cleanly (resync, reload): go on at once
                client.rotate()
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.backoff_max)
        finally:
            await client.close()

    def _outage(self, client: EtcdClient, problem: str) -> None:
        if self.status.connected or not self.status.problem:
            log_event(
                log,
                logging.WARNING,
                "etcd_unreachable",
                endpoint=client.endpoint,
                problem=problem,
                serving=f"revision {self._changed_at}" if not self._first else "nothing yet",
            )
        self.status.connected = False
        self.status.problem = problem

    def _back(self, client: EtcdClient) -> None:
        if not self.status.connected:
            if self.status.problem:
                log_event(log, logging.INFO, "etcd_back", endpoint=client.endpoint, revision=self._revision)
            self.status.connected = True
            self.status.problem = ""
        self.status.endpoint = client.endpoint
        self.status.revision = self._revision
        self.status.heard_at = time.monotonic()

    async def _list(self, client: EtcdClient) -> FleetUpdate | FleetError | None:
        kvs, revision = await client.list_prefix(self.prefix)
        status = self.prefix + STATUS_PREFIX.encode()  # the hosts' reports: not content (host_status.py)
        kvs = [kv for kv in kvs if not kv.key.startswith(status)]
        self._puts = {self._key(kv.key): kv.value for kv in kvs}
        self._created = {self._key(kv.key): kv.create_revision for kv in kvs}
        self._deletes = {key for key in self._objects.stored_keys() if key not in self._puts}
        changed_at = max((kv.mod_revision for kv in kvs), default=0)
        if self._first:
            # Every key at once: seconds at 100k, off the event loop (so the kept copy stays
            # served meanwhile) and without the collector walking what it builds. Nothing
            # reads the objects before the first update is handed out, and the revisions
            # (``served``) move only once it is.
            puts, deletes, created = self._take_pending()
            try:
                first: list[ObjectChange] | None = await asyncio.to_thread(
                    _apply_paused, self._objects, puts, deletes, created
                )
            except FleetError as exc:
                return FleetError(f"{self.name} {exc.where}", exc.problem)
        else:
            first = None
        self._changed_at = changed_at
        # Watch from the newest object's revision: the deletes since then replay, so this host
        # learns the revision the content last changed at, like every host that saw them live
        # (unless that history is compacted away: then from the list's revision).
        self._revision = min(self._changed_at, revision) if self._replay and self._changed_at else revision
        self._replay = True
        self._listed_at = time.monotonic()
        self._back(client)
        return self._build() if first is None else self._update(first)

    async def _follow(self, client: EtcdClient) -> AsyncIterator[SourceResult]:  # noqa: C901 (the watch loop: batching, errors and resync in one place)
        queue: asyncio.Queue[WatchResult | BaseException] = asyncio.Queue()

        async def read() -> None:
            try:
                async for result in client.watch(
                    self.prefix, prefix_end(self.prefix), self._revision + 1, self.idle_timeout
                ):
                    queue.put_nowait(result)
                queue.put_nowait(EtcdError("watch stream ended"))
            except BaseException as exc:  # handed to the loop below, which raises it
                queue.put_nowait(exc)

        reader = asyncio.create_task(read(), name="etcd-watch")
        try:
            while True:
                timeout = max(self.resync - (time.monotonic() - self._listed_at), 0.0)
                try:
                    async with asyncio.timeout(timeout):
                        first = await _first_of(queue, self._reload)
                except TimeoutError:
                    first = None
                if first is None:  # the safety net, or SIGHUP: read everything again, compare
                    self._reload.clear()
                    update = await self._list(client)
                    if update is not None:
                        yield update
                    continue
                results = [first]
                deadline = asyncio.get_running_loop().time() + self.debounce
                while isinstance(results[-1], WatchResult):
                    remaining = deadline - asyncio.get_running_loop().time()
                    if remaining <= 0:
                        break
                    try:
                        async with asyncio.timeout(remaining):
                            results.append(await queue.get())
                    except TimeoutError:
                        break
                changed = False
                for result in results:
                    if isinstance(result, BaseException):
                        if changed:  # what came before the error is applied and served first
                            update = self._build()
                            if update is not None:
                                yield update
                        raise result
                    if result.canceled or result.compact_revision:
                        raise EtcdError(f"watch canceled at compaction revision {result.compact_revision}", COMPACTED)
                    changed = self._apply(result) or changed
                self._back(client)
                if changed:
                    update = self._build()
                    if update is not None:
                        yield update
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    def _apply(self, result: WatchResult) -> bool:
        """Take one watch response in as a unit (applied with the rest of its debounce window);
        True when an object changed."""
        changed = False
        for event in result.events:
            key = self._key(event.kv.key)
            if is_status_key(key):  # a host's report of what it serves: never content (host_status.py)
                continue
            if key in self._puts:
                before: bytes | None = self._puts[key]
            else:
                before = None if key in self._deletes else self._objects.value(key)
            if event.deleted:
                self._puts.pop(key, None)
                self._created.pop(key, None)
                self._deletes.add(key)
                moved = before is not None
            else:
                self._deletes.discard(key)
                self._puts[key] = event.kv.value
                self._created[key] = event.kv.create_revision
                moved = before != event.kv.value
            if moved:
                changed = True
                self._changed_at = max(self._changed_at, event.kv.mod_revision)
        self._revision = max(self._revision, result.revision)
        return changed

    def _take_pending(self) -> tuple[dict[str, bytes], set[str], dict[str, int]]:
        pending = self._puts, self._deletes, self._created
        self._puts, self._deletes, self._created = {}, set(), {}
        return pending

    def _build(self) -> FleetUpdate | FleetError | None:
        """Apply what came in since the last build; the update, or None when nothing served
        changed."""
        try:
            changes = self._objects.apply(*self._take_pending())
        except FleetError as exc:
            return FleetError(f"{self.name} {exc.where}", exc.problem)
        return self._update(changes)

    def _update(self, changes: list[ObjectChange]) -> FleetUpdate | None:
        held = self._objects.held
        moved = held.moved()
        newly = [key for key in sorted(moved) if key in held]
        for key in newly[:HELD_LINES]:
            log_event(log, logging.ERROR, "etcd_object_held_back", key=self.prefix.decode() + key, problem=held[key])
        if len(newly) > HELD_LINES:
            log_event(log, logging.ERROR, "etcd_objects_held_back", count=len(newly), said=HELD_LINES)
        self.status.held_back = held
        first, self._first = self._first, False
        if not changes and not first:
            return None
        return FleetUpdate(self._objects.index, self._changed_at, None if first else changes)


def _apply_paused(
    objects: EtcdObjects, puts: dict[str, bytes], deletes: set[str], created: dict[str, int]
) -> list[ObjectChange]:
    with paused_then_frozen():
        return objects.apply(puts, deletes, created)


HELD_LINES = 20
"""Keys held back said one line each per update; beyond that, one line with their count (a
stack deleted holds back every container of it)."""


async def _first_of(
    queue: asyncio.Queue[WatchResult | BaseException], reload: asyncio.Event
) -> WatchResult | BaseException | None:
    """The next watch result, or None when a reload is asked for first."""
    if reload.is_set():
        return None
    getter = asyncio.ensure_future(queue.get())
    waiter = asyncio.ensure_future(reload.wait())
    try:
        done, _ = await asyncio.wait({getter, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if getter in done:
        return getter.result()
    getter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await getter
    if getter.done() and not getter.cancelled():  # it won the race after all: keep its result
        return getter.result()
    return None
