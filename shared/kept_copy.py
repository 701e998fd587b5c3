"""The last good fleet on disk, so a restart serves it even when the source is unreadable.

Written atomically (``shared.atomic_file``) so a crash mid-write leaves the previous copy.
It also carries the index, which is how versions keep moving forward across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

from shared.atomic_file import write_atomically
from shared.model import Fleet, FleetError


class KeptCopy:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._pending: asyncio.Future[None] | None = None

    async def save_in_background(self, fleet: Fleet, index: int) -> None:
        """Save in a worker thread, in order, and finish even if the caller is cancelled
        (a shutdown right after a change must not leave the previous version on disk)."""
        previous = self._pending

        async def write() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            await asyncio.to_thread(self.save, fleet, index)

        self._pending = asyncio.ensure_future(write())
        await asyncio.shield(self._pending)

    async def flush(self) -> None:
        """Wait for the last background save (call it on shutdown)."""
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"index": index, "digest": fleet.digest, "fleet": fleet.raw}
        write_atomically(self.path, json.dumps(doc, separators=(",", ":")))
