"""A fleet change as the objects it touched: what an incremental consumer updates, and nothing else.

A version change of a big fleet usually touches one container. Everything downstream (the
metadata service's renders, the DNS service's answers table and caches) is kept in step by
looking at the ``ObjectChange`` list of that version, never at the whole fleet: each change
names one object by its identity, with the object before and after (``None`` when it did not
exist then). Identities are what the model keeps unique:

    environment   ""
    hosts         the host's uuid
    stacks        the stack's name, lower-cased
    services      "<stack>/<service>", lower-cased
    containers    the container's uuid

``diff_fleets`` computes the list from two whole fleets. It costs the whole fleet, so it is the
reference that incremental sources are checked against, and the fallback after a full reload.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from shared.model import Container, Environment, Host, Service, Stack

FleetObject = Environment | Host | Stack | Service | Container
KINDS = ("environment", "hosts", "stacks", "services", "containers")


@dataclass(frozen=True, slots=True)
class ObjectChange:
    """One object put, replaced or deleted: ``old`` is None for a new object, ``new`` for a
    deleted one."""

    kind: str
    ident: str
    old: FleetObject | None
    new: FleetObject | None


def identity(kind: str, obj: FleetObject) -> str:
    """The identity of ``obj`` within ``kind`` (see the module docstring)."""
    if isinstance(obj, Environment):
        return ""
    if isinstance(obj, Host | Container):
        return obj.uuid
    if isinstance(obj, Stack):
        return obj.name.lower()
    return f"{obj.stack_name.lower()}/{obj.name.lower()}"


class FleetObjects(Protocol):
    """The part of a fleet's read API that a diff needs."""

    @property
    def environment(self) -> Environment: ...

    @property
    def hosts(self) -> Iterable[Host]: ...

    @property
    def stacks(self) -> Iterable[Stack]: ...

    @property
    def services(self) -> Iterable[Service]: ...

    @property
    def containers(self) -> Iterable[Container]: ...


def _objects(fleet: FleetObjects, kind: str) -> Iterable[FleetObject]:
    if kind == "environment":
        return (fleet.environment,)
    collection: Iterable[FleetObject] = getattr(fleet, kind)
    return collection


def diff_fleets(old: FleetObjects, new: FleetObjects) -> list[ObjectChange]:
    """Every object that differs between ``old`` and ``new``, in ``KINDS`` order."""
    return list(_diff(old, new))


def _diff(old: FleetObjects, new: FleetObjects) -> Iterator[ObjectChange]:
    for kind in KINDS:
        before = {identity(kind, o): o for o in _objects(old, kind)}
        after = {identity(kind, o): o for o in _objects(new, kind)}
        for ident, obj in after.items():
            was = before.get(ident)
            if was != obj:
                yield ObjectChange(kind, ident, was, obj)
        for ident, was in before.items():
            if ident not in after:
                yield ObjectChange(kind, ident, was, None)
