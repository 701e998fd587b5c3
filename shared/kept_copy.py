"""The last good fleet on disk, so a restart serves it even when the source is unreadable.

Written atomically (``shared.atomic_file``) so a crash mid-write leaves the previous copy.
It also carries the index, which is how versions keep moving forward across restarts.

A fleet that changes by objects (``save_soon`` with the changes) is kept as a snapshot and a
log beside it (``<path>.log``, one line of changes per version, ``shared.fleet_document``'s
delta form): a version costs a line, not the fleet, and the snapshot is rewritten only every
``snapshot_every`` seconds or when the log outgrows a quarter of it. Reading replays the log
over the snapshot, up to its last whole line whose digest matches: a kill -9 at any moment
leaves a valid copy at most ``flush_every`` seconds old, and never one with a smaller index.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from shared import json_codec
from shared.atomic_file import write_atomically
from shared.fleet_changes import ObjectChange
from shared.fleet_document import decode_fleet_delta, encode_fleet_delta
from shared.fleet_index import FleetIndex, FleetView
from shared.fleet_lines import read_lines, taken, write_lines
from shared.model import Fleet, FleetError

KEEP_EVERY = 3.0
"""Seconds between two writes of ``save_soon`` without changes (a whole fleet each time)."""

FLUSH_EVERY = 1.0
"""Seconds a version's line waits before the log is written: the most a kill -9 loses."""

SNAPSHOT_EVERY = 120.0
"""Seconds between two snapshots while the log is small: at 100,000 containers a snapshot costs
about 1.6 s of CPU, a log line tens of microseconds."""


class KeptCopy:
    def __init__(
        self,
        path: str | os.PathLike[str],
        keep_every: float = KEEP_EVERY,
        *,
        flush_every: float = FLUSH_EVERY,
        snapshot_every: float = SNAPSHOT_EVERY,
    ) -> None:
        self.path = Path(path)
        self.log_path = self.path.with_name(self.path.name + ".log")
        self.keep_every = keep_every
        self.flush_every = flush_every
        self.snapshot_every = snapshot_every
        self._pending: asyncio.Future[None] | None = None
        self._latest: tuple[FleetView, int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_write = -float("inf")
        self._error: OSError | None = None
        self._lines: list[bytes] = []  # versions' changes not written to the log yet
        self._flush_timer: asyncio.TimerHandle | None = None
        self._logged = 0  # bytes in the log since the snapshot
        self._snapshot_size = 0
        self._based = False  # a snapshot of this line of changes exists
        # The source's version of the copy last loaded or saved (``load``, ``save_soon``), when
        # it was given one: a follower asks its source for what changed since then.
        self.version = ""

    async def save_in_background(self, fleet: FleetView, index: int) -> None:
        """Save in a worker thread, in order, and finish even if the caller is cancelled
        (a shutdown right after a change must not leave the previous version on disk)."""
        self._start_write(fleet, index)
        assert self._pending is not None
        await asyncio.shield(self._pending)

    async def save_soon(
        self, fleet: FleetView, index: int, changes: Sequence[ObjectChange] | None = None, *, version: str = ""
    ) -> None:
        """Keep ``fleet`` at version ``index``: with the ``changes`` since the version kept last,
        as a line of the log (written within ``flush_every`` s); without, as a whole snapshot
        at most every ``keep_every`` seconds (at once when the last write is older). ``version``:
        the source's version string of ``fleet``, kept with it. Raises the OSError of an earlier
        background write, if one failed."""
        error, self._error = self._error, None
        loop = asyncio.get_running_loop()
        self._latest = (fleet, index)
        self.version = version
        if changes is not None and self._based:
            line = encode_fleet_delta(
                f"{index}-{fleet.digest}", index, "", list(changes), public=False, applied=version
            )
            self._lines.append(line + b"\n")
            self._logged += len(line) + 1
            due = self._logged > max(1 << 20, self._snapshot_size // 4) or (
                loop.time() - self._last_write > self.snapshot_every
            )
            if not due:
                if self._flush_timer is None:
                    self._flush_timer = loop.call_later(self.flush_every, self._flush_log)
                if error is not None:
                    raise error
                return
        if self._timer is None:
            delay = max(0.0, self._last_write + self.keep_every - loop.time())
            self._timer = loop.call_later(delay, self._write_latest)
        if error is not None:
            raise error

    def _flush_log(self) -> None:
        self._flush_timer = None
        if not self._lines:
            return
        lines, self._lines = b"".join(self._lines), []
        previous = self._pending

        async def append() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                await asyncio.to_thread(self._append, lines)
            except OSError as exc:
                self._error = exc
                raise

        self._pending = asyncio.ensure_future(append())
        self._pending.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _append(self, lines: bytes) -> None:
        with self.log_path.open("ab") as log:
            log.write(lines)

    def _write_latest(self) -> None:
        self._timer = None
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._lines = []  # the snapshot holds them
        if self._latest is not None:
            fleet, index = self._latest
            self._latest = None
            self._start_write(fleet, index)

    def _start_write(self, fleet: FleetView, index: int) -> None:
        # What is written is taken now, on the event loop: an index updated in place must not
        # be read by the thread while the loop changes it. Lists in any order: the digest does
        # not depend on it. Written an object at a time (``shared.fleet_lines``).
        environment, objects, raw_of = taken(fleet)

        def document(head: Mapping[str, Any]) -> bytes:
            return write_lines(head, environment, objects, raw_of)

        digest = fleet.digest
        version = self.version
        previous = self._pending
        self._last_write = asyncio.get_running_loop().time()
        self._based, self._logged = True, 0

        async def write() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                await asyncio.to_thread(self._write, document, digest, index, version)
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
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_log()
        if self._pending is not None:
            with contextlib.suppress(Exception):
                await self._pending

    def load(self) -> tuple[FleetView, int]:
        """The kept fleet and its index (the snapshot, with the log replayed over it);
        FleetError when missing or unusable."""
        try:
            doc, fleet = _snapshot(self.path.read_bytes())
            index = int(doc["index"])
            self.version = str(doc.get("applied") or "")
            replayed = self._replay(fleet, index)
            return replayed if replayed is not None else (fleet, index)
        except FleetError as exc:
            raise FleetError(str(self.path), f"kept copy invalid: {exc}") from None
        except FileNotFoundError:
            raise FleetError(str(self.path), "no kept copy yet") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FleetError(str(self.path), f"kept copy unusable: {exc}") from None

    def _replay(self, fleet: FleetIndex | Fleet, index: int) -> tuple[FleetView, int] | None:
        """The snapshot with the log's later versions applied, up to the last line that reads
        whole and arrives at its digest; None without such a line."""
        try:
            lines = self.log_path.read_bytes().split(b"\n")
        except FileNotFoundError:
            return None
        replayed: FleetIndex | None = None
        at = index
        for line in lines:
            try:
                head = json_codec.loads(line)
                line_index = int(head["index"])
            except (ValueError, KeyError, TypeError):
                break  # a line cut by a crash: what came before it stands
            if line_index <= at:
                continue  # written before the snapshot that holds it
            candidate = replayed or (fleet if isinstance(fleet, FleetIndex) else FleetIndex.of(fleet))
            try:
                _, changes = decode_fleet_delta(line, candidate)
            except ValueError:
                break
            candidate.apply(changes)
            if not str(head.get("version", "")).endswith(candidate.digest):
                # Not the version it says: taken back, and what came before it stands.
                candidate.apply([ObjectChange(c.kind, c.ident, c.new, c.old) for c in reversed(changes)])
                break
            replayed, at = candidate, line_index
            self.version = str(head.get("applied") or "")
        return (replayed, at) if replayed is not None else None

    def check_writable(self) -> None:
        """Raise OSError when the copy could not be written (a read-only volume, no directory)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        probe = self.path.with_name(f".{self.path.name}.probe-{os.getpid()}")
        probe.write_bytes(b"")
        probe.unlink()

    def _write(
        self, document: Callable[[Mapping[str, Any]], bytes], digest: str, index: int, version: str = ""
    ) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = document({"index": index, "digest": digest, "applied": version})
        write_atomically(self.path, text)
        self._snapshot_size = len(text)
        # The snapshot holds everything the log said: a crash before this leaves lines that
        # replay skips (their index is not above the snapshot's).
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()


def _arrives_at_digest(head: Mapping[str, Any], fleet: FleetIndex) -> bool:
    digest = head.get("digest")
    return isinstance(digest, str) and bool(digest) and fleet.digest == digest


def _snapshot(body: bytes) -> tuple[Mapping[str, Any], FleetIndex | Fleet]:
    """The snapshot's head and fleet: rebuilt as it was written when it arrives at the digest
    written with it (metadns validated it before it kept it; a copy cut or edited since does
    not), and validated again otherwise (a copy without a digest, or from a version that took
    it differently). Each way is tried once."""
    lines = read_lines(body)
    if lines is not None and _arrives_at_digest(*lines):
        return lines
    doc = json_codec.loads(body)  # not as written: read whole
    if lines is None and isinstance(doc.get("fleet"), Mapping):  # another layout, as written?
        try:
            index = FleetIndex.of_document(doc["fleet"])
        except (KeyError, TypeError, AttributeError, ValueError):
            pass
        else:
            if _arrives_at_digest(doc, index):
                return doc, index
    return doc, Fleet.from_mapping(doc["fleet"])
