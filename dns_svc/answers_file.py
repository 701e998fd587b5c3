"""Serve a rancher-dns answers file (JSON or YAML) without a metadata service; re-read on change."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import yaml

from dns_svc.answers import AnswersFileError, AnswersTable, answers_from_rancher_file
from shared.logs import log_event

log = logging.getLogger("dns.answers")


def load_answers_file(path: str, serial: int) -> AnswersTable:
    """Read as YAML whatever the name says, as rancher-dns did: JSON is (almost) YAML, and the
    answers files people have, rancher-dns's own fixture among them, carry trailing commas."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AnswersFileError(f"{path}: {' '.join(str(exc).split())}") from None
    try:
        return answers_from_rancher_file(data, serial=serial)
    except AnswersFileError as exc:
        raise AnswersFileError(f"{path}: {exc}") from None


class AnswersFileWatcher:
    def __init__(self, path: str, apply: Callable[[AnswersTable], None], poll_interval: float = 1.0) -> None:
        self.path = path
        self.apply = apply
        self.poll_interval = poll_interval
        self.serial = 0
        self._reload = asyncio.Event()

    def request_reload(self) -> None:
        self._reload.set()

    def load(self) -> bool:
        self.serial += 1
        try:
            table = load_answers_file(self.path, self.serial)
        except AnswersFileError as exc:
            log_event(log, logging.ERROR, "answers_rejected", problem=str(exc))
            return False
        self.apply(table)
        log_event(log, logging.INFO, "answers_loaded", path=self.path, names=len(table.records))
        return True

    async def run(self) -> None:
        def stamp() -> tuple[int, int] | None:
            try:
                st = Path(self.path).stat()
            except OSError:
                return None
            return (st.st_mtime_ns, st.st_size)

        last = stamp()
        while True:
            try:
                async with asyncio.timeout(self.poll_interval):
                    await self._reload.wait()
            except TimeoutError:
                pass
            current = stamp()
            if current != last or self._reload.is_set():
                self._reload.clear()
                last = current
                self.load()
