"""Where fleets come from. A source yields validated fleets (or the error that stopped one);
the store never knows which source it is fed by, so an etcd source slots in beside the file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from shared.model import Fleet, FleetError


class FleetSource(Protocol):
    """Yields a Fleet for every new good version of the data and a FleetError for every bad one;
    a source whose data has revisions of its own (etcd) yields ``(fleet, revision)``, and that
    revision becomes the version index, the same on every host."""

    name: str

    def updates(self) -> AsyncIterator[Fleet | tuple[Fleet, int] | FleetError]: ...

    def request_reload(self) -> None:
        """Re-read now (SIGHUP), without waiting for the next change notice."""
