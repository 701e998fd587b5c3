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
from types import MappingProxyType
from typing import Any, Generic, TypeVar

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


def _frozen(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


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
        return _FleetBuilder(data, locate or (lambda _c, _i: None)).build()

    @classmethod
    def from_trusted(cls, raw: Mapping[str, Any], digest: str) -> Fleet:
        """Rebuild a fleet that metadns's metadata service already validated and normalised
        (``Fleet.raw``), without validating it again: the DNS service does this on every fleet
        change, and for a 10k-container fleet validation would be most of the cost."""

        def rest(item: Mapping[str, Any], known: set[str]) -> Mapping[str, Any]:
            return _frozen({k: v for k, v in item.items() if k not in known})

        env = raw.get("environment") or {}
        hosts = tuple(
            Host(
                uuid=h["uuid"],
                name=h["name"],
                agent_ip=h.get("agent_ip", ""),
                hostname=h.get("hostname", ""),
                labels=_frozen(h.get("labels")),
                extra=rest(h, _KNOWN["hosts"]),
            )
            for h in raw.get("hosts", ())
        )
        stacks = tuple(
            Stack(name=st["name"], uuid=st["uuid"], extra=rest(st, _KNOWN["stacks"])) for st in raw.get("stacks", ())
        )
        services = tuple(
            Service(
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
                extra=rest(sv, _KNOWN["services"]),
            )
            for sv in raw.get("services", ())
        )
        containers = tuple(
            Container(
                name=c["name"],
                uuid=c["uuid"],
                primary_ip=c["primary_ip"],
                stack_name=c.get("stack_name", ""),
                service_name=c.get("service_name", ""),
                host_uuid=c.get("host_uuid", ""),
                state=c.get("state", "running"),
                health_state=c.get("health_state", "healthy"),
                create_index=c.get("create_index", 0),
                service_index=c.get("service_index", ""),
                labels=_frozen(c.get("labels")),
                ports=tuple(c.get("ports", ())),
                dns=tuple(c.get("dns", ())),
                dns_search=tuple(c.get("dns_search", ())),
                links=_frozen(c.get("links")),
                extra=rest(c, _KNOWN["containers"]),
            )
            for c in raw.get("containers", ())
        )
        return cls(
            Environment(name=env.get("name", "default"), uuid=env.get("uuid", "")),
            hosts,
            stacks,
            services,
            containers,
            digest,
            raw,
        )

    def to_mapping(self) -> dict[str, Any]:
        """The normalised fleet, suitable for ``from_mapping`` and for the kept copy on disk."""
        return json.loads(json.dumps(self.raw))  # type: ignore[no-any-return]


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


def canonical_digest(data: Mapping[str, Any]) -> str:
    """Content hash of a normalised fleet: equal data gives an equal digest, whatever the key order."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


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


class _FleetBuilder:
    def __init__(self, data: Any, locate: Locate) -> None:
        self.data = data
        self.locate = locate

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

    def text(self, item: Mapping[str, Any], key: str, where: object, *, required: bool = False) -> str:
        value = item.get(key)
        if value is None or value == "":
            if required:
                raise FleetError(where, f"'{key}' is required")
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise FleetError(where, f"'{key}' must be a string")
        return str(value)

    def strings(self, item: Mapping[str, Any], key: str, where: object) -> tuple[str, ...]:
        value = item.get(key) or []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
            raise FleetError(where, f"'{key}' must be a list of strings")
        return tuple(str(v) for v in value)

    def mapping(
        self, item: Mapping[str, Any], key: str, where: object, *, str_values: bool = True
    ) -> Mapping[str, Any]:
        value = item.get(key) or {}
        if not isinstance(value, Mapping):
            raise FleetError(where, f"'{key}' must be a mapping")
        if str_values:
            bad = [k for k, v in value.items() if not isinstance(v, str | int | float) or isinstance(v, bool)]
            if bad:
                raise FleetError(where, f"'{key}.{bad[0]}' must be a string")
            return _frozen({str(k): str(v) for k, v in value.items()})
        return _frozen({str(k): v for k, v in value.items()})

    def ip(self, value: str, where: object, key: str) -> str:
        canonical = canonical_ip(value)
        if canonical is None:
            raise FleetError(where, f"'{key}' is not an IP address: {value!r}")
        return canonical

    @staticmethod
    def extra(item: Mapping[str, Any], collection: str) -> Mapping[str, Any]:
        return _frozen({k: v for k, v in item.items() if k not in _KNOWN[collection] and k not in _DERIVED[collection]})

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
        unknown = set(data) - {
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
        if unknown:
            raise FleetError("fleet", f"unknown top-level key {sorted(unknown)[0]!r}")
        env_raw = data.get("environment") or {}
        if not isinstance(env_raw, Mapping):
            raise FleetError("environment", "must be a mapping")
        env_name = self.text(env_raw, "name", "environment") or str(data.get("name") or "default")
        environment = Environment(
            name=env_name,
            uuid=self.text(env_raw, "uuid", "environment")
            or str(data.get("uuid") or "")
            or stable_uuid("environment", f"{env_name}"),
        )
        hosts = self.hosts()
        stacks = self.stacks()
        services = self.services({s.name.lower() for s in stacks})
        containers = self.containers(stacks, services, hosts)
        raw = {
            "environment": {"name": environment.name, "uuid": environment.uuid},
            "hosts": [_host_raw(h) for h in hosts],
            "stacks": [{"name": s.name, "uuid": s.uuid, **s.extra} for s in stacks],
            "services": [_service_raw(s) for s in services],
            "containers": [_container_raw(c) for c in containers],
        }
        return Fleet(environment, hosts, stacks, services, containers, canonical_digest(raw), raw)

    def hosts(self) -> tuple[Host, ...]:
        out: list[Host] = []
        seen: set[str] = set()
        for i, item in enumerate(self.items("hosts")):
            where = self.where("hosts", i, item)
            name = self.text(item, "name", where, required=True)
            uuid = self.text(item, "uuid", where) or stable_uuid("host", f"{name}")
            if uuid in seen:
                raise FleetError(where, f"duplicate host uuid {uuid!r}")
            seen.add(uuid)
            agent_ip = self.text(item, "agent_ip", where)
            out.append(
                Host(
                    uuid=uuid,
                    name=name,
                    agent_ip=self.ip(agent_ip, where, "agent_ip") if agent_ip else "",
                    hostname=self.text(item, "hostname", where) or name,
                    labels=self.mapping(item, "labels", where),
                    extra=self.extra(item, "hosts"),
                )
            )
        return tuple(out)

    def stacks(self) -> tuple[Stack, ...]:
        out: list[Stack] = []
        seen: set[str] = set()
        for i, item in enumerate(self.items("stacks")):
            where = self.where("stacks", i, item)
            name = self.text(item, "name", where, required=True)
            if name.lower() in seen:
                raise FleetError(where, f"duplicate stack name {name!r}")
            seen.add(name.lower())
            uuid = self.text(item, "uuid", where) or stable_uuid("stack", f"{name}")
            out.append(Stack(name=name, uuid=uuid, extra=self.extra(item, "stacks")))
        return tuple(out)

    def services(self, stack_names: set[str]) -> tuple[Service, ...]:
        items = self.items("services")
        keys: dict[tuple[str, str], int] = {}
        for i, item in enumerate(items):
            where = self.where("services", i, item)
            name = self.text(item, "name", where, required=True)
            stack = self.text(item, "stack_name", where, required=True)
            if stack.lower() not in stack_names:
                raise FleetError(where, f"stack {stack!r} does not exist")
            if (stack.lower(), name.lower()) in keys:
                raise FleetError(where, f"duplicate service {stack}/{name}")
            keys[(stack.lower(), name.lower())] = i
        primaries: dict[tuple[str, str], str] = {}
        for i, item in enumerate(items):
            where = self.where("services", i, item)
            stack = str(item["stack_name"])
            for sidekick in self.strings(item, "sidekicks", where):
                if (stack.lower(), sidekick.lower()) not in keys:
                    raise FleetError(where, f"sidekick {sidekick!r} is not a service of stack {stack!r}")
                primaries[(stack.lower(), sidekick.lower())] = str(item["name"])
        out: list[Service] = []
        for i, item in enumerate(items):
            where = self.where("services", i, item)
            name, stack = str(item["name"]), str(item["stack_name"])
            kind = self.text(item, "kind", where) or "service"
            if kind not in SERVICE_KINDS:
                raise FleetError(where, f"unknown kind {kind!r} (one of {', '.join(sorted(SERVICE_KINDS))})")
            links = self.mapping(item, "links", where)
            for target in links:
                t_stack, _, t_name = target.rpartition("/")
                if (t_stack or stack).lower() == "" or ((t_stack or stack).lower(), t_name.lower()) not in keys:
                    raise FleetError(where, f"link target {target!r} is not a service")
            if kind == "dnsService" and not links:
                raise FleetError(where, "a dnsService needs 'links' to the services it aliases")
            hostname = self.text(item, "hostname", where)
            external_ips = tuple(self.ip(v, where, "external_ips") for v in self.strings(item, "external_ips", where))
            if kind == "externalService" and not hostname and not external_ips:
                raise FleetError(where, "an externalService needs 'hostname' or 'external_ips'")
            vip = self.text(item, "vip", where)
            hc = item.get("health_check")
            if hc is not None and not isinstance(hc, Mapping):
                raise FleetError(where, "'health_check' must be a mapping")
            out.append(
                Service(
                    name=name,
                    stack_name=stack,
                    kind=kind,
                    hostname=hostname,
                    uuid=self.text(item, "uuid", where) or stable_uuid("service", f"{stack}/{name}"),
                    vip=self.ip(vip, where, "vip") if vip else "",
                    external_ips=external_ips,
                    links=links,
                    sidekicks=self.strings(item, "sidekicks", where),
                    primary_service_name=self.text(item, "primary_service_name", where)
                    or primaries.get((stack.lower(), name.lower()), name),
                    ports=self.strings(item, "ports", where),
                    labels=self.mapping(item, "labels", where),
                    metadata=self.mapping(item, "metadata", where, str_values=False),
                    token=self.text(item, "token", where),
                    health_check=_frozen(hc) if hc is not None else None,
                    extra=self.extra(item, "services"),
                )
            )
        return tuple(out)

    def containers(
        self, stacks: tuple[Stack, ...], services: tuple[Service, ...], hosts: tuple[Host, ...]
    ) -> tuple[Container, ...]:
        stack_names = {s.name.lower() for s in stacks}
        service_keys = {(s.stack_name.lower(), s.name.lower()) for s in services}
        host_ids = {h.uuid for h in hosts} | {h.name for h in hosts}
        host_by_name = {h.name: h.uuid for h in hosts}
        # A container is its uuid; names may repeat (Rancher runs one "Network Agent" per host,
        # all with that name), and then a name-derived uuid would not tell them apart.
        items = self.items("containers")
        name_counts: dict[str, int] = {}
        for item in items:
            key = str(item.get("name") or "").lower()
            name_counts[key] = name_counts.get(key, 0) + 1
        uuids: dict[str, object] = {}
        out: list[Container] = []
        for i, item in enumerate(items):
            where = self.where("containers", i, item)
            name = self.text(item, "name", where, required=True)
            ip = self.ip(self.text(item, "primary_ip", where, required=True), where, "primary_ip")
            stack = self.text(item, "stack_name", where)
            service = self.text(item, "service_name", where)
            if stack and stack.lower() not in stack_names:
                raise FleetError(where, f"stack {stack!r} does not exist")
            if service and not stack:
                raise FleetError(where, f"'service_name' {service!r} needs a 'stack_name'")
            if service and (stack.lower(), service.lower()) not in service_keys:
                raise FleetError(where, f"service {service!r} does not exist in stack {stack!r}")
            host = self.text(item, "host_uuid", where)
            if host and host not in host_ids:
                raise FleetError(where, f"host {host!r} does not exist")
            create_index = item.get("create_index", i + 1)
            if not isinstance(create_index, int) or isinstance(create_index, bool):
                raise FleetError(where, "'create_index' must be an integer")
            dns = tuple(self.ip(v, where, "dns") for v in self.strings(item, "dns", where))
            uuid = self.text(item, "uuid", where) or stable_uuid(
                "container", name if name_counts[name.lower()] == 1 else f"{name}@{host}/{ip}"
            )
            if uuid in uuids:
                raise FleetError(where, f"duplicate container uuid {uuid!r} (also {uuids[uuid]})")
            uuids[uuid] = where
            out.append(
                Container(
                    name=name,
                    uuid=uuid,
                    primary_ip=ip,
                    stack_name=stack,
                    service_name=service,
                    host_uuid=host_by_name.get(host, host),
                    state=self.text(item, "state", where) or "running",
                    health_state=self.text(item, "health_state", where) or "healthy",
                    create_index=create_index,
                    service_index=self.text(item, "service_index", where),
                    labels=self.mapping(item, "labels", where),
                    ports=self.strings(item, "ports", where),
                    dns=dns,
                    dns_search=self.strings(item, "dns_search", where),
                    links=self.mapping(item, "links", where),
                    extra=self.extra(item, "containers"),
                )
            )
        return tuple(out)


def _host_raw(h: Host) -> dict[str, Any]:
    return {
        "uuid": h.uuid,
        "name": h.name,
        "agent_ip": h.agent_ip,
        "hostname": h.hostname,
        "labels": dict(h.labels),
        **h.extra,
    }


def _service_raw(s: Service) -> dict[str, Any]:
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


def _container_raw(c: Container) -> dict[str, Any]:
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
