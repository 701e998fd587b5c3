"""The fleet from one YAML or JSON file, re-read whenever it changes.

The file is polled with ``stat`` (size, mtime, inode) rather than inotify because it is usually a
bind mount or a Kubernetes ConfigMap, which are replaced by renaming a symlink that inotify on the
old inode never reports. A change is parsed and validated as a whole; a broken file is reported
with its path and the line or object at fault, and nothing is published.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from shared.model import Fleet, FleetError

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # PyYAML built without libyaml
    _Loader = yaml.SafeLoader


def parse_fleet_text(text: str, path: str) -> Fleet:
    """Parse and validate fleet text; FleetError.where names the file and the line or object."""
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FleetError(f"{path} line {exc.lineno} column {exc.colno}", f"bad JSON: {exc.msg}") from None
        lines: dict[tuple[str, int], int] = {}
    else:
        try:
            loader = _Loader(text)
            try:
                node = loader.get_single_node()
                data = loader.construct_document(node) if node is not None else None
            finally:
                loader.dispose()
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path} line {mark.line + 1} column {mark.column + 1}" if mark else path
            problem = getattr(exc, "problem", None) or str(exc)
            raise FleetError(where, f"bad YAML: {problem}") from None
        lines = _item_lines(node)
    try:
        return Fleet.from_mapping(data, lambda coll, i: f"line {lines[(coll, i)]}" if (coll, i) in lines else None)
    except FleetError as exc:
        raise FleetError(f"{path} {exc.where}", exc.problem) from None


def _item_lines(node: Any) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    if not isinstance(node, yaml.MappingNode):
        return out
    for key, value in node.value:
        if isinstance(value, yaml.SequenceNode):
            for i, item in enumerate(value.value):
                out[(str(key.value), i)] = item.start_mark.line + 1
    return out


def _stamp(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


class FileSource:
    """Reads ``path`` at start, on every change seen by polling, and on ``request_reload``."""

    def __init__(self, path: str | os.PathLike[str], poll_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path}"
        self.poll_interval = poll_interval
        self._reload = asyncio.Event()

    def request_reload(self) -> None:
        self._reload.set()

    def load(self) -> Fleet:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FleetError(str(self.path), f"cannot read: {exc}") from None
        return parse_fleet_text(text, str(self.path))

    async def updates(self) -> AsyncIterator[Fleet | FleetError]:
        last: tuple[int, int, int, int] | str | None = "never"
        while True:
            stamp = _stamp(self.path)
            if stamp != last or self._reload.is_set():
                self._reload.clear()
                last = stamp
                try:
                    yield await asyncio.to_thread(self.load)
                except FleetError as exc:
                    yield exc
            try:
                async with asyncio.timeout(self.poll_interval):
                    await self._reload.wait()
            except TimeoutError:
                pass
