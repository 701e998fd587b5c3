"""The fleet as rancher-metadata's JSON tree, per API version, plus each client's ``self``.

Rancher clients (go-rancher-metadata, confd, rancher-dns) decode these objects into typed structs,
so every field keeps Rancher's name and JSON type. The shared lists never carry a service's
``token``; only the owning container's ``self/service`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shared.fleet_index import FleetView
from shared.model import Container, Host, Service, Stack

API_VERSIONS = ("2015-07-25", "2015-12-19", "2016-07-29")
LATEST = "2016-07-29"

Tree = dict[str, Any]
Parts = dict[str, Callable[[], Any]]  # a tree's keys in order, each with what builds its value


def _port(spec: str, host_ip: str) -> str:
    """Rancher's port rendering: ``public:private/proto`` gains the IP it is bound on."""
    if spec.count(":") == 1:
        return f"{host_ip}:{spec}"
    return spec


class TreeBuilder:
    """Builds the default tree of one API version, its elements one at a time, and the ``self`` of any
    container."""

    def __init__(self, fleet: FleetView, api: str, version: str, self_host_uuid: str) -> None:
        self.fleet = fleet
        self.api = api
        self.version = version
        self.lower = api >= "2016-07-29"
        self.name_lists = api == "2015-07-25"
        self.self_host = fleet.host(self_host_uuid) if self_host_uuid else None
        env = fleet.environment
        self.env = {"environment_name": env.name, "environment_uuid": env.uuid}
        self._containers: dict[str, Tree] = {}
        self._services: dict[tuple[str, str], Tree] = {}
        self._host_positions: dict[str, int] | None = None

    def name(self, text: str) -> str:
        return text.lower() if self.lower else text

    def host_position(self, h: Host) -> int:
        """Where ``h`` is in the fleet's hosts: before 2016-07-29 a host's ``host_id`` said so."""
        if self._host_positions is None:
            self._host_positions = {}
            for i, each in enumerate(self.fleet.hosts):
                self._host_positions.setdefault(each.uuid, i)
        return self._host_positions[h.uuid]

    def host(self, h: Host) -> Tree:
        out: Tree = {
            "name": h.name,
            "agent_ip": h.agent_ip,
            "labels": dict(h.labels),
            "uuid": h.uuid,
            "hostname": h.hostname,
            "memory": 0,
            "milli_cpu": 0,
            "local_storage_mb": 0,
            "environment_uuid": self.fleet.environment.uuid,
            "state": "active",
        }
        if not self.lower:
            out["host_id"] = self.host_position(h) + 1
        out.update(h.extra)
        return out

    def container(self, c: Container) -> Tree:
        cached = self._containers.get(c.uuid)
        if cached is not None:
            return cached
        stack = self.fleet.stack(c.stack_name) if c.stack_name else None
        service = self.fleet.service(c.stack_name, c.service_name) if c.service_name else None
        host = self.fleet.host(c.host_uuid) if c.host_uuid else None
        host_ip = "0.0.0.0" if self.lower or host is None else host.agent_ip or "0.0.0.0"
        out: Tree = {
            "name": self.name(c.name),
            "primary_ip": c.primary_ip,
            "primary_mac_address": "",
            "ips": [c.primary_ip],
            "ports": [_port(p, host_ip) for p in c.ports],
            "service_name": self.name(c.service_name),
            "service_index": c.service_index,
            "stack_name": self.name(c.stack_name),
            "stack_uuid": stack.uuid if stack else "",
            "labels": dict(c.labels),
            "create_index": c.create_index,
            "host_uuid": c.host_uuid,
            "uuid": c.uuid,
            "state": c.state,
            "health_state": c.health_state,
            "external_id": "",
            "start_count": 1,
            "memory_reservation": 0,
            "milli_cpu_reservation": 0,
            "dns": list(c.dns),
            "dns_search": list(c.dns_search),
            "health_check_hosts": [],
            "network_from_container_uuid": "",
            "network_uuid": "",
            "links": {self.name(k): v for k, v in c.links.items()},
            "system": False,
            "health_check": dict(service.health_check) if service and service.health_check else None,
            "service_uuid": service.uuid if service else "",
            **self.env,
        }
        out.update(c.extra)
        self._containers[c.uuid] = out
        return out

    def service(self, s: Service, *, with_token: bool = False) -> Tree:
        key = (s.stack_name.lower(), s.name.lower())
        cached = self._services.get(key)
        if cached is None:
            stack = self.fleet.stack(s.stack_name)
            members = self.fleet.service_containers(s)
            containers: list[Any] = (
                [self.name(c.name) for c in members] if self.name_lists else [self.container(c) for c in members]
            )
            cached = {
                "name": self.name(s.name),
                "stack_name": self.name(s.stack_name),
                "stack_uuid": stack.uuid if stack else "",
                "kind": s.kind,
                "hostname": s.hostname,
                "vip": s.vip,
                "scale": len(members),
                "create_index": 0,
                "uuid": s.uuid,
                "external_ips": list(s.external_ips),
                "sidekicks": [self.name(n) for n in s.sidekicks],
                "containers": containers,
                "ports": list(s.ports),
                "labels": dict(s.labels),
                "links": {self.name(k): v for k, v in s.links.items()},
                "metadata": dict(s.metadata),
                "token": None,
                "fqdn": "",
                "health_check": dict(s.health_check) if s.health_check is not None else None,
                "primary_service_name": self.name(s.primary_service_name),
                "lb_config": None,
                "state": "active",
                "system": False,
                "selector": "",
                **self.env,
            }
            cached.update(s.extra)
            self._services[key] = cached
        if with_token:
            return {**cached, "token": s.token or None}
        return cached

    def stack(self, st: Stack) -> Tree:
        services = self.fleet.stack_services(st)
        out: Tree = {
            "name": self.name(st.name),
            "uuid": st.uuid,
            "system": False,
            "services": (
                [self.name(s.name) for s in services] if self.name_lists else [self.service(s) for s in services]
            ),
            **self.env,
        }
        out.update(st.extra)
        return out

    def default_parts(self) -> Parts:
        """The default tree as parts, so that a path into it builds only the part it enters."""
        fleet = self.fleet
        env = fleet.environment
        parts: Parts = {
            "containers": lambda: [self.container(c) for c in fleet.containers],
            "services": lambda: [self.service(s) for s in fleet.services],
            "stacks": lambda: [self.stack(st) for st in fleet.stacks],
            "hosts": lambda: [self.host(h) for h in fleet.hosts],
            "networks": list,
            "self": self.default_self,
            "version": lambda: self.version,
            "name": lambda: env.name,
            "uuid": lambda: env.uuid,
        }
        if self.lower:
            parts["environments"] = lambda: [{"name": env.name, "uuid": env.uuid}]
        return parts

    def default_tree(self) -> Tree:
        return {key: make() for key, make in self.default_parts().items()}

    def default_self(self) -> Tree:
        """``self`` of a client that is no container: the host this service runs on, if known."""
        return {"host": self.host(self.self_host)} if self.self_host else {}

    def self_parts(self, container: Container) -> Parts:
        """``self`` of a known container as parts: itself, its service (with token), its stack and
        host, each built when a path enters it (a stack holds every container of its services)."""
        fleet = self.fleet
        parts: Parts = {"container": lambda: self.container(container)}
        service = fleet.service(container.stack_name, container.service_name) if container.service_name else None
        if service is not None:
            parts["service"] = lambda: self.service(service, with_token=True)
        stack = fleet.stack(container.stack_name) if container.stack_name else None
        if stack is not None:
            parts["stack"] = lambda: self.stack(stack)
        host = fleet.host(container.host_uuid) if container.host_uuid else self.self_host
        if host is not None:
            parts["host"] = lambda: self.host(host)
        return parts


class ClientTree(Mapping[str, Any]):
    """The default tree seen by one client: every key shared, ``self`` its own. Never copies."""

    def __init__(self, base: Tree, self_tree: Tree) -> None:
        self._base = base
        self._self = self_tree

    def __getitem__(self, key: str) -> Any:
        return self._self if key == "self" else self._base[key]

    def __iter__(self) -> Any:
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)

    @property
    def own_self(self) -> Tree:
        return self._self

    def without_self(self) -> Tree:
        """Every key but ``self``: the same for every client (and rendered once for them all)."""
        return {key: value for key, value in self._base.items() if key != "self"}
