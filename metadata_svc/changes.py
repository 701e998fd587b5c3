"""The last versions' changes, so that a follower catches up with what changed, not the fleet.

``GET /metadns/v1/fleet?since=V`` answers the objects put and deleted since version V, each once
in its final state (``shared.fleet_document.encode_fleet_delta``), when V is one of the last
versions this service published from one unbroken line of changes. Otherwise (V older than the
window, from before a restart, from another host's history, or a version published without its
changes: a whole reload) it answers ``410 Gone`` and the follower takes the whole document. So
it does when more objects changed since V than ``delta_limit`` allows: a delta is encoded for
each request on the event loop, the whole document once per version in a worker thread, and past
a share of the fleet the two are as large and cost the follower as much to apply (a DNS service
started before the metadata service's first etcd list is at the empty version: at 100,000
containers, its delta was 33.7 MB and 0.55 s of the event loop, the document 33.8 MB).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from shared.fleet_changes import FleetObject, ObjectChange


def delta_limit(objects: int) -> int:
    """The most object changes a delta carries for a fleet of ``objects``: an eighth of it,
    and never fewer than 1,024 (a few milliseconds to encode)."""
    return max(1024, objects // 8)


@dataclass(frozen=True, slots=True)
class _Step:
    before: str
    after: str
    changes: tuple[ObjectChange, ...]


class ChangeLog:
    """The changes of the last ``max_versions`` versions (and at most ``max_changes`` object
    changes in all): a bounded window, like etcd's own history before compaction."""

    def __init__(self, max_versions: int = 4096, max_changes: int = 200_000) -> None:
        self.max_versions = max_versions
        self.max_changes = max_changes
        self._steps: OrderedDict[str, _Step] = OrderedDict()  # by the version they start from
        self._current = ""
        self._held = 0

    def record(self, before: str, after: str, changes: list[ObjectChange] | None) -> None:
        """Version ``after`` follows ``before`` with ``changes``; None: not known (the window
        starts again at ``after``)."""
        if changes is None or before != self._current:
            self._steps.clear()
            self._held = 0
        else:
            self._steps[before] = _Step(before, after, tuple(changes))
            self._held += len(changes)
            while self._steps and (len(self._steps) > self.max_versions or self._held > self.max_changes):
                _, dropped = self._steps.popitem(last=False)
                self._held -= len(dropped.changes)
        self._current = after

    def __contains__(self, version: object) -> bool:
        """Whether ``version`` is in the window (a delta from it could be made)."""
        return version == self._current or version in self._steps

    def since(self, version: str, limit: int | None = None) -> list[ObjectChange] | None:
        """Every object that changed after ``version``, each once (its state then and now);
        None when ``version`` is not in the window, or when more than ``limit`` objects changed
        (counted as the steps are read, so a long window is not walked to learn it)."""
        if version == self._current:
            return []
        if version not in self._steps:
            return None
        first: dict[tuple[str, str], FleetObject | None] = {}
        last: dict[tuple[str, str], FleetObject | None] = {}
        at = version
        while at != self._current:
            step = self._steps[at]
            for change in step.changes:
                key = (change.kind, change.ident)
                first.setdefault(key, change.old)
                last[key] = change.new
            if limit is not None and len(first) > limit:
                return None
            at = step.after
        return [
            ObjectChange(kind, ident, old, last[(kind, ident)])
            for (kind, ident), old in first.items()
            if old != last[(kind, ident)]
        ]
