"""Write the rendered config only when it changed, atomically, with the requested mode."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from shared.atomic_file import write_atomically
from shared.logs import log_event

log = logging.getLogger("render")


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
