"""The structured fields of captured log lines (``log_event`` puts them on each record), and the
lines a real process writes, waited for as they come."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest


def logged_fields(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [dict(getattr(record, "fields", {})) for record in caplog.records]


class ProcessLog:
    """The stderr lines of a real process, read as they come: a test waits for the line it
    needs (with a deadline) instead of sleeping and hoping, and the pipe never fills up and
    blocks the process."""

    def __init__(self, stream: asyncio.StreamReader | None) -> None:
        assert stream is not None, "start the process with stderr=asyncio.subprocess.PIPE"
        self.lines: list[str] = []
        self.closed = False
        self._more = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        try:
            while line := await stream.readline():
                self.lines.append(line.decode(errors="replace").rstrip("\n"))
                self._more.set()
        finally:
            self.closed = True
            self._more.set()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def matching(self, *parts: str) -> list[str]:
        """The lines so far that contain every one of ``parts``."""
        return [line for line in self.lines if all(part in line for part in parts)]

    async def until(self, condition: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
        """Until ``condition()`` holds, checked at each new line; fails with the log when the
        process ends first or the deadline passes."""
        try:
            async with asyncio.timeout(seconds):
                while not condition():
                    if self.closed:
                        raise AssertionError(f"the process ended before {what}:\n{self.text}")
                    self._more.clear()
                    await self._more.wait()
        except TimeoutError:
            raise AssertionError(f"not {what} within {seconds}s:\n{self.text}") from None

    async def wait_for(self, *parts: str, count: int = 1, seconds: float = 20.0) -> list[str]:
        """Until ``count`` lines contain every one of ``parts``; fails with the log when the
        process ends first or the deadline passes."""
        await self.until(lambda: len(self.matching(*parts)) >= count, f"{count} lines with {parts}", seconds)
        return self.matching(*parts)

    async def finish(self) -> str:
        """The whole log, once the process has closed its stderr (it has exited)."""
        await self._reader
        return self.text
