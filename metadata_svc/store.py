"""The versioned store: one immutable snapshot at a time, and long-poll waiters on it.

Every change of content gets a new, larger ``index``; publishing identical content changes
nothing, so watchers never wake for nothing. Waiters block on one ``asyncio.Event`` per snapshot:
a publish sets it and every waiter resumes at once, while idle waiters cost no CPU at all (no
periodic broadcast, unlike rancher-metadata's 5 s ticker).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from metadata_svc.changes import ChangeLog
from metadata_svc.lazy_tree import LazyMapping, TreeTop
from metadata_svc.render import TEXT, Format, comparable, render, with_self
from metadata_svc.tree import ClientTree, Tree, TreeBuilder
from shared.fleet_changes import ObjectChange
from shared.fleet_document import fleet_document_writer
from shared.fleet_index import FleetView
from shared.model import Fleet


@dataclass
class Snapshot:
    """One published fleet with its index and version, and its trees built on first use."""

    fleet: FleetView
    index: int
    self_host_uuid: str = ""
    published_at: float = field(default_factory=time.time)
    # The content hash at publish time: an index updated per object (``FleetIndex``) moves on,
    # while this snapshot's version must not.
    digest: str = ""
    _builders: dict[str, TreeBuilder] = field(default_factory=dict, repr=False)
    _fleet_json: asyncio.Future[bytes] | None = field(default=None, repr=False)
    _trees: dict[str, Tree] = field(default_factory=dict, repr=False)
    _selves: LRUCache[tuple[str, str], LazyMapping] = field(default_factory=lambda: LRUCache(maxsize=4096), repr=False)
    # Rendered bodies, bounded in bytes: a few whole trees in each format and API version.
    _rendered: LRUCache[tuple[str, tuple[str, ...], str], bytes] = field(
        default_factory=lambda: LRUCache(maxsize=128 << 20, getsizeof=len), repr=False
    )

    def __post_init__(self) -> None:
        if not self.digest:
            self.digest = self.fleet.digest

    @property
    def version(self) -> str:
        """Rancher-style ``<counter>-<content hash>``: ordered, and equal for equal content."""
        return f"{self.index}-{self.digest[:32]}"

    async def fleet_json(self) -> bytes:
        """``{"version", "index", "fleet"}`` serialised once per snapshot, without secrets: the
        records taken on the event loop, encoded in a worker thread (a second at 100k, which
        every request on the loop waited for), one encoding for every request that asks."""
        if self._fleet_json is None:
            write = fleet_document_writer(self.fleet, self.version, self.index)
            self._fleet_json = asyncio.ensure_future(asyncio.to_thread(write))
        return await asyncio.shield(self._fleet_json)

    def _builder(self, api: str) -> TreeBuilder:
        builder = self._builders.get(api)
        if builder is None:
            builder = TreeBuilder(self.fleet, api, self.version, self.self_host_uuid)
            self._builders[api] = builder
        return builder

    def default_tree(self, api: str) -> Tree:
        tree = self._trees.get(api)
        if tree is None:
            tree = self._builder(api).default_tree()
            self._trees[api] = tree
        return tree

    def body(self, api: str, segments: Sequence[str], fmt: Format, value: Any) -> bytes:
        """``value`` (what ``segments`` found in the tree of ``api``) rendered in ``fmt``, rendered
        once per snapshot and shared by every request and long-poll waiter that asks the same:
        the whole tree at 1,000 containers is 2.4 MB, and rendering it per request let four
        clients in a loop stall everyone else. What is a client's own (``self``) is rendered per
        request; it is small."""
        if _personal(segments, value):
            if isinstance(value, ClientTree) and fmt is not TEXT:
                base = self._rendered_once(
                    (api, ("<without self>",), fmt.name), lambda: render(value.without_self(), fmt).encode()
                )
                return with_self(base.decode(), render({"self": value.own_self}, fmt), fmt).encode()
            return render(value, fmt).encode()
        return self._rendered_once((api, tuple(segments), fmt.name), lambda: render(value, fmt).encode())

    def gzipped(self, api: str, segments: Sequence[str], fmt: Format, value: Any) -> bytes | None:
        """The shared ``body`` compressed once, for clients that accept gzip (Go's HTTP client asks
        for it by default): 400 whole-tree long-polls woken at once are 1 GB as they are, 60 MB
        compressed. None where the body is a client's own or too small to be worth it."""
        if _personal(segments, value):
            return None

        def compress() -> bytes:
            body = self.body(api, segments, fmt, value)
            return gzip.compress(body, compresslevel=5, mtime=0) if len(body) >= 8192 else b""

        return self._rendered_once((api, tuple(segments), f"{fmt.name}+gzip"), compress) or None

    def comparable(self, api: str, segments: Sequence[str], value: Any) -> bytes:
        """``render.comparable`` of ``value`` as UTF-8, once per snapshot where it is the same
        for all (a waiter compares it with its ``value=`` on every wake-up)."""
        if _personal(segments, value):
            return comparable(value).encode()
        return self._rendered_once((api, tuple(segments), "<comparable>"), lambda: comparable(value).encode())

    def _rendered_once(self, key: tuple[str, tuple[str, ...], str], make: Callable[[], bytes]) -> bytes:
        found = self._rendered.get(key)
        if found is None:
            found = self._rendered[key] = make()
        return found

    def tree_for(self, api: str, client_ip: str) -> TreeTop:
        """The tree a client sees (the default one, with ``self`` its own when it is a container),
        for ``lookup.walk``: built only as far as a path goes, the whole of it once per snapshot."""
        return TreeTop(self._builder(api), self._own_self(api, client_ip), lambda: self.default_tree(api))

    def _own_self(self, api: str, client_ip: str) -> LazyMapping | None:
        container = self.fleet.container_by_ip(client_ip)
        if container is None:
            return None
        key = (api, client_ip)
        found = self._selves.get(key)
        if found is None:
            found = self._selves[key] = LazyMapping(self._builder(api).self_parts(container))
        return found


def _personal(segments: Sequence[str], value: Any) -> bool:
    """Whether what a path found depends on who asks (its ``self``): not shared between clients."""
    return bool(segments and segments[0].lower() == "self") or isinstance(value, ClientTree)


@dataclass(frozen=True)
class ReloadResult:
    at: float
    ok: bool
    message: str


class VersionedStore:
    """Holds the current snapshot; ``publish`` swaps it, ``wait_for_change`` long-polls it."""

    def __init__(self, fleet: FleetView | None = None, index: int = 0, self_host_uuid: str = "") -> None:
        self._self_host_uuid = self_host_uuid
        self._snapshot = Snapshot(fleet or Fleet.empty(), index, self._pick_host(fleet, self_host_uuid))
        self.changes = ChangeLog()
        self._changed = asyncio.Event()
        self._closed = False
        self.waiting = 0
        self.has_data = fleet is not None
        self.last_reload: ReloadResult | None = None
        # Without a writable kept copy a restart would count from the last copy that was written
        # (or from 0) and hand out indexes again, for other content. Then new indexes are at
        # least the wall clock in milliseconds: still only growing, across restarts too.
        self.clock_indexes = False
        self.kept_error = ""

    @staticmethod
    def _pick_host(fleet: FleetView | None, wanted: str) -> str:
        if fleet is None:
            return ""
        if not wanted:
            return fleet.hosts[0].uuid if len(fleet.hosts) == 1 else ""
        # the first host, in fleet order, named so exactly (a lookup: every version asks)
        return next((h.uuid for h in fleet.hosts_called(wanted) if wanted in (h.uuid, h.name)), "")

    @property
    def self_host_wanted(self) -> str:
        """``--self-host`` as given (a name or uuid), whether or not the fleet has it."""
        return self._self_host_uuid

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def index(self) -> int:
        return self._snapshot.index

    def publish(self, fleet: FleetView, *, index: int | None = None, changes: list[ObjectChange] | None = None) -> bool:
        """Swap in ``fleet``; return False (and keep the version) when its content is unchanged.
        ``changes``: what changed since the current snapshot, when the source knows it (then a
        follower catches up with them alone, ``ChangeLog``)."""
        current = self._snapshot
        if self.has_data and fleet.digest == current.digest:
            return False
        new_index = max(current.index + 1, index or 0)
        if self.clock_indexes:
            new_index = max(new_index, int(time.time() * 1000))
        self._snapshot = Snapshot(fleet, new_index, self._pick_host(fleet, self._self_host_uuid))
        self.changes.record(current.version if self.has_data else "", self._snapshot.version, changes)
        self.has_data = True
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    def restore(self, fleet: FleetView, index: int) -> None:
        """Start from a kept copy: same content, same index, so clients see no change."""
        self._snapshot = Snapshot(fleet, index, self._pick_host(fleet, self._self_host_uuid))
        self.changes.record("", self._snapshot.version, None)
        self.has_data = True
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for_change(self, known_index: int, max_wait: float) -> Snapshot:
        """Return the first snapshot whose index differs from ``known_index``, or the current one
        after ``max_wait`` seconds (or at once when the store is closing)."""
        if self._snapshot.index != known_index or self._closed:
            return self._snapshot
        changed = self._changed
        self.waiting += 1
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max_wait):
                    await changed.wait()
        finally:
            self.waiting -= 1
        return self._snapshot

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release every waiter now (graceful shutdown must not wait for maxWait)."""
        self._closed = True
        self._changed.set()
