"""``metadns fleet put FILE``: add or replace the objects FILE names, and nothing else.

``apply`` makes etcd hold exactly a whole fleet file; ``put`` writes a few objects into what etcd
holds (one container's new address, a new service with its containers) without the rest of the
fleet at hand. FILE has the fleet file's layout with any of its lists (``containers`` may be
missing). Each object replaces the one of the same identity, or is added:

- a host by ``uuid`` (without one: the host of that ``name``, else a new one);
- a stack by ``name``, a service by ``stack_name`` and ``name`` (case-insensitive, as DNS);
- a container by ``uuid``; without one, the only container of that ``name`` (a name several
  containers share needs its uuid), else a new one. A container put with another ``host_uuid``
  moves: its old key goes in the same transaction.
- ``environment`` replaces the environment.

The objects are validated as part of the fleet etcd holds, references included (a container's
stack, service and host; a service's links and sidekicks): what would not validate is refused
with one line naming FILE's object, and nothing is written. Nothing is deleted: a service put
without ``token`` keeps its token. An agent's registrations (keys held by a lease) are not
``put``'s to replace. The write is one transaction of at most 128 operations (etcd's default
``--max-txn-ops``) per step, hosts and stacks first, each step conditional on every key it
writes or relies on being as read: when etcd changed in between, the put is read, validated and
tried again (three times at most).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.etcd import MAX_TXN_OPS, EtcdClient, KeyValue, b64
from shared.etcd_fleet import KINDS, fleet_keys, object_key
from shared.etcd_objects import fleet_from_keys
from shared.model import Fleet, FleetError, stable_uuid

ATTEMPTS = 3
_LISTS = KINDS[1:]


class PutConflict(Exception):
    """etcd changed between the read and the write: read and validate again."""


@dataclass
class PutPlan:
    """What a put writes: per key its new value, the old keys it replaces when its object moves,
    and the keys it relies on (the objects it references), with every such key's mod revision
    as read (0: absent)."""

    writes: dict[str, bytes] = field(default_factory=dict)
    moves: dict[str, list[str]] = field(default_factory=dict)  # written key -> old keys it replaces
    relies_on: dict[str, set[str]] = field(default_factory=dict)  # written key -> keys read
    revisions: dict[str, int] = field(default_factory=dict)

    def needs(self, key: str) -> set[str]:
        """Every key whose revision the write of ``key`` is conditional on."""
        return {key, *self.relies_on.get(key, ()), *self.moves.get(key, ())}

    def changes(self) -> list[tuple[str, str]]:
        """(sign, key) of every key written or removed, in the order written: ``+`` new, ``~``
        changed, ``-`` removed."""
        out = []
        for key in (k for step in self.steps() for k in step):
            out.append(("~" if self.revisions.get(key) else "+", key))
            out += [("-", old) for old in self.moves.get(key, ())]
        return out

    def steps(self) -> list[list[str]]:
        """The written keys in transactions that etcd takes (at most MAX_TXN_OPS comparisons and
        as many operations each), referenced kinds first."""
        order = {kind: i for i, kind in enumerate(("environment", "hosts", "stacks", "services", "tokens"))}
        keys = sorted(self.writes, key=lambda k: (order.get(k.split("/", 1)[0], len(order)), k))
        out: list[list[str]] = []
        step: list[str] = []
        ops = 0
        compared: set[str] = set()
        for key in keys:
            needs, key_ops = self.needs(key), 1 + len(self.moves.get(key, ()))
            if step and (ops + key_ops > MAX_TXN_OPS or len(compared | needs) > MAX_TXN_OPS):
                out.append(step)
                step, ops, compared = [], 0, set()
            step.append(key)
            ops += key_ops
            compared |= needs
        if step:
            out.append(step)
        return out


def read_put_file(data: Any, path: str) -> dict[str, list[dict[str, Any]] | dict[str, Any]]:
    """FILE's objects by kind; a FleetError naming FILE when it is not a fleet file's shape."""
    if not isinstance(data, Mapping):
        raise FleetError(path, "the top level must be a mapping of hosts, stacks, services, containers, environment")
    unknown = sorted(set(data) - set(KINDS))
    if unknown:
        raise FleetError(path, f"unknown top-level key {unknown[0]!r} (put takes {', '.join(KINDS)})")
    out: dict[str, Any] = {}
    for kind in KINDS:
        if kind not in data or data[kind] is None:
            continue
        value = data[kind]
        if kind == "environment":
            if not isinstance(value, Mapping):
                raise FleetError(f"{path}: environment", "must be a mapping")
            out[kind] = dict(value)
            continue
        if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
            raise FleetError(f"{path}: {kind}", "must be a list of mappings")
        out[kind] = [copy.deepcopy(dict(item)) for item in value]
    if not out:
        raise FleetError(path, "names no object (give hosts, stacks, services, containers or environment)")
    return out


def _lower(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    return value.lower() if isinstance(value, str) else ""


def _identity(kind: str, obj: Mapping[str, Any]) -> tuple[str, ...]:
    if kind == "hosts":
        return (str(obj.get("uuid") or ""),)
    if kind == "stacks":
        return (_lower(obj, "name"),)
    if kind == "services":
        return (_lower(obj, "stack_name"), _lower(obj, "name"))
    return (str(obj.get("uuid") or ""),)


@dataclass
class Merged:
    """The fleet etcd holds with FILE's objects in it. ``origin``: per kind, which merged index
    is FILE's object at which index (error lines name FILE's object); ``old_keys``: the key the
    object it replaced is stored at."""

    data: dict[str, Any]
    origin: dict[str, dict[int, int]]
    old_keys: dict[str, dict[int, str]]


def merge(current: Fleet, wanted: Mapping[str, Any], path: str) -> Merged:
    data: dict[str, Any] = {kind: [copy.deepcopy(o) for o in current.raw.get(kind) or ()] for kind in _LISTS}
    data["environment"] = dict(wanted.get("environment") or current.raw.get("environment") or {})
    merged = Merged(data, {kind: {} for kind in _LISTS}, {kind: {} for kind in _LISTS})
    for kind in _LISTS:
        items: list[dict[str, Any]] = data[kind]
        at_identity = {_identity(kind, o): i for i, o in enumerate(items)}
        by_name: dict[str, list[int]] = {}
        for i, o in enumerate(items):
            by_name.setdefault(_lower(o, "name"), []).append(i)
        for file_index, obj in enumerate(wanted.get(kind) or ()):
            name = f" name={obj['name']}" if isinstance(obj.get("name"), str) else ""
            where = f"{path}: {kind}[{file_index}]{name}"
            _complete_identity(kind, obj, [items[i] for i in by_name.get(_lower(obj, "name"), ())], where)
            ident = _identity(kind, obj)
            at = at_identity.get(ident)
            if at is None:
                at = at_identity[ident] = len(items)
                by_name.setdefault(_lower(obj, "name"), []).append(at)
                items.append(obj)
            else:
                if kind == "services" and "token" not in obj and items[at].get("token"):
                    obj["token"] = items[at]["token"]  # put deletes nothing: the token stays
                merged.old_keys[kind][at] = object_key(kind, items[at])
                items[at] = obj
            merged.origin[kind][at] = file_index
    return merged


def _complete_identity(kind: str, obj: dict[str, Any], same: list[dict[str, Any]], where: str) -> None:
    """Give an object without a uuid the one it has in etcd (``same``: the objects of its name),
    or a new one, as the model would derive it; stacks and services are known by name already."""
    if kind not in ("hosts", "containers") or obj.get("uuid"):
        return
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise FleetError(where, "'name' is required")
    if kind == "hosts":
        obj["uuid"] = same[0]["uuid"] if same else stable_uuid("host", name)
        return
    if len(same) > 1:
        raise FleetError(where, f"{len(same)} containers are named {name!r}: give the uuid of the one to replace")
    if same:
        obj["uuid"] = same[0]["uuid"]
        return
    obj["uuid"] = stable_uuid("container", name)


def _references(kind: str, obj: Mapping[str, Any]) -> set[str]:
    """The keys of the objects ``obj`` refers to, which must still be there when it is written."""
    if kind == "containers":
        refs = set()
        if obj.get("stack_name"):
            refs.add(object_key("stacks", {"name": obj["stack_name"]}))
            if obj.get("service_name"):
                refs.add(object_key("services", {"stack_name": obj["stack_name"], "name": obj["service_name"]}))
        if obj.get("host_uuid"):
            refs.add(object_key("hosts", {"uuid": obj["host_uuid"]}))
        return refs
    if kind == "services":
        refs = {object_key("stacks", {"name": obj["stack_name"]})}
        for target in obj.get("links") or {}:
            stack, _, service = str(target).rpartition("/")
            refs.add(object_key("services", {"stack_name": stack or obj["stack_name"], "name": service}))
        for sidekick in obj.get("sidekicks") or ():
            refs.add(object_key("services", {"stack_name": obj["stack_name"], "name": sidekick}))
        return refs
    return set()


def plan_put(current_kvs: list[KeyValue], prefix: bytes, wanted: Mapping[str, Any], path: str) -> PutPlan:
    """Validate FILE's objects inside the fleet etcd holds and say what to write."""
    current = {kv.key[len(prefix) :].decode(): kv for kv in current_kvs}
    held, _bad = fleet_from_keys({key: kv.value for key, kv in current.items()})
    merged = merge(held, wanted, path)

    try:
        fleet = Fleet.from_mapping(merged.data)
    except FleetError as exc:
        raise _named(exc, merged, path, prefix) from None
    new_keys = fleet_keys(fleet)
    plan = PutPlan()
    for kind in _LISTS:
        for index in merged.origin[kind]:
            obj = fleet.raw[kind][index]
            _plan_object(plan, current, new_keys, kind, obj, merged.old_keys[kind].get(index), path)
    if "environment" in wanted:
        existing = current.get("environment")
        if existing is None or existing.value != new_keys["environment"]:
            plan.writes["environment"] = new_keys["environment"]
    for key in plan.writes:
        for k in plan.needs(key):
            kv = current.get(k)
            plan.revisions[k] = kv.mod_revision if kv is not None else 0
    return plan


def _named(exc: FleetError, merged: Merged, path: str, prefix: bytes) -> FleetError:
    """The error with its object named as the operator knows it: FILE's object by its place in
    FILE, an object etcd holds by its key."""
    kind, index = exc.collection, exc.index
    if kind not in merged.origin or index is None or index >= len(merged.data[kind]):
        return exc
    obj = merged.data[kind][index]
    if index in merged.origin[kind]:
        name = f" name={obj['name']}" if isinstance(obj.get("name"), str) else ""
        return FleetError(f"{path}: {kind}[{merged.origin[kind][index]}]{name}", exc.problem)
    return FleetError(f"{prefix.decode()}{object_key(kind, obj)} (with {path})", exc.problem)


def _token_key(service_key: str) -> str:
    return f"tokens/{service_key[len('services/') :]}"


def _plan_object(
    plan: PutPlan,
    current: Mapping[str, KeyValue],
    new_keys: Mapping[str, bytes],
    kind: str,
    obj: Mapping[str, Any],
    old_key: str | None,
    path: str,
) -> None:
    """What writing one of FILE's objects takes: its key (and its token's), and the old key
    when the object moves (a container to another host, a name's spelling changed)."""
    key = object_key(kind, obj)
    pairs = [(key, old_key)]
    if kind == "services" and obj.get("token"):
        pairs.append((_token_key(key), _token_key(old_key) if old_key else None))
    for new, old in pairs:
        for k in (new, old):
            kv = current.get(k) if k else None
            if kv is not None and kv.lease:
                raise FleetError(f"{path}: {kind} {k}", "registered by a host agent (its lease holds it): not put's")
        moves = old is not None and old != new and old in current
        if moves:
            plan.moves.setdefault(new, []).append(str(old))
        existing = current.get(new)
        if moves or existing is None or existing.value != new_keys[new]:
            plan.writes[new] = new_keys[new]
            plan.relies_on[new] = _references(kind, obj) if new == key else set()


def _unchanged_since(key: bytes, revision: int) -> dict[str, object]:
    """The comparison "``key`` is as read": last modified at ``revision`` (0: absent)."""
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


async def write_plan(client: EtcdClient, prefix: bytes, plan: PutPlan) -> list[tuple[str, str]]:
    """Write ``plan`` step by step; the changes as (sign, key). Each step compares every key it
    writes, moves or relies on with the revision read (0: absent), or the revision an earlier
    step wrote it at; PutConflict when one differs (nothing of that step written)."""
    revisions = dict(plan.revisions)
    for step in plan.steps():
        compared: set[str] = set()
        ops: list[dict[str, object]] = []
        for key in step:
            compared |= plan.needs(key)
            ops.append({"request_put": {"key": b64(prefix + key.encode()), "value": b64(plan.writes[key])}})
            ops += [{"request_delete_range": {"key": b64(prefix + old.encode())}} for old in plan.moves.get(key, ())]
        compares = [_unchanged_since(prefix + k.encode(), revisions.get(k, 0)) for k in sorted(compared)]
        ok, revision, _ = await client.txn(compares, ops)
        if not ok:
            raise PutConflict("etcd changed under the put")
        for key in step:
            revisions[key] = revision
            revisions.update(dict.fromkeys(plan.moves.get(key, ()), 0))
    return plan.changes()


async def put(
    client: EtcdClient, prefix: bytes, wanted: Mapping[str, Any], path: str, dry_run: bool
) -> list[tuple[str, str]]:
    """Read, validate and write FILE's objects, again when etcd changed in between."""
    for attempt in range(ATTEMPTS):
        kvs, _ = await client.list_prefix(prefix)
        plan = plan_put(kvs, prefix, wanted, path)
        if dry_run:
            return plan.changes()
        try:
            return await write_plan(client, prefix, plan)
        except PutConflict:
            if attempt == ATTEMPTS - 1:
                raise FleetError(
                    path, f"etcd kept changing under the put ({ATTEMPTS} attempts); run it again"
                ) from None
    return []
