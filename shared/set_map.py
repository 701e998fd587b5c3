"""A mapping from keys to sets of strings that holds a lone member as the string itself.

The fleet's indexes map names, addresses, identities and references to the strings that have
them, and nearly every key has exactly one: a container's IP, its name, its uuid, the key that
claims an identity. A ``set`` of one is 216 bytes; at 100,000 containers, with several such
indexes in each service, the sets of one were about 1 KB per container.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class SetMap(Generic[K]):
    """``key -> set[str]``, without the sets of one. ``get`` returns a view to read, not to
    keep across changes."""

    __slots__ = ("_members",)

    def __init__(self) -> None:
        self._members: dict[K, str | set[str]] = {}

    def add(self, key: K, member: str) -> None:
        current = self._members.get(key)
        if current is None:
            self._members[key] = member
        elif isinstance(current, str):
            if current != member:
                self._members[key] = {current, member}
        else:
            current.add(member)

    def discard(self, key: K, member: str) -> None:
        current = self._members.get(key)
        if current is None:
            return
        if isinstance(current, str):
            if current == member:
                del self._members[key]
            return
        current.discard(member)
        if len(current) == 1:
            self._members[key] = next(iter(current))
        elif not current:
            del self._members[key]

    def get(self, key: K) -> Collection[str]:
        """The members of ``key`` (empty when it has none)."""
        current = self._members.get(key)
        if current is None:
            return ()
        if isinstance(current, str):
            return (current,)
        return current

    def only(self, key: K) -> str | None:
        """The member of ``key`` when it has exactly one."""
        current = self._members.get(key)
        return current if isinstance(current, str) else None

    def __contains__(self, key: object) -> bool:
        return key in self._members

    def __len__(self) -> int:
        return len(self._members)

    def __iter__(self) -> Iterator[K]:
        return iter(self._members)
