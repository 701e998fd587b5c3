"""The fleet: environment, hosts, stacks, services and containers, with Rancher field names.

A ``Fleet`` is immutable and valid by construction: ``Fleet.from_mapping`` checks every cross
reference (a container's stack, service and host; a service's links and sidekicks; unique names
and IPs) and raises ``FleetError`` naming the object and the problem. Fields the model does not
know are kept in ``extra`` and served unchanged, so a fleet exported from Rancher loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import socket
import uuid as uuid_mod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from sys import intern
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

from shared import json_codec
from shared.collector import collector_paused

SERVICE_KINDS = frozenset(
    {"service", "externalService", "dnsService", "loadBalancerService", "kubernetesService", "scalingGroup"}
)
_NS = uuid_mod.UUID("5b8f2c1e-6d0a-4a44-9a57-4b1f1e0c9a10")

Locate = Callable[[str, int], str | None]
"""Maps (collection, index) to a source position such as ``line 12``, when the source knows it."""

# Rancher's container states and health states, as every consumer of the fleet reads them: a
# container is served while RUNNING and HEALTHY, and GONE ones are never served at all.
HEALTHY = frozenset({"", "healthy", "updating-healthy"})
RUNNING = frozenset({"running", "starting"})
GONE = frozenset({"stopped", "removed", "purged", "error"})


def port_spec(spec: str) -> tuple[int, str] | None:
    """The container-side port and protocol of a Rancher port spec (``[ip:][public:]private[/proto]``)."""
    body, _, proto = spec.partition("/")
    private = body.rsplit(":", 1)[-1]
    if not private.isdigit() or not 0 < int(private) < 65536:
        return None
    return int(private), (proto or "tcp").lower()


class FleetError(ValueError):
    """A fleet that must not be served. ``where`` names the object, ``problem`` what is wrong."""

    def __init__(self, where: object, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = str(where)
        self.problem = problem
        # which object, when it is one of a collection (a source can then hold back just that one)
        self.collection: str | None = getattr(where, "collection", None)
        self.index: int | None = getattr(where, "index", None)


class _Where:
    """Names an object of the fleet for an error message; formatted only when an error occurs."""

    __slots__ = ("collection", "index", "item", "locate")

    def __init__(self, collection: str, index: int, item: Any, locate: Locate) -> None:
        self.collection = collection
        self.index = index
        self.item = item
        self.locate = locate

    def __str__(self) -> str:
        text = f"{self.collection}[{self.index}]"
        if isinstance(self.item, Mapping) and isinstance(self.item.get("name"), str):
            text += f" name={self.item['name']}"
        position = self.locate(self.collection, self.index)
        return f"{text} ({position})" if position else text


_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _frozen(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    # Most labels, links and extras are empty: one shared empty mapping instead of a dict and a
    # proxy each (three per container, in each service's copy of the fleet).
    return MappingProxyType(dict(value)) if value else _EMPTY


@dataclass(frozen=True, slots=True)
class Host:
    uuid: str
    name: str
    agent_ip: str = ""
    hostname: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Stack:
    name: str
    uuid: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    stack_name: str
    uuid: str
    kind: str = "service"
    hostname: str = ""
    vip: str = ""
    external_ips: tuple[str, ...] = ()
    links: Mapping[str, str] = field(default_factory=dict)
    sidekicks: tuple[str, ...] = ()
    primary_service_name: str = ""
    ports: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    token: str = ""
    health_check: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Container:
    name: str
    uuid: str
    primary_ip: str
    stack_name: str = ""
    service_name: str = ""
    host_uuid: str = ""
    state: str = "running"
    health_state: str = "healthy"
    create_index: int = 0
    service_index: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    links: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Environment:
    name: str = "default"
    uuid: str = ""


@dataclass(frozen=True)
class Fleet:
    """A validated snapshot of the fleet, in file order, with fast lookups by name and IP."""

    environment: Environment
    hosts: tuple[Host, ...]
    stacks: tuple[Stack, ...]
    services: tuple[Service, ...]
    containers: tuple[Container, ...]
    digest: str
    raw: Mapping[str, Any]

    def container_by_ip(self, ip: str) -> Container | None:
        return self._by_ip.get(ip)

    def container(self, uuid: str) -> Container | None:
        return self._by_uuid.get(uuid)

    @cached_property
    def _by_uuid(self) -> dict[str, Container]:
        return {c.uuid: c for c in self.containers}

    def host(self, uuid: str) -> Host | None:
        return self._hosts.get(uuid)

    def stack(self, name: str) -> Stack | None:
        return self._stacks.get(name.lower())

    def service(self, stack_name: str, name: str) -> Service | None:
        return self._services.get((stack_name.lower(), name.lower()))

    def service_containers(self, service: Service) -> tuple[Container, ...]:
        return self._members.get((service.stack_name.lower(), service.name.lower()), ())

    def stack_services(self, stack: Stack) -> tuple[Service, ...]:
        return self._stack_services.get(stack.name.lower(), ())

    # What a path segment such as /containers/<name or uuid> may name: every object whose name or
    # uuid is ``text`` in any case, in fleet order (names repeat; the metadata API's first match
    # wins). Built on first use, so a fleet nobody asks by name pays nothing.

    def hosts_called(self, text: str) -> tuple[Host, ...]:
        return self._hosts_called.get(text)

    def stacks_called(self, text: str) -> tuple[Stack, ...]:
        return self._stacks_called.get(text)

    def services_called(self, text: str) -> tuple[Service, ...]:
        return self._services_called.get(text)

    def containers_called(self, text: str) -> tuple[Container, ...]:
        return self._containers_called.get(text)

    @cached_property
    def _hosts_called(self) -> _ByNameOrUuid[Host]:
        return _ByNameOrUuid(self.hosts)

    @cached_property
    def _stacks_called(self) -> _ByNameOrUuid[Stack]:
        return _ByNameOrUuid(self.stacks)

    @cached_property
    def _services_called(self) -> _ByNameOrUuid[Service]:
        return _ByNameOrUuid(self.services)

    @cached_property
    def _containers_called(self) -> _ByNameOrUuid[Container]:
        return _ByNameOrUuid(self.containers)

    def __post_init__(self) -> None:
        # An address several containers share (Rancher gives host-network containers the host's)
        # names none of them: ``self`` and per-client answers need to know who is asking.
        by_ip: dict[str, Container] = {}
        shared: set[str] = set()
        for c in self.containers:
            if c.primary_ip in by_ip:
                shared.add(c.primary_ip)
            by_ip[c.primary_ip] = c
        for ip in shared:
            del by_ip[ip]
        members: dict[tuple[str, str], list[Container]] = {}
        for c in self.containers:
            if c.service_name:
                members.setdefault((c.stack_name.lower(), c.service_name.lower()), []).append(c)
        stack_services: dict[str, list[Service]] = {}
        for s in self.services:
            stack_services.setdefault(s.stack_name.lower(), []).append(s)
        object.__setattr__(self, "_by_ip", by_ip)
        object.__setattr__(self, "_hosts", {h.uuid: h for h in self.hosts})
        object.__setattr__(self, "_stacks", {s.name.lower(): s for s in self.stacks})
        object.__setattr__(self, "_services", {(s.stack_name.lower(), s.name.lower()): s for s in self.services})
        object.__setattr__(self, "_members", {k: tuple(v) for k, v in members.items()})
        object.__setattr__(self, "_stack_services", {k: tuple(v) for k, v in stack_services.items()})

    _by_ip: dict[str, Container] = field(init=False, repr=False, compare=False)
    _hosts: dict[str, Host] = field(init=False, repr=False, compare=False)
    _stacks: dict[str, Stack] = field(init=False, repr=False, compare=False)
    _services: dict[tuple[str, str], Service] = field(init=False, repr=False, compare=False)
    _members: dict[tuple[str, str], tuple[Container, ...]] = field(init=False, repr=False, compare=False)
    _stack_services: dict[str, tuple[Service, ...]] = field(init=False, repr=False, compare=False)

    @classmethod
    def empty(cls) -> Fleet:
        return cls.from_mapping({"containers": []})

    @classmethod
    def from_mapping(cls, data: Any, locate: Locate | None = None) -> Fleet:
        """Validate ``data`` (the parsed fleet file) and build a Fleet, or raise FleetError."""
        with collector_paused():
            return _FleetBuilder(data, locate or (lambda _c, _i: None)).build()

    @classmethod
    def from_trusted(cls, raw: Mapping[str, Any], digest: str) -> Fleet:
        """Rebuild a fleet that metadns's metadata service already validated and normalised
        (``Fleet.raw``), without validating it again: the DNS service does this on every fleet
        change, and for a 10k-container fleet validation would be most of the cost."""
        return cls(
            trusted_environment(raw.get("environment") or {}),
            tuple(trusted_host(h) for h in raw.get("hosts", ())),
            tuple(trusted_stack(st) for st in raw.get("stacks", ())),
            tuple(trusted_service(sv) for sv in raw.get("services", ())),
            tuple(trusted_container(c) for c in raw.get("containers", ())),
            digest,
            raw,
        )

    def to_mapping(self) -> dict[str, Any]:
        """The normalised fleet, suitable for ``from_mapping`` and for the kept copy on disk."""
        return json.loads(json.dumps(self.raw))  # type: ignore[no-any-return]


def _rest(item: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    known = _KNOWN[kind]
    if item.keys() <= known:  # nearly always: one comparison in C, not a loop per field
        return _EMPTY
    return _frozen({k: v for k, v in item.items() if k not in known})


def trusted_environment(env: Mapping[str, Any]) -> Environment:
    """The objects of a normalised fleet (``Fleet.raw``, the fleet document), not validated
    again: the metadata service did, and the DNS service rebuilds them on every change."""
    return Environment(name=env.get("name", "default"), uuid=env.get("uuid", ""))


def trusted_host(h: Mapping[str, Any]) -> Host:
    return Host(
        uuid=h["uuid"],
        name=h["name"],
        agent_ip=h.get("agent_ip", ""),
        hostname=h.get("hostname", ""),
        labels=_frozen(h.get("labels")),
        extra=_rest(h, "hosts"),
    )


def trusted_stack(st: Mapping[str, Any]) -> Stack:
    return Stack(name=st["name"], uuid=st["uuid"], extra=_rest(st, "stacks"))


def trusted_service(sv: Mapping[str, Any]) -> Service:
    return Service(
        name=sv["name"],
        stack_name=sv["stack_name"],
        uuid=sv["uuid"],
        kind=sv.get("kind", "service"),
        hostname=sv.get("hostname", ""),
        vip=sv.get("vip", ""),
        external_ips=tuple(sv.get("external_ips", ())),
        links=_frozen(sv.get("links")),
        sidekicks=tuple(sv.get("sidekicks", ())),
        primary_service_name=sv.get("primary_service_name", ""),
        ports=tuple(sv.get("ports", ())),
        labels=_frozen(sv.get("labels")),
        metadata=_frozen(sv.get("metadata")),
        token=sv.get("token") or "",
        health_check=_frozen(sv["health_check"]) if sv.get("health_check") is not None else None,
        extra=_rest(sv, "services"),
    )


def trusted_container(c: Mapping[str, Any]) -> Container:
    return Container(
        name=c["name"],
        uuid=c["uuid"],
        primary_ip=c["primary_ip"],
        stack_name=intern(c.get("stack_name", "")),
        service_name=intern(c.get("service_name", "")),
        host_uuid=intern(c.get("host_uuid", "")),
        state=intern(c.get("state", "running")),
        health_state=intern(c.get("health_state", "healthy")),
        create_index=c.get("create_index", 0),
        service_index=intern(c.get("service_index", "")),
        labels=_frozen(c.get("labels")),
        ports=tuple(intern(p) for p in c.get("ports", ())),
        dns=tuple(c.get("dns", ())),
        dns_search=tuple(c.get("dns_search", ())),
        links=_frozen(c.get("links")),
        extra=_rest(c, "containers"),
    )


TRUSTED: dict[str, Callable[[Mapping[str, Any]], Host | Stack | Service | Container]] = {
    "hosts": trusted_host,
    "stacks": trusted_stack,
    "services": trusted_service,
    "containers": trusted_container,
}


_Named = TypeVar("_Named", bound=Host | Stack | Service | Container)


class _ByNameOrUuid(Generic[_Named]):
    """Objects by name and by uuid, in any case, in fleet order. Nearly every key names one
    object, kept as it is: a list per key was 200,000 more objects for the collector to walk
    at 100,000 containers, and took seconds to build."""

    __slots__ = ("_first", "_more")

    def __init__(self, items: Iterable[_Named]) -> None:
        self._first: dict[str, _Named] = {}
        self._more: dict[str, list[_Named]] = {}
        for item in items:
            name, uuid = item.name.lower(), item.uuid.lower()
            for key in (name,) if name == uuid else (name, uuid):
                if self._first.setdefault(key, item) is not item:
                    self._more.setdefault(key, []).append(item)

    def get(self, text: str) -> tuple[_Named, ...]:
        wanted = text.lower()
        first = self._first.get(wanted)
        if first is None:
            return ()
        return (first, *self._more.get(wanted, ()))


def canonical_ip(text: str) -> str | None:
    """The canonical text of an IP address, or None. inet_pton is C: 50x faster than ipaddress,
    which matters when a 50k-container fleet is validated on every change."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError):
        return None


def stable_uuid(kind: str, name: str) -> str:
    """The same value as ``uuid.uuid5(_NS, f"{kind}/{name}")``, without building UUID objects."""
    digest = bytearray(hashlib.sha1(_NS.bytes + f"{kind}/{name}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_KNOWN = {
    "hosts": {"uuid", "name", "agent_ip", "hostname", "labels"},
    "stacks": {"name", "uuid", "services"},
    "services": {
        "name",
        "stack_name",
        "uuid",
        "kind",
        "hostname",
        "vip",
        "external_ips",
        "links",
        "sidekicks",
        "primary_service_name",
        "ports",
        "labels",
        "metadata",
        "token",
        "health_check",
        "containers",
    },
    "containers": {
        "name",
        "uuid",
        "primary_ip",
        "stack_name",
        "service_name",
        "host_uuid",
        "state",
        "health_state",
        "create_index",
        "service_index",
        "labels",
        "ports",
        "dns",
        "dns_search",
        "links",
    },
}
# Keys the metadata service derives itself; a fleet exported from a metadata tree carries them.
_DERIVED = {"stacks": {"services"}, "services": {"containers"}, "containers": set(), "hosts": set()}
_KNOWN_OR_DERIVED = {kind: frozenset(_KNOWN[kind] | _DERIVED[kind]) for kind in _KNOWN}


class References(Protocol):
    """What validating one object needs to know of the rest of the fleet: whether the objects it
    names exist. A whole document answers from its own lists (``_FleetBuilder``); an incremental
    index answers from what it serves (``shared.fleet_index``), so both apply the same rules."""

    def has_stack(self, stack: str) -> bool: ...

    def has_service(self, stack: str, name: str) -> bool: ...

    def host_uuid(self, ref: str) -> str | None:
        """The uuid of the host ``ref`` names (its uuid or its name); None when there is none."""
        ...

    def primary_of(self, stack: str, name: str) -> str | None:
        """The service that lists ``stack/name`` as a sidekick, if one does."""
        ...


class ObjectRules:
    """The rules for one object of each kind: the same for a whole document and for one etcd
    key, so that an object refused in one is refused in the other with the same words."""

    # The checks below start with the common case (a plain str, an empty or absent field, a list
    # of str): a 100,000-container document runs each a million times, and the general checks
    # (isinstance of unions, a conversion of every item) were most of its validation.

    @staticmethod
    def text(item: Mapping[str, Any], key: str, where: object, *, required: bool = False) -> str:
        value = item.get(key)
        if type(value) is str and value:
            return value
        if value is None or value == "":
            if required:
                raise FleetError(where, f"'{key}' is required")
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise FleetError(where, f"'{key}' must be a string")
        return str(value)

    @staticmethod
    def strings(item: Mapping[str, Any], key: str, where: object) -> tuple[str, ...]:
        value = item.get(key)
        if not value:
            return ()
        if type(value) is list and all(type(v) is str for v in value):
            return tuple(value)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
            raise FleetError(where, f"'{key}' must be a list of strings")
        return tuple(str(v) for v in value)

    @staticmethod
    def mapping(item: Mapping[str, Any], key: str, where: object, *, str_values: bool = True) -> Mapping[str, Any]:
        value = item.get(key)
        if not value:
            return _EMPTY
        if not isinstance(value, Mapping):
            raise FleetError(where, f"'{key}' must be a mapping")
        if str_values:
            bad = [k for k, v in value.items() if not isinstance(v, str | int | float) or isinstance(v, bool)]
            if bad:
                raise FleetError(where, f"'{key}.{bad[0]}' must be a string")
            return _frozen({str(k): str(v) for k, v in value.items()})
        return _frozen({str(k): v for k, v in value.items()})

    @staticmethod
    def ip(value: str, where: object, key: str) -> str:
        canonical = canonical_ip(value)
        if canonical is None:
            raise FleetError(where, f"'{key}' is not an IP address: {value!r}")
        return canonical

    @staticmethod
    def extra(item: Mapping[str, Any], collection: str) -> Mapping[str, Any]:
        if item.keys() <= _KNOWN_OR_DERIVED[collection]:  # nearly always: no fields of its own
            return _EMPTY
        return _frozen({k: v for k, v in item.items() if k not in _KNOWN[collection] and k not in _DERIVED[collection]})

    @classmethod
    def host(cls, item: Mapping[str, Any], where: object) -> Host:
        name = cls.text(item, "name", where, required=True)
        agent_ip = cls.text(item, "agent_ip", where)
        return Host(
            uuid=cls.text(item, "uuid", where) or stable_uuid("host", f"{name}"),
            name=name,
            agent_ip=cls.ip(agent_ip, where, "agent_ip") if agent_ip else "",
            hostname=cls.text(item, "hostname", where) or name,
            labels=cls.mapping(item, "labels", where),
            extra=cls.extra(item, "hosts"),
        )

    @classmethod
    def stack(cls, item: Mapping[str, Any], where: object) -> Stack:
        name = cls.text(item, "name", where, required=True)
        uuid = cls.text(item, "uuid", where) or stable_uuid("stack", f"{name}")
        return Stack(name=name, uuid=uuid, extra=cls.extra(item, "stacks"))

    @classmethod
    def service_key(cls, item: Mapping[str, Any], where: object, refs: References) -> tuple[str, str]:
        """The (stack, name) a service item claims, once its stack is known to exist."""
        name = cls.text(item, "name", where, required=True)
        stack = cls.text(item, "stack_name", where, required=True)
        if not refs.has_stack(stack):
            raise FleetError(where, f"stack {stack!r} does not exist")
        return stack, name

    @classmethod
    def sidekicks(cls, item: Mapping[str, Any], where: object, refs: References) -> tuple[str, ...]:
        stack = str(item["stack_name"])
        sidekicks = cls.strings(item, "sidekicks", where)
        for sidekick in sidekicks:
            if not refs.has_service(stack, sidekick):
                raise FleetError(where, f"sidekick {sidekick!r} is not a service of stack {stack!r}")
        return sidekicks

    @classmethod
    def service(cls, item: Mapping[str, Any], where: object, refs: References) -> Service:
        """A service whose key (``service_key``) and sidekicks (``sidekicks``) were checked."""
        name, stack = str(item["name"]), str(item["stack_name"])
        kind = cls.text(item, "kind", where) or "service"
        if kind not in SERVICE_KINDS:
            raise FleetError(where, f"unknown kind {kind!r} (one of {', '.join(sorted(SERVICE_KINDS))})")
        links = cls.mapping(item, "links", where)
        for target in links:
            t_stack, _, t_name = target.rpartition("/")
            if not (t_stack or stack) or not refs.has_service(t_stack or stack, t_name):
                raise FleetError(where, f"link target {target!r} is not a service")
        if kind == "dnsService" and not links:
            raise FleetError(where, "a dnsService needs 'links' to the services it aliases")
        hostname = cls.text(item, "hostname", where)
        external_ips = tuple(cls.ip(v, where, "external_ips") for v in cls.strings(item, "external_ips", where))
        if kind == "externalService" and not hostname and not external_ips:
            raise FleetError(where, "an externalService needs 'hostname' or 'external_ips'")
        vip = cls.text(item, "vip", where)
        hc = item.get("health_check")
        if hc is not None and not isinstance(hc, Mapping):
            raise FleetError(where, "'health_check' must be a mapping")
        return Service(
            name=name,
            stack_name=stack,
            kind=kind,
            hostname=hostname,
            uuid=cls.text(item, "uuid", where) or stable_uuid("service", f"{stack}/{name}"),
            vip=cls.ip(vip, where, "vip") if vip else "",
            external_ips=external_ips,
            links=links,
            sidekicks=cls.strings(item, "sidekicks", where),
            primary_service_name=cls.text(item, "primary_service_name", where) or refs.primary_of(stack, name) or name,
            ports=cls.strings(item, "ports", where),
            labels=cls.mapping(item, "labels", where),
            metadata=cls.mapping(item, "metadata", where, str_values=False),
            token=cls.text(item, "token", where),
            health_check=_frozen(hc) if hc is not None else None,
            extra=cls.extra(item, "services"),
        )

    @classmethod
    def container(
        cls, item: Mapping[str, Any], where: object, refs: References, create_index: int, uuid_of: Callable[..., str]
    ) -> Container:
        """A container; ``create_index`` when the item has none, ``uuid_of(name, host, ip)``
        when it has no uuid (how a name-derived uuid is made depends on the whole document)."""
        name = cls.text(item, "name", where, required=True)
        ip = cls.ip(cls.text(item, "primary_ip", where, required=True), where, "primary_ip")
        stack = cls.text(item, "stack_name", where)
        service = cls.text(item, "service_name", where)
        if stack and not refs.has_stack(stack):
            raise FleetError(where, f"stack {stack!r} does not exist")
        if service and not stack:
            raise FleetError(where, f"'service_name' {service!r} needs a 'stack_name'")
        if service and not refs.has_service(stack, service):
            raise FleetError(where, f"service {service!r} does not exist in stack {stack!r}")
        host = cls.text(item, "host_uuid", where)
        host_uuid = refs.host_uuid(host) if host else ""
        if host_uuid is None:
            raise FleetError(where, f"host {host!r} does not exist")
        index = item.get("create_index", create_index)
        if not isinstance(index, int) or isinstance(index, bool):
            raise FleetError(where, "'create_index' must be an integer")
        dns = tuple(cls.ip(v, where, "dns") for v in cls.strings(item, "dns", where))
        return Container(
            name=name,
            uuid=cls.text(item, "uuid", where) or uuid_of(name, host, ip),
            primary_ip=ip,
            stack_name=intern(stack),
            service_name=intern(service),
            host_uuid=intern(host_uuid),
            state=intern(cls.text(item, "state", where) or "running"),
            health_state=intern(cls.text(item, "health_state", where) or "healthy"),
            create_index=index,
            service_index=intern(cls.text(item, "service_index", where)),
            labels=cls.mapping(item, "labels", where),
            ports=tuple(intern(p) for p in cls.strings(item, "ports", where)),
            dns=dns,
            dns_search=cls.strings(item, "dns_search", where),
            links=cls.mapping(item, "links", where),
            extra=cls.extra(item, "containers"),
        )


class _DocumentReferences:
    """``References`` answered from one document's own lists, as they are validated."""

    def __init__(self) -> None:
        self.stacks: set[str] = set()
        self.services: set[tuple[str, str]] = set()
        self.host_ids: dict[str, str] = {}
        self.primaries: dict[tuple[str, str], str] = {}

    def has_stack(self, stack: str) -> bool:
        return stack.lower() in self.stacks

    def has_service(self, stack: str, name: str) -> bool:
        return (stack.lower(), name.lower()) in self.services

    def host_uuid(self, ref: str) -> str | None:
        return self.host_ids.get(ref)

    def primary_of(self, stack: str, name: str) -> str | None:
        return self.primaries.get((stack.lower(), name.lower()))


class _FleetBuilder:
    def __init__(self, data: Any, locate: Locate) -> None:
        self.data = data
        self.locate = locate
        self.refs = _DocumentReferences()

    def where(self, collection: str, index: int, item: Any = None) -> _Where:
        return _Where(collection, index, item, self.locate)

    def items(self, key: str) -> list[Mapping[str, Any]]:
        value = self.data.get(key) or []
        if not isinstance(value, list):
            raise FleetError(key, f"must be a list, not {type(value).__name__}")
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise FleetError(self.where(key, i), f"must be a mapping, not {type(item).__name__}")
        return value

    def build(self) -> Fleet:
        data = self.data
        if data is None:
            # An empty file is a writer caught half-way or a mistake, never "no fleet": publishing
            # it would take every name out of DNS on every host.
            raise FleetError("fleet", "the document is empty (an empty fleet is 'containers: []')")
        if not isinstance(data, Mapping):
            raise FleetError("fleet", f"the top level must be a mapping, not {type(data).__name__}")
        if "containers" not in data:
            raise FleetError("fleet", "no 'containers' key (an empty fleet is 'containers: []')")
        unknown = set(data) - TOP_LEVEL_KEYS
        if unknown:
            raise FleetError("fleet", f"unknown top-level key {sorted(unknown)[0]!r}")
        environment = environment_from(data)
        hosts = self.hosts()
        stacks = self.stacks()
        services = self.services()
        containers = self.containers()
        raw = {
            "environment": {"name": environment.name, "uuid": environment.uuid},
            "hosts": [host_raw(h) for h in hosts],
            "stacks": [stack_raw(s) for s in stacks],
            "services": [service_raw(s) for s in services],
            "containers": [container_raw(c) for c in containers],
        }
        return Fleet(environment, hosts, stacks, services, containers, fleet_digest(raw), raw)

    def hosts(self) -> tuple[Host, ...]:
        out: list[Host] = []
        seen: set[str] = set()
        for i, item in enumerate(self.items("hosts")):
            where = self.where("hosts", i, item)
            host = ObjectRules.host(item, where)
            if host.uuid in seen:
                raise FleetError(where, f"duplicate host uuid {host.uuid!r}")
            seen.add(host.uuid)
            out.append(host)
        # A container names its host by uuid or by name; a name wins (the last host of that name).
        self.refs.host_ids = {h.uuid: h.uuid for h in out}
        self.refs.host_ids.update((h.name, h.uuid) for h in out)
        return tuple(out)

    def stacks(self) -> tuple[Stack, ...]:
        out: list[Stack] = []
        for i, item in enumerate(self.items("stacks")):
            where = self.where("stacks", i, item)
            stack = ObjectRules.stack(item, where)
            if stack.name.lower() in self.refs.stacks:
                raise FleetError(where, f"duplicate stack name {stack.name!r}")
            self.refs.stacks.add(stack.name.lower())
            out.append(stack)
        return tuple(out)

    def services(self) -> tuple[Service, ...]:
        items = self.items("services")
        refs = self.refs
        for i, item in enumerate(items):
            where = self.where("services", i, item)
            stack, name = ObjectRules.service_key(item, where, refs)
            if refs.has_service(stack, name):
                raise FleetError(where, f"duplicate service {stack}/{name}")
            refs.services.add((stack.lower(), name.lower()))
        for i, item in enumerate(items):
            stack = str(item["stack_name"])
            for sidekick in ObjectRules.sidekicks(item, self.where("services", i, item), refs):
                refs.primaries[(stack.lower(), sidekick.lower())] = str(item["name"])
        return tuple(ObjectRules.service(item, self.where("services", i, item), refs) for i, item in enumerate(items))

    def containers(self) -> tuple[Container, ...]:
        # A container is its uuid; names may repeat (Rancher runs one "Network Agent" per host,
        # all with that name), and then a name-derived uuid would not tell them apart.
        items = self.items("containers")
        name_counts: dict[str, int] = {}
        for item in items:
            key = str(item.get("name") or "").lower()
            name_counts[key] = name_counts.get(key, 0) + 1

        def uuid_of(name: str, host: str, ip: str) -> str:
            return stable_uuid("container", name if name_counts[name.lower()] == 1 else f"{name}@{host}/{ip}")

        uuids: dict[str, object] = {}
        out: list[Container] = []
        for i, item in enumerate(items):
            where = self.where("containers", i, item)
            container = ObjectRules.container(item, where, self.refs, i + 1, uuid_of)
            if container.uuid in uuids:
                raise FleetError(where, f"duplicate container uuid {container.uuid!r} (also {uuids[container.uuid]})")
            uuids[container.uuid] = where
            out.append(container)
        return tuple(out)


TOP_LEVEL_KEYS = frozenset(
    {
        "environment",
        "hosts",
        "stacks",
        "services",
        "containers",
        "version",
        "name",
        "uuid",
        "self",
        "networks",
        "environments",
    }
)


def environment_from(data: Mapping[str, Any]) -> Environment:
    """The environment of a document (its ``environment`` mapping, or Rancher's top-level
    ``name``/``uuid`` of a tree), with a uuid derived from the name when it has none."""
    env_raw = data.get("environment") or {}
    if not isinstance(env_raw, Mapping):
        raise FleetError("environment", "must be a mapping")
    env_name = ObjectRules.text(env_raw, "name", "environment") or str(data.get("name") or "default")
    return Environment(
        name=env_name,
        uuid=ObjectRules.text(env_raw, "uuid", "environment")
        or str(data.get("uuid") or "")
        or stable_uuid("environment", f"{env_name}"),
    )


def object_digest(kind: str, raw: Mapping[str, Any]) -> int:
    """One object's share of ``fleet_digest``."""
    blob = json_codec.canonical(raw)
    return int.from_bytes(hashlib.sha256(kind.encode() + b"\0" + blob).digest(), "big")


def digest_text(total: int) -> str:
    return f"{total % DIGEST_MODULUS:064x}"


DIGEST_MODULUS = 1 << 256


def fleet_digest(raw: Mapping[str, Any]) -> str:
    """Content hash of a normalised fleet: the sum of every object's hash, so that equal content
    gives an equal digest whatever the order, and an index updated per object keeps it up to
    date by adding and subtracting one object's share (``shared.fleet_index``)."""
    total = object_digest("environment", raw.get("environment") or {})
    for kind in ("hosts", "stacks", "services", "containers"):
        for obj in raw.get(kind) or ():
            total += object_digest(kind, obj)
    return digest_text(total)


def host_raw(h: Host) -> dict[str, Any]:
    return {
        "uuid": h.uuid,
        "name": h.name,
        "agent_ip": h.agent_ip,
        "hostname": h.hostname,
        "labels": dict(h.labels),
        **h.extra,
    }


def object_raw(kind: str, obj: Environment | Host | Stack | Service | Container) -> dict[str, Any]:
    """The normalised form (``Fleet.raw``'s) of one object of ``kind``."""
    if isinstance(obj, Environment):
        return {"name": obj.name, "uuid": obj.uuid}
    if isinstance(obj, Host):
        return host_raw(obj)
    if isinstance(obj, Stack):
        return stack_raw(obj)
    if isinstance(obj, Service):
        return service_raw(obj)
    return container_raw(obj)


def stack_raw(s: Stack) -> dict[str, Any]:
    return {"name": s.name, "uuid": s.uuid, **s.extra}


def service_raw(s: Service) -> dict[str, Any]:
    return {
        "name": s.name,
        "stack_name": s.stack_name,
        "uuid": s.uuid,
        "kind": s.kind,
        "hostname": s.hostname,
        "vip": s.vip,
        "external_ips": list(s.external_ips),
        "links": dict(s.links),
        "sidekicks": list(s.sidekicks),
        "primary_service_name": s.primary_service_name,
        "ports": list(s.ports),
        "labels": dict(s.labels),
        "metadata": dict(s.metadata),
        "token": s.token,
        "health_check": dict(s.health_check) if s.health_check is not None else None,
        **s.extra,
    }


def container_raw(c: Container) -> dict[str, Any]:
    return {
        "name": c.name,
        "uuid": c.uuid,
        "primary_ip": c.primary_ip,
        "stack_name": c.stack_name,
        "service_name": c.service_name,
        "host_uuid": c.host_uuid,
        "state": c.state,
        "health_state": c.health_state,
        "create_index": c.create_index,
        "service_index": c.service_index,
        "labels": dict(c.labels),
        "ports": list(c.ports),
        "dns": list(c.dns),
        "dns_search": list(c.dns_search),
        "links": dict(c.links),
        **c.extra,
    }
