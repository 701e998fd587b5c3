"""Write the rendered config only when it changed, atomically, with the requested mode."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from pathlib import Path

from shared.logs import log_event

log = logging.getLogger("render")


def write_atomically(path: Path, text: str, mode: int) -> None:
    """A reader sees the old file or the new one, never a mix: temp file, fsync, rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Output:
    def __init__(self, path: str, mode: int, on_change: str | None) -> None:
        self.path = Path(path)
        self.mode = mode
        self.on_change = on_change
        try:
            self.last: str | None = self.path.read_text(encoding="utf-8")
        except OSError:
            self.last = None
        self.writes = 0

    async def write(self, text: str) -> bool:
        if text == self.last:
            return False
        await asyncio.to_thread(write_atomically, self.path, text, self.mode)
        self.last = text
        self.writes += 1
        log_event(log, logging.INFO, "rendered", output=str(self.path), bytes=len(text))
        if self.on_change:
            proc = await asyncio.create_subprocess_shell(self.on_change)
            code = await proc.wait()
            if code != 0:
                log_event(log, logging.WARNING, "on_change_failed", command=self.on_change, code=code)
        return True
