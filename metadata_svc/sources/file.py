"""The fleet from one YAML or JSON file, re-read whenever it changes, once its writer is done.

A file is read only when it is whole: on Linux when inotify on its directory says the file was
closed after writing or moved into place (a rename, which is how it should be replaced: write a
temporary file, then rename it over the fleet file); a writer that pauses half-way has modified
the file without closing it, and is waited for. Changes inotify does not see (another host's
mount, a ConfigMap's symlink swap) are found by polling ``stat`` (size, mtime, inode), and so is
everything where inotify is missing; a polled change is read once the file has stayed the same
over two polls. SIGHUP reads at once. A change is parsed and validated as a whole; a broken file
is reported with its path and the line or object at fault, and nothing is published.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from metadata_svc.sources.inotify import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_MODIFY,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    InotifyDirectory,
)
from shared.collector import collector_paused
from shared.model import Fleet, FleetError

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # PyYAML built without libyaml
    _Loader = yaml.SafeLoader

_STR, _INT, _FLOAT, _BOOL, _NULL, _MAP, _SEQ = (
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "map", "seq")
)
_MERGE_KEYS = {"tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"}


class _Unusual(Exception):
    """A document the fast construction leaves to PyYAML's own (``_construct``)."""


def _construct(loader: Any, root: Any) -> Any:
    """The document's data, as ``loader.construct_document(root)`` makes it, for documents of
    plain mappings, lists and core scalars: the safe constructor's generators and per-node
    bookkeeping were as slow as the parse itself (4 s at 100,000 containers). Anything else (an
    anchor used twice, a merge key, another tag, a key that cannot be one, a deep nesting) is
    constructed by PyYAML itself, so every document gets its data and its errors."""
    seen: set[int] = set()
    scalars = {
        _INT: loader.construct_yaml_int,
        _FLOAT: loader.construct_yaml_float,
        _BOOL: loader.construct_yaml_bool,
        _NULL: loader.construct_yaml_null,
    }

    def build(node: Any) -> Any:
        kind, tag = type(node), node.tag
        if kind is yaml.ScalarNode:
            if tag == _STR:
                return node.value
            make = scalars.get(tag)
            if make is None:
                raise _Unusual
            return make(node)
        if id(node) in seen:  # an alias: PyYAML shares the object
            raise _Unusual
        seen.add(id(node))
        if kind is yaml.MappingNode and tag == _MAP:
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag in _MERGE_KEYS or type(key_node) is not yaml.ScalarNode:
                    raise _Unusual
                out[build(key_node)] = build(value_node)
            return out
        if kind is yaml.SequenceNode and tag == _SEQ:
            return [build(item) for item in node.value]
        raise _Unusual

    try:
        return build(root)
    except (_Unusual, RecursionError, yaml.YAMLError):
        return loader.construct_document(root)


def parse_fleet_text(text: str, path: str) -> Fleet:
    """Parse and validate fleet text; FleetError.where names the file and the line or object.
    The collector is paused throughout (``collector_paused`` says why)."""
    with collector_paused():
        return _parse_fleet_text(text, path)


def _parse_fleet_text(text: str, path: str) -> Fleet:
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
                data = _construct(loader, node) if node is not None else None
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
    """Reads ``path`` at start, on every finished change, and on ``request_reload``."""

    def __init__(self, path: str | os.PathLike[str], poll_interval: float = 1.0, use_inotify: bool = True) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path}"
        self.poll_interval = poll_interval
        self.use_inotify = use_inotify
        self._reload = asyncio.Event()
        self._wake = asyncio.Event()

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def load(self) -> Fleet:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FleetError(str(self.path), f"cannot read: {exc}") from None
        return parse_fleet_text(text, str(self.path))

    async def updates(self) -> AsyncIterator[Fleet | FleetError]:
        notify = InotifyDirectory.open(self.path.parent) if self.use_inotify else None
        loop = asyncio.get_running_loop()
        if notify is not None:
            loop.add_reader(notify.fd, self._wake.set)
        last: tuple[int, int, int, int] | str | None = "never"  # the stamp of the last read
        polled: tuple[int, int, int, int] | str | None = "never"  # the stamp at the previous poll
        writing = False  # inotify: the file was modified and not closed since
        first = True
        try:
            while True:
                finished = False
                if notify is not None:
                    for mask, name in notify.read():
                        if mask & (IN_DELETE_SELF | IN_MOVE_SELF):  # the directory itself went away
                            loop.remove_reader(notify.fd)
                            notify.close()
                            notify, writing = None, False
                            break
                        if name == self.path.name:
                            if mask & (IN_MODIFY | IN_CREATE):
                                writing = True
                            if mask & (IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM):
                                writing = False
                                finished = finished or bool(mask & (IN_CLOSE_WRITE | IN_MOVED_TO))
                        elif mask & IN_MOVED_TO:  # something renamed into place: a symlink swap
                            finished = True
                stamp = _stamp(self.path)
                stable = stamp == polled and not writing
                polled = stamp
                hup = self._reload.is_set()
                self._reload.clear()
                if first or hup or (stamp != last and (finished or stable)):
                    first = False
                    last = stamp
                    try:
                        yield await asyncio.to_thread(self.load)
                    except FleetError as exc:
                        yield exc
                self._wake.clear()
                try:
                    async with asyncio.timeout(self.poll_interval):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            if notify is not None:
                loop.remove_reader(notify.fd)
                notify.close()
