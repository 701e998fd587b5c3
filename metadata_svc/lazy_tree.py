"""The tree a request walks, built only as far as its path reaches.

Built whole, the tree of one API version (every container, service, stack and host) costs 0.5 s
at 10,000 containers and 5 s at 100,000, and the first request after every fleet change paid
that, even to read one container's address. Here the top of the tree builds only the key a path
enters; the fleet's lists find one element by its position or through the fleet's name and uuid
indexes and build it alone; a container's ``self`` builds only the part asked for. A path that
ends on one of these gets it built whole, as the same objects as before (the whole tree built
once per snapshot), so every rendering stays what it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any

from metadata_svc.lookup import MISSING, Lazy, list_position, names
from metadata_svc.tree import ClientTree, Parts, Tree, TreeBuilder
from shared.fleet_index import FleetView


@dataclass(frozen=True)
class Listing:
    """How one list of the tree is found in the fleet, one element at a time."""

    every: Callable[[FleetView], Iterable[Any]]
    """The fleet's objects in the list's order."""
    called: Callable[[FleetView, str], Iterable[Any]]
    """In that order, the objects a segment may name: name or uuid equal in any case."""
    name: Callable[[TreeBuilder, Any], str]
    """The name an object's element carries (lower-cased from 2016-07-29 on, hosts' never)."""
    element: Callable[[TreeBuilder, Any], Tree]


FLEET_LISTS = {
    "containers": Listing(
        lambda fleet: fleet.containers,
        lambda fleet, text: fleet.containers_called(text),
        lambda builder, c: builder.name(c.name),
        lambda builder, c: builder.container(c),
    ),
    "services": Listing(
        lambda fleet: fleet.services,
        lambda fleet, text: fleet.services_called(text),
        lambda builder, s: builder.name(s.name),
        lambda builder, s: builder.service(s),
    ),
    "stacks": Listing(
        lambda fleet: fleet.stacks,
        lambda fleet, text: fleet.stacks_called(text),
        lambda builder, st: builder.name(st.name),
        lambda builder, st: builder.stack(st),
    ),
    "hosts": Listing(
        lambda fleet: fleet.hosts,
        lambda fleet, text: fleet.hosts_called(text),
        lambda _builder, h: h.name,
        lambda builder, h: builder.host(h),
    ),
}


class FleetList(Lazy):
    """One of the tree's lists of fleet objects: a step builds the one element it names."""

    def __init__(self, builder: TreeBuilder, listing: Listing, whole: Callable[[], list[Tree]]) -> None:
        self._builder = builder
        self._listing = listing
        self._whole = whole

    def step(self, segment: str) -> Any:
        fleet, listing = self._builder.fleet, self._listing
        position = list_position(segment)
        if position is not None:
            found = next(islice(listing.every(fleet), position, None), None)
            return MISSING if found is None else listing.element(self._builder, found)
        for candidate in listing.called(fleet, segment):
            # Another case of the name is no match, and its element is not worth building.
            if segment in (listing.name(self._builder, candidate), candidate.uuid):
                element = listing.element(self._builder, candidate)
                if names(element, segment):
                    return element
        return MISSING

    def built(self) -> list[Tree]:
        return self._whole()


class LazyMapping(Lazy):
    """A mapping whose values are built on first access: a container's ``self``, whose stack
    alone holds every container of its services."""

    def __init__(self, parts: Parts) -> None:
        self._parts = parts
        self._made: dict[str, Any] = {}

    def step(self, segment: str) -> Any:
        if segment in self._made:
            return self._made[segment]
        make = self._parts.get(segment)
        if make is None:
            return MISSING
        value = self._made[segment] = make()
        return value

    def built(self) -> Tree:
        return {key: self.step(key) for key in self._parts}


class TreeTop(Lazy):
    """The tree one client sees: the default tree of an API version, with ``self`` its own when
    it is a container (``own_self``)."""

    def __init__(self, builder: TreeBuilder, own_self: LazyMapping | None, default: Callable[[], Tree]) -> None:
        self._builder = builder
        self._own_self = own_self
        self._default = default

    def step(self, segment: str) -> Any:
        listing = FLEET_LISTS.get(segment)
        if listing is not None:
            return FleetList(self._builder, listing, lambda: self._default()[segment])
        if segment == "self" and self._own_self is not None:
            return self._own_self
        make = self._builder.default_parts().get(segment)
        return MISSING if make is None else make()

    def built(self) -> ClientTree | Tree:
        if self._own_self is None:
            return self._default()
        return ClientTree(self._default(), self._own_self.built())
