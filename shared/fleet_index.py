"""The fleet as indexes updated one object at a time, with ``Fleet``'s read API.

A ``Fleet`` is rebuilt whole: right for a file, which is read whole, and hopeless for a fleet of
100,000 containers that changes one container at a time. ``FleetIndex`` holds the same objects
by identity (``shared.fleet_changes``) and applies ``ObjectChange``s: each one updates the
indexes it touches (by IP, a service's members, a stack's services) and the content digest
(``fleet_digest`` is a sum of per-object hashes, so one object's share is taken out and put in).

Lists come out in one canonical order, the order of the objects' etcd keys
(``shared.etcd_fleet.object_key``), sorted when a whole list is first asked for after a change,
so an index built in one batch and one built by any sequence of changes list the same fleet in
the same order. A service's members and a stack's services are sorted per service or stack.

The index is mutable, and only the event loop changes it, in one synchronous ``apply`` per
version: readers that finish without awaiting (every render and every lookup does) see one
version. A reader that needs one version across awaits takes ``snapshot()``, an immutable
``Fleet`` (it costs the whole fleet, so the kept copy takes it at most every few seconds).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar, overload

from shared.etcd_fleet import object_key
from shared.fleet_changes import FleetObject, ObjectChange, identity
from shared.model import (
    TRUSTED,
    Container,
    Environment,
    Fleet,
    Host,
    Service,
    Stack,
    digest_text,
    environment_from,
    object_digest,
    object_raw,
    trusted_environment,
)
from shared.set_map import SetMap

T = TypeVar("T")


class FleetView(Protocol):
    """What readers of a fleet use: ``Fleet`` (whole, immutable) and ``FleetIndex`` (updated
    per object) both read this way, so the tree, the answers table and the documents take either."""

    @property
    def environment(self) -> Environment: ...

    @property
    def hosts(self) -> Sequence[Host]: ...

    @property
    def stacks(self) -> Sequence[Stack]: ...

    @property
    def services(self) -> Sequence[Service]: ...

    @property
    def containers(self) -> Sequence[Container]: ...

    @property
    def digest(self) -> str: ...

    @property
    def raw(self) -> Mapping[str, Any]: ...

    def container(self, uuid: str) -> Container | None: ...

    def container_by_ip(self, ip: str) -> Container | None: ...

    def host(self, uuid: str) -> Host | None: ...

    def stack(self, name: str) -> Stack | None: ...

    def service(self, stack_name: str, name: str) -> Service | None: ...

    def service_containers(self, service: Service) -> tuple[Container, ...]: ...

    def stack_services(self, stack: Stack) -> tuple[Service, ...]: ...

    def to_mapping(self) -> dict[str, Any]: ...

    def hosts_called(self, text: str) -> tuple[Host, ...]: ...

    def stacks_called(self, text: str) -> tuple[Stack, ...]: ...

    def services_called(self, text: str) -> tuple[Service, ...]: ...

    def containers_called(self, text: str) -> tuple[Container, ...]: ...


class SortedObjects(Sequence[T], Generic[T]):
    """One collection of the index as a read-only sequence in canonical order. Its length is
    free; the sorted order is built on the first access after a change."""

    def __init__(self, items: dict[str, T], order: dict[str, str]) -> None:
        self._items = items
        self._order = order
        self._sorted: tuple[T, ...] | None = None

    def changed(self) -> None:
        self._sorted = None

    def _all(self) -> tuple[T, ...]:
        if self._sorted is None:
            order = self._order
            self._sorted = tuple(self._items[i] for i in sorted(self._items, key=order.__getitem__))
        return self._sorted

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._all())

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...

    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        return self._all()[index]


def _lower(text: str) -> str:
    """``text`` lower-cased, the same string when it is lower-case already (``str.lower``
    always makes a new one: two per container as index keys)."""
    low = text.lower()
    return text if low == text else low


def normalised(environment: Environment, records: Mapping[str, Iterable[Any]]) -> dict[str, Any]:
    """``Fleet.raw``'s shape of an environment and the records of each kind."""
    out: dict[str, Any] = {"environment": object_raw("environment", environment)}
    for kind, objects in records.items():
        out[kind] = [object_raw(kind, obj) for obj in objects]
    return out


class FleetIndex:
    """Served objects by identity, kept in step by ``apply``; reads like a ``Fleet``."""

    def __init__(self) -> None:
        self.environment = environment_from({})
        self._objects: dict[str, dict[str, Any]] = {kind: {} for kind in ("hosts", "stacks", "services", "containers")}
        self._order: dict[str, dict[str, str]] = {kind: {} for kind in self._objects}
        self._shares: dict[str, dict[str, int]] = {kind: {} for kind in self._objects}
        self._total = object_digest("environment", object_raw("environment", self.environment))
        self._lists: dict[str, SortedObjects[Any]] = {
            kind: SortedObjects(self._objects[kind], self._order[kind]) for kind in self._objects
        }
        self._by_ip: SetMap[str] = SetMap()
        self._members: dict[tuple[str, str], dict[str, Container]] = {}
        self._stack_services: dict[str, dict[str, Service]] = {}
        self._sorted_members: dict[tuple[str, str], tuple[Container, ...]] = {}
        # name or uuid, lower-cased -> the objects it names (a metadata path names one this way)
        self._called: dict[str, SetMap[str]] = {kind: SetMap() for kind in self._objects}
        self._sorted_stack_services: dict[str, tuple[Service, ...]] = {}

    @classmethod
    def of(cls, fleet: Fleet) -> FleetIndex:
        """An index holding ``fleet`` (for a whole document: a kept copy, a first fetch)."""
        index = cls()
        index.apply(
            [ObjectChange("environment", "", None, fleet.environment)]
            + [
                ObjectChange(kind, identity(kind, obj), None, obj)
                for kind in ("hosts", "stacks", "services", "containers")
                for obj in getattr(fleet, kind)
            ]
        )
        return index

    @classmethod
    def of_document(cls, raw: Mapping[str, Any]) -> FleetIndex:
        """An index of a fleet in the normalised form (``Fleet.raw``: a kept copy, the fleet
        document) that metadns validated already: its objects rebuilt without validating them
        again, and without the ``Fleet`` in between. KeyError, TypeError or AttributeError when
        ``raw`` is not of that shape; the caller checks the digest."""
        index = cls()
        index.put_trusted("environment", raw.get("environment") or {})
        for kind in ("hosts", "stacks", "services", "containers"):
            for obj in raw.get(kind) or ():
                index.put_trusted(kind, obj)
        return index

    def put_trusted(self, kind: str, raw: Mapping[str, Any]) -> None:
        """Serve one object of a validated, normalised document (``of_document``; a document
        read object by object, ``shared.fleet_lines``). A document naming one twice: the last
        stands."""
        if kind == "environment":
            self._set_environment(trusted_environment(raw))
            return
        new = TRUSTED[kind](raw)
        ident = identity(kind, new)
        self._remove(kind, ident)
        self._add(kind, ident, new, raw)

    # Fleet's read API ---------------------------------------------------------------------

    @property
    def hosts(self) -> SortedObjects[Host]:
        return self._lists["hosts"]

    @property
    def stacks(self) -> SortedObjects[Stack]:
        return self._lists["stacks"]

    @property
    def services(self) -> SortedObjects[Service]:
        return self._lists["services"]

    @property
    def containers(self) -> SortedObjects[Container]:
        return self._lists["containers"]

    @property
    def digest(self) -> str:
        return digest_text(self._total)

    def get(self, kind: str, ident: str) -> FleetObject | None:
        """The object served under ``ident`` in ``kind`` (``shared.fleet_changes`` identities)."""
        found: FleetObject | None = self._objects[kind].get(ident)
        return found

    def order_key(self, kind: str, ident: str) -> str:
        """Where ``ident`` sorts in ``kind``'s canonical order ("" when it is not served)."""
        return self._order[kind].get(ident, "")

    def container(self, uuid: str) -> Container | None:
        found: Container | None = self._objects["containers"].get(uuid)
        return found

    def container_by_ip(self, ip: str) -> Container | None:
        # An address several containers share names none of them (as ``Fleet``).
        uuids = self._by_ip.get(ip)
        if len(uuids) != 1:
            return None
        return self.container(next(iter(uuids)))

    def host(self, uuid: str) -> Host | None:
        found: Host | None = self._objects["hosts"].get(uuid)
        return found

    def stack(self, name: str) -> Stack | None:
        found: Stack | None = self._objects["stacks"].get(name.lower())
        return found

    def service(self, stack_name: str, name: str) -> Service | None:
        found: Service | None = self._objects["services"].get(f"{stack_name.lower()}/{name.lower()}")
        return found

    def service_containers(self, service: Service) -> tuple[Container, ...]:
        key = (service.stack_name.lower(), service.name.lower())
        found = self._sorted_members.get(key)
        if found is None:
            members = self._members.get(key, {})
            order = self._order["containers"]
            found = tuple(members[u] for u in sorted(members, key=order.__getitem__))
            self._sorted_members[key] = found
        return found

    def stack_services(self, stack: Stack) -> tuple[Service, ...]:
        key = stack.name.lower()
        found = self._sorted_stack_services.get(key)
        if found is None:
            services = self._stack_services.get(key, {})
            order = self._order["services"]
            found = tuple(services[i] for i in sorted(services, key=order.__getitem__))
            self._sorted_stack_services[key] = found
        return found

    def hosts_called(self, text: str) -> tuple[Host, ...]:
        return self._named("hosts", text)

    def stacks_called(self, text: str) -> tuple[Stack, ...]:
        return self._named("stacks", text)

    def services_called(self, text: str) -> tuple[Service, ...]:
        return self._named("services", text)

    def containers_called(self, text: str) -> tuple[Container, ...]:
        return self._named("containers", text)

    def _named(self, kind: str, text: str) -> tuple[Any, ...]:
        """Every object whose name or uuid is ``text`` in any case, in canonical order (as
        ``Fleet``'s, which keeps file order)."""
        found = self._called[kind].get(text.lower())
        if not found:
            return ()
        objects, order = self._objects[kind], self._order[kind]
        return tuple(objects[i] for i in sorted(found, key=order.__getitem__))

    def raw_lists(self) -> dict[str, Any]:
        """The normalised fleet (``Fleet.raw``'s shape), in canonical order; built from the
        records each time (the index keeps no second copy of every object)."""
        return normalised(self.environment, self.records(sort=True))

    def records(self, *, sort: bool = False) -> dict[str, list[Any]]:
        """Every served object by kind: a copy of references to immutable records, cheap to
        take on the event loop and turn into a document in a thread (``normalised``)."""
        out: dict[str, list[Any]] = {}
        for kind, objects in self._objects.items():
            order = self._order[kind]
            out[kind] = [objects[i] for i in sorted(objects, key=order.__getitem__)] if sort else list(objects.values())
        return out

    @property
    def raw(self) -> Mapping[str, Any]:
        return self.raw_lists()

    def snapshot(self) -> Fleet:
        """An immutable ``Fleet`` of what the index holds now (costs the whole fleet)."""
        return Fleet(
            self.environment,
            tuple(self.hosts),
            tuple(self.stacks),
            tuple(self.services),
            tuple(self.containers),
            self.digest,
            self.raw_lists(),
        )

    def to_mapping(self) -> dict[str, Any]:
        return self.snapshot().to_mapping()

    # Changes ------------------------------------------------------------------------------

    def apply(self, changes: Iterable[ObjectChange]) -> None:
        """Make each change's ``new`` the object served under its identity (None: none)."""
        for change in changes:
            if change.kind == "environment":
                if isinstance(change.new, Environment):
                    self._set_environment(change.new)
                continue
            self._remove(change.kind, change.ident)
            if change.new is not None:
                self._add(change.kind, change.ident, change.new)

    def _set_environment(self, env: Environment) -> None:
        self._total -= object_digest("environment", object_raw("environment", self.environment))
        self.environment = env
        self._total += object_digest("environment", object_raw("environment", env))

    def _add(self, kind: str, ident: str, obj: FleetObject, raw: Mapping[str, Any] | None = None) -> None:
        """``raw``: the object's normalised form when the caller has it (``object_raw``'s)."""
        if raw is None:
            raw = object_raw(kind, obj)
        share = object_digest(kind, raw)
        self._objects[kind][ident] = obj
        self._order[kind][ident] = object_key(kind, raw)
        self._shares[kind][ident] = share
        self._total += share
        self._lists[kind].changed()
        if not isinstance(obj, Environment):
            called = self._called[kind]
            called.add(_lower(obj.name), ident)
            called.add(_lower(obj.uuid), ident)
        if isinstance(obj, Container):
            self._by_ip.add(obj.primary_ip, ident)
            if obj.service_name:
                key = (obj.stack_name.lower(), obj.service_name.lower())
                self._members.setdefault(key, {})[ident] = obj
                self._sorted_members.pop(key, None)
        elif isinstance(obj, Service):
            stack = obj.stack_name.lower()
            self._stack_services.setdefault(stack, {})[ident] = obj
            self._sorted_stack_services.pop(stack, None)

    def _remove(self, kind: str, ident: str) -> None:
        obj = self._objects[kind].pop(ident, None)
        if obj is None:
            return
        del self._order[kind][ident]
        self._total -= self._shares[kind].pop(ident)
        self._lists[kind].changed()
        called = self._called[kind]
        called.discard(obj.name.lower(), ident)
        called.discard(obj.uuid.lower(), ident)
        if isinstance(obj, Container):
            self._by_ip.discard(obj.primary_ip, ident)
            if obj.service_name:
                key = (obj.stack_name.lower(), obj.service_name.lower())
                members = self._members[key]
                del members[ident]
                if not members:
                    del self._members[key]
                self._sorted_members.pop(key, None)
        elif isinstance(obj, Service):
            stack = obj.stack_name.lower()
            services = self._stack_services[stack]
            del services[ident]
            if not services:
                del self._stack_services[stack]
            self._sorted_stack_services.pop(stack, None)
