"""The objects under an etcd prefix, validated one key at a time into a ``FleetIndex``.

A watch event is one key put or deleted. ``EtcdObjects.apply`` parses the keys that changed,
validates them and whatever depends on them (``shared.model.ObjectRules``, the rules a whole
document is checked with), and returns the ``ObjectChange``s of what is served: a container
put is one change; a service deleted also takes out its containers, held back until it comes
back. The cost is what the change touches, not the fleet.

What is served is what a whole validation of every key gives (``fleet_from_keys`` is this class
applied to every key at once, so the two cannot disagree):

- an object is served when it is well formed and everything it names is served; objects that
  name each other (two services linking each other) are served together;
- when several keys claim one identity (``stacks/Web`` and ``stacks/web``; one container uuid
  under two hosts), the first in key order that could be served is, and the others are held back;
- a container without ``create_index`` gets its key's etcd ``create_revision``: the same on
  every host, and not moved by other keys coming and going.

Held-back keys are reported with why (``held``) and come back when what they lack appears.
"""

from __future__ import annotations

from collections.abc import Iterable, KeysView, Mapping
from dataclasses import dataclass
from typing import Any, cast

from shared import json_codec
from shared.etcd_fleet import KINDS, is_status_key, key_names, named_by_key
from shared.fleet_changes import FleetObject, ObjectChange
from shared.fleet_index import FleetIndex
from shared.model import Environment, Fleet, FleetError, Host, ObjectRules, Service, Stack, environment_from
from shared.set_map import SetMap

Ref = tuple[str, str]
"""Something an object names: ("stack", name), ("service", "stack/name"), ("host", uuid or
name), or ("primary", "stack/name") for a service whose primary another service's sidekicks
decide. Lower-cased where the model compares without case."""


@dataclass(slots=True)
class _Item:
    """One key's object as parsed: its kind and identity (from the key), and what it names."""

    kind: str
    ident: str
    # The parsed object, kept for the few kinds others name; a container's is parsed again from
    # its value when it is checked again (a container's dict would be most of the memory held).
    obj: dict[str, Any] | None
    problem: str = ""
    create_revision: int = 0
    refs: tuple[Ref, ...] = ()


def _ident_of(kind: str, parts: list[str]) -> str:
    if kind == "hosts" or kind == "containers":
        return parts[-1]
    if kind == "stacks":
        return parts[0].lower()
    return f"{parts[0].lower()}/{parts[1].lower()}"


def _refs_of(kind: str, obj: Mapping[str, Any]) -> tuple[Ref, ...]:
    refs: set[Ref] = set()
    try:
        if kind == "services":
            stack = str(obj.get("stack_name") or "").lower()
            refs.add(("stack", stack))
            refs.add(("primary", f"{stack}/{str(obj.get('name') or '').lower()}"))
            for target in obj.get("links") or {}:
                t_stack, _, t_name = str(target).rpartition("/")
                refs.add(("service", f"{(t_stack or stack).lower()}/{t_name.lower()}"))
            sidekicks = obj.get("sidekicks") or []
            for sidekick in [sidekicks] if isinstance(sidekicks, str) else sidekicks:
                refs.add(("service", f"{stack}/{str(sidekick).lower()}"))
        elif kind == "containers":
            stack = str(obj.get("stack_name") or "").lower()
            if stack:
                refs.add(("stack", stack))
            if obj.get("service_name"):
                refs.add(("service", f"{stack}/{str(obj['service_name']).lower()}"))
            if obj.get("host_uuid"):
                refs.add(("host", str(obj["host_uuid"])))
    except (TypeError, AttributeError):
        pass  # malformed: validation says what is wrong
    return tuple(refs)  # a tuple: a third of a frozenset's size, and only ever iterated


def _provides(obj: FleetObject | None) -> set[Ref]:
    """What an object settles for others: its existence, and for a host the name it may be
    named by, for a service the primary of each of its sidekicks."""
    if isinstance(obj, Host):
        return {("host", obj.uuid), ("host", obj.name)}
    if isinstance(obj, Stack):
        return {("stack", obj.name.lower())}
    if isinstance(obj, Service):
        stack = obj.stack_name.lower()
        out = {("service", f"{stack}/{obj.name.lower()}")}
        out.update(("primary", f"{stack}/{s.lower()}") for s in obj.sidekicks)
        return out
    return set()


def _looked_up(obj: FleetObject | None) -> set[Ref]:
    """The part of ``_provides`` that is a lookup of served objects only (``host_uuid`` by
    name, ``primary_of``), not an existence a hope stands in for."""
    if isinstance(obj, Host):
        return {("host", obj.name)} if obj.name != obj.uuid else set()  # by its uuid: as hoped
    if isinstance(obj, Service):
        stack = obj.stack_name.lower()
        return {("primary", f"{stack}/{s.lower()}") for s in obj.sidekicks}
    return set()


class HeldBack(dict[str, str]):
    """The keys held back, with why; ``moved`` says which entries changed since it was last
    asked (so a follower reports what is new without comparing every key)."""

    def __init__(self) -> None:
        super().__init__()
        self._moved: set[str] = set()

    def __setitem__(self, key: str, value: str) -> None:
        if self.get(key) != value:
            self._moved.add(key)
            super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._moved.add(key)
        super().__delitem__(key)

    def pop(self, key: str, default: Any = None) -> Any:
        if key in self:
            self._moved.add(key)
        return super().pop(key, default)

    def moved(self) -> set[str]:
        out, self._moved = self._moved, set()
        return out


class _Layered:
    """``References`` over the index plus the keys being decided (taken as served until shown
    otherwise, so that objects naming each other can be served together)."""

    def __init__(self, owner: EtcdObjects) -> None:
        self.owner = owner

    def has_stack(self, stack: str) -> bool:
        return self.owner.present("stacks", stack.lower())

    def has_service(self, stack: str, name: str) -> bool:
        return self.owner.present("services", f"{stack.lower()}/{name.lower()}")

    def host_uuid(self, ref: str) -> str | None:
        return self.owner.host_uuid(ref)

    def primary_of(self, stack: str, name: str) -> str | None:
        return self.owner.primary_of(f"{stack.lower()}/{name.lower()}")


CONTAINER_CHUNK = 4096
"""Container keys parsed and decided together: their parsed objects are held meanwhile."""


class EtcdObjects:
    """Every key under the prefix, parsed, and the ``FleetIndex`` of what is served."""

    def __init__(self, index: FleetIndex | None = None) -> None:
        self.index = index or FleetIndex()
        self.held = HeldBack()
        self._items: dict[str, _Item] = {}
        self._values: dict[str, bytes] = {}
        self._tokens: dict[str, dict[str, Any]] = {}  # "<stack>/<service>" (as in the key) -> {"token"}
        self._claims: SetMap[tuple[str, str]] = SetMap()  # identity -> keys claiming it
        self._served: dict[tuple[str, str], str] = {}  # identity -> the key served for it
        self._dependents: SetMap[Ref] = SetMap()
        self._hopeful: dict[tuple[str, str], str] = {}  # identities being decided -> their key
        self._host_names: SetMap[str] = SetMap()  # host name -> uuids served with it
        self._sidekick_of: SetMap[str] = SetMap()  # "stack/service" -> services listing it
        self._env_key = False

    def value(self, key: str) -> bytes | None:
        """The value ``key`` has now (whether or not it is served)."""
        return self._values.get(key)

    def stored_keys(self) -> KeysView[str]:
        return self._values.keys()

    # References, as the layered view answers them -------------------------------------------

    def present(self, kind: str, ident: str) -> bool:
        return (kind, ident) in self._served or (kind, ident) in self._hopeful

    def host_uuid(self, ref: str) -> str | None:
        named = self._host_names.get(ref)
        if named:
            return max(named, key=lambda u: self.index.order_key("hosts", u))
        if ("hosts", ref) in self._served or ("hosts", ref) in self._hopeful:
            return ref
        return None

    def primary_of(self, ident: str) -> str | None:
        listing = [i for i in self._sidekick_of.get(ident) if ("services", i) in self._served]
        if not listing:
            return None
        service = self.index.get("services", max(listing, key=lambda i: self.index.order_key("services", i)))
        assert isinstance(service, Service)
        return service.name

    # Changes -----------------------------------------------------------------------------

    def apply(
        self, puts: Mapping[str, bytes], deletes: Iterable[str] = (), create_revisions: Mapping[str, int] | None = None
    ) -> list[ObjectChange]:
        """Apply one unit of change (a watch response, a list): keys below the prefix put with
        their values, and keys deleted. Returns what changed in the index."""
        revisions = create_revisions or {}
        journal: dict[tuple[str, str], FleetObject | None] = {}
        decide: set[tuple[str, str]] = set()
        tokens: set[str] = set()
        # Containers last: nothing names a container, so deciding them after everything else
        # gives what deciding all at once gives (a container put now and checked again on the
        # way, through what it names, is decided once more with its new value).
        containers = [key for key in puts if key.startswith("containers/")]
        others = puts
        if containers:
            others = {key: value for key, value in puts.items() if not key.startswith("containers/")}
        env_changed = self._take(others, deletes, revisions, decide, tokens)
        self._settle(decide, journal)
        self._check_tokens(tokens)
        for start in range(0, len(containers), CONTAINER_CHUNK):
            chunk = containers[start : start + CONTAINER_CHUNK]
            self._take_containers({key: puts[key] for key in chunk}, revisions, journal)
        changes = [
            ObjectChange(kind, ident, old, self.index.get(kind, ident))
            for (kind, ident), old in journal.items()
            if old != self.index.get(kind, ident)
        ]
        if env_changed:
            env = self._environment()
            if env != self.index.environment:
                changes.insert(0, ObjectChange("environment", "", self.index.environment, env))
                self.index.apply(changes[:1])
        return changes

    def _take(
        self,
        puts: Mapping[str, bytes],
        deletes: Iterable[str],
        revisions: Mapping[str, int],
        decide: set[tuple[str, str]],
        tokens: set[str],
    ) -> bool:
        """Store and parse what changed; collect the identities to decide again and the keys
        whose tokens to check. True when the environment key moved."""
        env_changed = False
        for key in deletes:
            if self._values.pop(key, None) is None:
                continue
            env_changed |= self._forget(key, decide)
            tokens.add(key)
        for key, value in puts.items():
            if self._values.get(key) == value:
                continue
            self._values[key] = value
            env_changed |= self._forget(key, decide)
            self._parse(key, value, revisions.get(key, 0), decide)
            env_changed |= key == "environment"
            tokens.add(key)
        return env_changed

    def _take_containers(
        self,
        puts: Mapping[str, bytes],
        revisions: Mapping[str, int],
        journal: dict[tuple[str, str], FleetObject | None],
    ) -> None:
        """Store, parse and decide container keys. A container names others but nothing names
        it, so each one claimed by its key alone is decided once, from the object parsed here;
        the others (a uuid claimed twice) go through ``_settle``. Taken a chunk at a time, so
        that the parsed objects held meanwhile stay few."""
        decide: set[tuple[str, str]] = set()
        parsed: dict[str, dict[str, Any]] = {}
        for key, value in puts.items():
            if self._values.get(key) == value:
                continue
            self._values[key] = value
            self._forget(key, decide)
            obj = self._parse(key, value, revisions.get(key, 0), decide)
            if obj is not None:
                parsed[key] = obj
        rest: set[tuple[str, str]] = set()
        refs = _Layered(self)
        for ident in decide:
            claimant = self._claims.only(ident)
            obj = parsed.get(claimant) if claimant is not None else None
            if claimant is None or obj is None:
                rest.add(ident)
                continue
            key = claimant
            kind, name = ident
            old = self.index.get(kind, name)
            new: FleetObject | None
            try:
                new = ObjectRules.container(obj, f"key {key}", refs, self._items[key].create_revision, _no_uuid)
            except FleetError as exc:
                self.held[key] = exc.problem
                new = None
                self._served.pop(ident, None)
            else:
                self.held.pop(key, None)
                self._served[ident] = key
            if new != old:
                journal.setdefault(ident, old)
                self.index.apply([ObjectChange(kind, name, old, new)])
        if rest:
            self._settle(rest, journal)

    def _environment(self) -> Environment:
        """The ``environment`` key's, or the default one when it is missing or unusable (held
        back), as a whole validation gives."""
        try:
            obj = json_codec.loads(self._values.get("environment", b"{}"))
            return environment_from({"environment": obj if isinstance(obj, dict) else {}})
        except (ValueError, UnicodeDecodeError):
            return environment_from({})
        except FleetError as exc:
            self.held["environment"] = exc.problem
            return environment_from({})

    def _check_tokens(self, keys: Iterable[str]) -> None:
        """A token is held back while no key (valid or not) holds its service."""
        for key in keys:
            if key.startswith(("tokens/", "services/")):
                rest = key.split("/", 1)[1]
                token_key = f"tokens/{rest}"
                if rest in self._tokens and f"services/{rest}" not in self._values:
                    self.held[token_key] = "a token for a service that does not exist"
                elif self.held.get(token_key) == "a token for a service that does not exist":
                    del self.held[token_key]

    def _service_identity(self, token_rest: str, decide: set[tuple[str, str]]) -> None:
        item = self._items.get("services/" + token_rest)
        if item is not None and not item.problem:
            decide.add((item.kind, item.ident))

    def _forget(self, key: str, decide: set[tuple[str, str]]) -> bool:
        """Take ``key``'s parsed object out (its identity is decided again)."""
        if key == "environment":
            self.held.pop(key, None)
            return True
        if key.startswith("tokens/"):
            self._tokens.pop(key[len("tokens/") :], None)
            self.held.pop(key, None)
            self._service_identity(key[len("tokens/") :], decide)
            return False
        item = self._items.pop(key, None)
        self.held.pop(key, None)
        if item is None:
            return False
        for ref in item.refs:
            self._dependents.discard(ref, key)
        if not item.problem:
            self._claims.discard((item.kind, item.ident), key)
            decide.add((item.kind, item.ident))
        return False

    def _parse(
        self, key: str, value: bytes, create_revision: int, decide: set[tuple[str, str]]
    ) -> dict[str, Any] | None:
        """Parse ``key``'s value into its item (held back when malformed); returns the parsed
        object when the key is a candidate for its identity."""
        if key.startswith("claims/") or is_status_key(key):  # the agents' claims, the hosts' reports
            return None
        problem = ""
        obj: Any = None
        try:
            obj = json_codec.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:
            problem = f"not JSON: {exc}"
        else:
            if not isinstance(obj, dict):
                problem = f"not a JSON object but {type(obj).__name__}"
        if key == "environment":
            if problem:
                self.held[key] = problem
            return None
        if key.startswith("tokens/"):
            if problem:
                self.held[key] = problem
                return None
            self._tokens[key[len("tokens/") :]] = obj
            self._service_identity(key[len("tokens/") :], decide)
            return None
        kind = key.split("/", 1)[0]
        if not problem:
            problem = (named_by_key(kind, key, obj) if kind in KINDS[1:] else "not a key of the fleet layout") or ""
        if problem:
            self._items[key] = _Item(kind, "", None, problem)
            self.held[key] = problem
            return None
        ident = _ident_of(kind, key_names(key)[1:])
        refs = _refs_of(kind, obj)
        self._items[key] = _Item(kind, ident, None if kind == "containers" else obj, "", create_revision, refs)
        for ref in refs:
            self._dependents.add(ref, key)
        self._claims.add((kind, ident), key)
        decide.add((kind, ident))
        return cast(dict[str, Any], obj)

    def _object_of(self, key: str, item: _Item) -> FleetObject:
        """Validate ``item`` against the layered references; FleetError when it cannot be served."""
        obj = item.obj
        if obj is None:
            obj = json_codec.loads(self._values[key])
            named_by_key(item.kind, key, obj)
        refs = _Layered(self)
        if item.kind == "hosts":
            return ObjectRules.host(obj, f"key {key}")
        if item.kind == "stacks":
            return ObjectRules.stack(obj, f"key {key}")
        if item.kind == "services":
            token = self._tokens.get(key[len("services/") :])
            if token is not None:
                obj = {**obj, "token": token.get("token") or ""}
            ObjectRules.service_key(obj, f"key {key}", refs)
            ObjectRules.sidekicks(obj, f"key {key}", refs)
            return ObjectRules.service(obj, f"key {key}", refs)
        return ObjectRules.container(obj, f"key {key}", refs, item.create_revision, _no_uuid)

    def _settle(self, decide: set[tuple[str, str]], journal: dict[tuple[str, str], FleetObject | None]) -> None:
        """Decide what is served for every identity ``decide``'s keys claim, and everything that
        depends on them, until nothing moves: first every candidate is taken as served (so that
        objects naming each other can be), then each is checked, and each refusal or change
        checks what depends on it again."""
        identities = decide
        check: set[tuple[str, str]] = set()
        # Hope: each identity's first claimant in key order, and, through what they provide,
        # every held-back key that names them.
        queue = list(identities)
        seen: set[tuple[str, str]] = set()
        while queue:
            ident = queue.pop()
            if ident in seen:
                continue
            seen.add(ident)
            check.add(ident)
            claimants = sorted(self._claims.get(ident))
            if claimants:
                self._hopeful[ident] = claimants[0]
                item = self._items[claimants[0]]
                for ref in _hoped_provides(item):
                    for dependent in self._dependents.get(ref):
                        # Every key that names it and is not served, also when another key
                        # serves its identity: an earlier key in key order may now be.
                        dep = self._items[dependent]
                        if self._served.get((dep.kind, dep.ident)) != dependent and not dep.problem:
                            queue.append((dep.kind, dep.ident))
        rounds = 0
        while check:
            rounds += 1
            if rounds > 20 * (len(self._items) + 1000):  # each check settles for good or moves others: bounded
                raise FleetError("etcd", "the objects do not settle")
            ident = check.pop()
            moved = self._decide(ident, journal)
            for ref in moved:
                for dependent in self._dependents.get(ref):
                    dep = self._items[dependent]
                    check.add((dep.kind, dep.ident))
        self._hopeful.clear()

    def _decide(self, ident: tuple[str, str], journal: dict[tuple[str, str], FleetObject | None]) -> set[Ref]:
        """Serve the first claimant of ``ident`` (in key order) that validates, or nothing;
        returns what that changed for others."""
        kind, name = ident
        hoped = self._hopeful.get(ident)
        old = self.index.get(kind, name)
        new: FleetObject | None = None
        served_key = ""
        claimants = sorted(self._claims.get(ident))
        for key in claimants:
            item = self._items[key]
            self._hopeful[ident] = key
            try:
                new = self._object_of(key, item)
            except FleetError as exc:
                self.held[key] = exc.problem
                continue
            served_key = key
            break
        # Others may have been checked on the hope that the hoped key would be served.
        dashed: set[Ref] = set()
        if hoped is not None and hoped != served_key and hoped in self._items:
            dashed = _hoped_provides(self._items[hoped])
        if not served_key:
            self._hopeful.pop(ident, None)
        for key in claimants:
            if key == served_key:
                self.held.pop(key, None)
            elif served_key and key > served_key:
                self.held[key] = f"another key, {served_key}, holds this {kind[:-1]} already"
        if new == old and (served_key or old is None):
            if served_key:
                self._served[ident] = served_key
            self._hopeful.pop(ident, None)
            return dashed
        journal.setdefault(ident, old)
        if served_key:
            self._served[ident] = served_key
        else:
            self._served.pop(ident, None)
        self._hopeful.pop(ident, None)
        self.index.apply([ObjectChange(kind, name, old, new)])
        self._track(name, old, new)
        if old is None and served_key and served_key == hoped:
            # The hope came true: what was checked on it stands. Only what others could not
            # look up on a hope (a host by its name, a sidekick's primary) is checked again.
            return _looked_up(new) | dashed
        return _provides(old) | _provides(new) | dashed

    def _track(self, ident: str, old: FleetObject | None, new: FleetObject | None) -> None:
        """The lookups of ``References`` that the index does not keep: hosts by name, and which
        services list a service as their sidekick."""
        for obj, add in ((old, False), (new, True)):
            if isinstance(obj, Host):
                if add:
                    self._host_names.add(obj.name, ident)
                else:
                    self._host_names.discard(obj.name, ident)
            elif isinstance(obj, Service):
                stack = obj.stack_name.lower()
                for sidekick in obj.sidekicks:
                    if add:
                        self._sidekick_of.add(f"{stack}/{sidekick.lower()}", ident)
                    else:
                        self._sidekick_of.discard(f"{stack}/{sidekick.lower()}", ident)


def fleet_from_keys(
    values: Mapping[str, bytes], create_revisions: Mapping[str, int] | None = None
) -> tuple[Fleet, dict[str, str]]:
    """The fleet stored under ``values`` (keys below the prefix), and the keys held back with
    why: every key applied at once (``create_revisions``: each key's etcd ``create_revision``,
    a container's ``create_index`` when it has none)."""
    objects = EtcdObjects()
    objects.apply(values, (), create_revisions)
    return objects.index.snapshot(), dict(objects.held)


def _hoped_provides(item: _Item) -> set[Ref]:
    """What an item would provide if served, from its parsed object (before validation)."""
    obj = item.obj or {}
    if item.kind == "hosts":
        return {("host", item.ident), ("host", str(obj.get("name") or ""))}
    if item.kind == "stacks":
        return {("stack", item.ident)}
    if item.kind == "services":
        out: set[Ref] = {("service", item.ident)}
        stack = item.ident.split("/", 1)[0]
        sidekicks = obj.get("sidekicks") or []
        if isinstance(sidekicks, list):
            out.update(("primary", f"{stack}/{str(s).lower()}") for s in sidekicks)
        return out
    return set()


def _no_uuid(name: str, host: str, ip: str) -> str:
    raise AssertionError("a container's key names its uuid")  # named_by_key fills it in
