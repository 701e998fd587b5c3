"""The last good fleet on disk, so a restart serves it even when the source is unreadable.

Written atomically (``shared.atomic_file``) so a crash mid-write leaves the previous copy.
It also carries the index, which is how versions keep moving forward across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.atomic_file import write_atomically
from shared.fleet_index import FleetIndex, FleetView, normalised
from shared.model import Fleet, FleetError

KEEP_EVERY = 3.0
"""Seconds between two writes of ``save_soon``: a fleet that changes 100 times a second is
written a few times a minute, whatever its size, and a kill -9 leaves a copy this old at most."""


class KeptCopy:
    def __init__(self, path: str | os.PathLike[str], keep_every: float = KEEP_EVERY) -> None:
        self.path = Path(path)
        self.keep_every = keep_every
        self._pending: asyncio.Future[None] | None = None
        self._latest: tuple[FleetView, int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_write = -float("inf")
        self._error: OSError | None = None

    async def save_in_background(self, fleet: FleetView, index: int) -> None:
        """Save in a worker thread, in order, and finish even if the caller is cancelled
        (a shutdown right after a change must not leave the previous version on disk)."""
        self._start_write(fleet, index)
        assert self._pending is not None
        await asyncio.shield(self._pending)

    async def save_soon(self, fleet: FleetView, index: int) -> None:
        """Save the latest fleet at most every ``keep_every`` seconds (at once when the last
        write is older). Raises the OSError of an earlier background write, if one failed."""
        error, self._error = self._error, None
        self._latest = (fleet, index)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, self._last_write + self.keep_every - loop.time())
            self._timer = loop.call_later(delay, self._write_latest)
        if error is not None:
            raise error

    def _write_latest(self) -> None:
        self._timer = None
        if self._latest is not None:
            fleet, index = self._latest
            self._latest = None
            self._start_write(fleet, index)

    def _start_write(self, fleet: FleetView, index: int) -> None:
        # What is written is taken now, on the event loop: an index updated in place must not
        # be read by the thread while the loop changes it. Lists in any order: a kept copy is
        # validated again when it is read, and its digest does not depend on the order.
        if isinstance(fleet, FleetIndex):
            environment, records = fleet.environment, fleet.records()

            def document() -> Mapping[str, Any]:
                return normalised(environment, records)
        else:
            raw = fleet.raw

            def document() -> Mapping[str, Any]:
                return raw

        digest = fleet.digest
        previous = self._pending
        self._last_write = asyncio.get_running_loop().time()

        async def write() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                await asyncio.to_thread(lambda: self._write(document(), digest, index))
            except OSError as exc:
                self._error = exc
                raise

        self._pending = asyncio.ensure_future(write())
        self._pending.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def flush(self) -> None:
        """Write what ``save_soon`` still holds and wait for the last save (call it on shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._write_latest()
        if self._pending is not None:
            with contextlib.suppress(Exception):
                await self._pending

    def load(self) -> tuple[Fleet, int]:
        """The kept fleet and its index; FleetError when missing or unusable."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            index = int(doc["index"])
            return Fleet.from_mapping(doc["fleet"]), index
        except FleetError as exc:
            raise FleetError(str(self.path), f"kept copy invalid: {exc}") from None
        except FileNotFoundError:
            raise FleetError(str(self.path), "no kept copy yet") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FleetError(str(self.path), f"kept copy unusable: {exc}") from None

    def check_writable(self) -> None:
        """Raise OSError when the copy could not be written (a read-only volume, no directory)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        probe = self.path.with_name(f".{self.path.name}.probe-{os.getpid()}")
        probe.write_bytes(b"")
        probe.unlink()

    def save(self, fleet: Fleet, index: int) -> None:
        self._write(fleet.raw, fleet.digest, index)

    def _write(self, raw: Mapping[str, Any], digest: str, index: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"index": index, "digest": digest, "fleet": raw}
        write_atomically(self.path, json.dumps(doc, separators=(",", ":")))
