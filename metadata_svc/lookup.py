"""Walk a metadata tree by path segments, as rancher-metadata does.

An integer segment indexes a list; any other segment picks the list element whose ``name`` or
``uuid`` equals it. A path that misses is retried once in lower case, because 2016-07-29 trees
hold lower-cased names while clients often ask with the original case.

A tree may hold ``Lazy`` parts, which build only what a path steps into (``lazy_tree.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote_plus

MISSING: Any = object()
BEYOND_ANY_LIST = 1_000_000_000


class Lazy(ABC):
    """A part of a tree that is not built until needed: a path steps into it one segment at a
    time, and only a path ending on it has it built whole."""

    @abstractmethod
    def step(self, segment: str) -> Any:
        """What ``segment`` names inside the built part (by ``walk``'s rules), or ``MISSING``."""

    @abstractmethod
    def built(self) -> Any:
        """The whole part, as plain mappings and lists."""


def list_position(segment: str) -> int | None:
    """The list index ``segment`` names, or None when it names an element by name or uuid.

    Only ASCII digits count (not "²", which ``isdigit()`` accepts and ``int()`` refuses); past nine
    of them, a position no list reaches (and ``int()`` refuses 5,000 digits)."""
    if not (segment.isascii() and segment.isdigit()):
        return None
    return int(segment) if len(segment) <= 9 else BEYOND_ANY_LIST


def names(item: Any, segment: str) -> bool:
    """Whether a list element is the one ``segment`` names: its ``name`` or ``uuid`` equals it."""
    return isinstance(item, Mapping) and segment in (item.get("name"), item.get("uuid"))


class MalformedPath(ValueError):
    """The request path cannot be decoded (a bad percent escape or a control character)."""


def split_path(raw_path: str) -> list[str]:
    """Split a raw (still escaped) URL path into decoded segments, ignoring empty ones."""
    segments = []
    for part in raw_path.split("/"):
        if not part:
            continue
        _check_escapes(part)
        text = unquote_plus(part, errors="strict")
        if any(ord(ch) < 0x20 or ch == "\x7f" for ch in text):
            raise MalformedPath(f"control character in path segment {part!r}")
        segments.append(text)
    return segments


def _check_escapes(part: str) -> None:
    i = part.find("%")
    while i != -1:
        code = part[i + 1 : i + 3]
        if len(code) != 2 or any(c not in "0123456789abcdefABCDEF" for c in code):
            raise MalformedPath(f"bad percent escape in {part!r}")
        i = part.find("%", i + 3)
    try:
        unquote_plus(part, errors="strict")
    except UnicodeDecodeError:
        raise MalformedPath(f"escape in {part!r} is not UTF-8") from None


def _step(value: Any, segment: str) -> Any:
    if isinstance(value, Lazy):
        return value.step(segment)
    if isinstance(value, Mapping):
        return value.get(segment, MISSING)
    if isinstance(value, Sequence) and not isinstance(value, str):
        index = list_position(segment)
        if index is not None:
            return value[index] if index < len(value) else MISSING
        for item in value:
            if names(item, segment):
                return item
    return MISSING


def _walk_once(tree: Any, segments: Sequence[str]) -> Any:
    value = tree
    for segment in segments:
        value = _step(value, segment)
        if value is MISSING:
            break
    return value


def walk(tree: Any, segments: Sequence[str]) -> Any:
    """The value at ``segments`` below ``tree`` (built, where it is a ``Lazy`` part), or ``MISSING``."""
    value = _walk_once(tree, segments)
    lowered = [s.lower() for s in segments]
    if value is MISSING and lowered != list(segments):
        value = _walk_once(tree, lowered)
    return value.built() if isinstance(value, Lazy) else value
