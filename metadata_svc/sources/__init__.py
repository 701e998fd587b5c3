"""Where fleets come from. A source yields validated fleets (or the error that stopped one);
the store never knows which source it is fed by, so an etcd source slots in beside the file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from shared.fleet_changes import ObjectChange
from shared.fleet_index import FleetIndex
from shared.model import Fleet, FleetError


@dataclass(frozen=True)
class FleetUpdate:
    """A version from a source that follows objects (etcd): the fleet as an index the source
    goes on changing in place (read it on the event loop, between updates), the revision that
    becomes the version index, and what changed since the source's previous update (None: not
    known, as after the first list)."""

    fleet: FleetIndex
    revision: int
    changes: list[ObjectChange] | None


SourceResult = Fleet | tuple[Fleet, int] | FleetUpdate | FleetError


class FleetSource(Protocol):
    """Yields a Fleet for every new good version of the data and a FleetError for every bad one;
    a source whose data has revisions of its own (etcd) yields ``(fleet, revision)`` or a
    ``FleetUpdate``, and that revision becomes the version index, the same on every host."""

    name: str

    def updates(self) -> AsyncIterator[SourceResult]: ...

    def request_reload(self) -> None:
        """Re-read now (SIGHUP), without waiting for the next change notice."""
