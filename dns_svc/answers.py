"""The answers table: what the DNS service answers locally, per client, built from the fleet.

Pure data, no sockets: ``answers_from_fleet`` turns a Fleet into an ``AnswersTable`` with
Rancher's naming (``<service>.<stack>.<domain>``, sidekicks, containers, ``rancher-metadata``,
external and alias services, PTR for every container IP) plus SRV, which rancher-dns never had.
Each client (a container, by source IP) gets a view: its search list, its upstreams and its link
aliases over the shared records. Views are built on first use, so a 50k-container fleet costs
only the shared records up front.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from shared.fleet_index import FleetView
from shared.model import GONE, HEALTHY, RUNNING, Container, Service, port_spec
from shared.settings import parse_host_port

MAX_ALIAS_DEPTH = 10

Upstream = tuple[str, int]


def fqdn(name: str) -> str:
    """Lower-case, with exactly one trailing dot."""
    return name.strip().rstrip(".").lower() + "."


class Srv(NamedTuple):
    priority: int
    weight: int
    port: int
    target: str


class NameRecords(NamedTuple):
    """Every record one owner name has. Empty tuples mean "no records of that type".

    A named tuple rather than a frozen dataclass: a 10k-container fleet makes 20k of these per
    rebuild, and a frozen dataclass pays one ``object.__setattr__`` per field for each."""

    a: tuple[str, ...] = ()
    aaaa: tuple[str, ...] = ()
    cname: str = ""
    txt: tuple[str, ...] = ()
    srv: tuple[Srv, ...] = ()
    ptr: str = ""
    ttl: int | None = None

    def merged(self, other: NameRecords) -> NameRecords:
        return NameRecords(
            a=self.a + other.a,
            aaaa=self.aaaa + other.aaaa,
            cname=self.cname or other.cname,
            txt=self.txt + other.txt,
            srv=self.srv + other.srv,
            ptr=self.ptr or other.ptr,
            ttl=self.ttl if self.ttl is not None else other.ttl,
        )


def _addresses(ips: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    v4: list[str] = []
    v6: list[str] = []
    for ip in ips:
        (v6 if ":" in ip else v4).append(ip)
    return tuple(v4), tuple(v6)


def name_wire(name: str) -> bytes:
    """A lower-case FQDN in DNS wire form (length-prefixed labels), as cache keys hold names."""
    out = bytearray()
    for label in name.rstrip(".").split("."):
        if label:
            raw = label.encode("ascii", "replace")
            out.append(len(raw))
            out += raw
    out.append(0)
    return bytes(out)


@dataclass(frozen=True)
class ClientView:
    """What one client sees: its search suffixes (FQDNs), its own upstreams, its own records."""

    key: str
    search: tuple[str, ...]
    recurse: tuple[Upstream, ...] = ()
    records: Mapping[str, NameRecords] = field(default_factory=dict)
    overlay_wire: frozenset[bytes] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        object.__setattr__(self, "overlay_wire", frozenset(name_wire(n) for n in self.records))


class AnswersTable:
    """Local records, the zones we are authoritative for, and a view per client IP."""

    def __init__(
        self,
        records: Mapping[str, NameRecords],
        zones: Iterable[str],
        default_search: Iterable[str],
        default_recurse: Iterable[Upstream] = (),
        client_inputs: Mapping[str, Any] | None = None,
        explicit_views: Mapping[str, ClientView] | None = None,
        *,
        serial: int = 1,
        view_factory: Any = None,
    ) -> None:
        self.records = dict(records)
        self.zones = tuple(fqdn(z) for z in zones)
        self.default = ClientView("default", tuple(fqdn(s) for s in default_search), tuple(default_recurse))
        self.serial = serial
        self._client_inputs = dict(client_inputs or {})
        self._views: dict[str, ClientView] = dict(explicit_views or {})
        self._view_factory = view_factory
        self._zone_suffixes = tuple("." + z for z in self.zones)
        self._names_in_zone = self._zone_names()

    def _zone_names(self) -> frozenset[str]:
        """Every owner name inside our zones plus its ancestors (empty non-terminals exist too)."""
        names: set[str] = set(self.zones)
        for name in self.records:
            if self.zone_of(name) is None:
                continue
            names.add(name)
            dot = name.find(".")
            while dot != -1 and dot + 1 < len(name):
                parent = name[dot + 1 :]
                if parent in names:
                    break  # its own ancestors are in already
                names.add(parent)
                dot = name.find(".", dot + 1)
        return frozenset(names)

    def same_answers(self, other: AnswersTable) -> bool:
        """True when every client would get the same answers from both tables. A plain
        comparison, cheaper than hashing everything: most fleet changes touch few records."""
        return (
            self.zones == other.zones
            and self.default.search == other.default.search
            and self.default.recurse == other.default.recurse
            and self.records == other.records
            and self._client_inputs == other._client_inputs
            and {k: v for k, v in self._views.items() if k not in self._client_inputs}
            == {k: v for k, v in other._views.items() if k not in other._client_inputs}
        )

    def changed_names(self, old: AnswersTable) -> set[str] | None:
        """Owner names whose records differ from ``old``; None when more than records changed
        (zones, search lists, upstreams), so that everything must be considered stale."""
        if (
            self.zones != old.zones
            or self.default.search != old.default.search
            or self.default.recurse != old.default.recurse
        ):
            return None
        new, before = self.records, old.records
        changed = {name for name, rec in new.items() if before.get(name) != rec}
        changed.update(name for name in before if name not in new)
        return changed

    def zone_of(self, name: str) -> str | None:
        if not name.endswith(self._zone_suffixes) and name not in self.zones:
            return None  # the usual answer for a name bound upstream, in one C call
        for zone in self.zones:
            if name == zone or name.endswith("." + zone):
                return zone
        return None

    def exists(self, name: str) -> bool:
        """True for owner names and empty non-terminals inside our zones (NODATA, not NXDOMAIN)."""
        return name in self._names_in_zone

    def view(self, client_ip: str) -> ClientView:
        view = self._views.get(client_ip)
        if view is None:
            inputs = self._client_inputs.get(client_ip)
            if inputs is None or self._view_factory is None:
                return self.default
            view = self._view_factory(self, client_ip, inputs)
            self._views[client_ip] = view
        return view

    def lookup(self, view: ClientView, name: str) -> NameRecords | None:
        """The records of ``name`` for this client: its own link records first, then the shared ones."""
        own = view.records.get(name)
        return own if own is not None else self.records.get(name)

    def candidates(self, view: ClientView, name: str, ndots: int) -> list[str]:
        """``name`` itself, then ``name`` + each search suffix (rancher-dns's server-side search).

        Only local records are searched this way; nothing expanded is ever sent upstream."""
        out = [name]
        if ndots == 0 or name.count(".") - 1 < ndots:
            search = view.search if view.key != "default" else self.default.search
            bare = name[:-1]
            out.extend(f"{bare}.{suffix}" for suffix in search if not name.endswith("." + suffix))
        return out


def _reverse_pointer(ip: str) -> str:
    if ":" not in ip:
        return ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
    return ipaddress.ip_address(ip).reverse_pointer


class _FleetAnswers:
    def __init__(
        self,
        fleet: FleetView,
        domain: str,
        metadata_answer: Iterable[str],
        never_recurse_to: Iterable[str],
        ttl: int | None,
    ) -> None:
        self.fleet = fleet
        self.domain = fqdn(domain)
        self.metadata_answer = tuple(metadata_answer)
        self.never = {str(ipaddress.ip_address(ip)) for ip in never_recurse_to}
        self.ttl = ttl
        self._endpoints: dict[tuple[str, str], NameRecords] = {}

    def live(self, c: Container) -> bool:
        return c.state not in GONE

    def service_records(
        self, s: Service, depth: int = 0, seen: frozenset[tuple[str, str]] = frozenset()
    ) -> NameRecords:
        key = (s.stack_name.lower(), s.name.lower())
        cached = self._endpoints.get(key)
        if cached is not None:
            return cached
        if s.kind == "externalService":
            v4, v6 = _addresses(s.external_ips)
            out = NameRecords(a=v4, aaaa=v6, cname="" if s.external_ips else fqdn(s.hostname))
        elif s.kind == "dnsService":
            out = NameRecords()
            if depth < MAX_ALIAS_DEPTH and key not in seen:
                for target in s.links:
                    t_stack, _, t_name = target.rpartition("/")
                    linked = self.fleet.service(t_stack or s.stack_name, t_name)
                    if linked is not None:
                        sub = self.service_records(linked, depth + 1, seen | {key})
                        out = NameRecords(
                            a=out.a + tuple(ip for ip in sub.a if ip not in out.a),
                            aaaa=out.aaaa + tuple(ip for ip in sub.aaaa if ip not in out.aaaa),
                            cname=out.cname or (sub.cname if not sub.a and not sub.aaaa else ""),
                        )
            if out.a or out.aaaa:
                out = NameRecords(a=out.a, aaaa=out.aaaa)
        elif s.vip:
            v4, v6 = _addresses([s.vip])
            out = NameRecords(a=v4, aaaa=v6)
        else:
            members = [c for c in self.fleet.service_containers(s) if self.live(c)]
            healthy = [c for c in members if c.state in RUNNING and c.health_state in HEALTHY]
            if not healthy and members:  # Rancher: the name never goes empty while containers exist
                healthy = [max(members, key=lambda c: c.create_index)]
            v4, v6 = _addresses(c.primary_ip for c in healthy)
            out = NameRecords(a=v4, aaaa=v6)
        if s.labels:
            out = NameRecords(
                a=out.a,
                aaaa=out.aaaa,
                cname=out.cname,
                txt=tuple(f"{k}={v}" for k, v in sorted(s.labels.items())) if not out.cname else (),
            )
        if self.ttl is not None:
            out = NameRecords(a=out.a, aaaa=out.aaaa, cname=out.cname, txt=out.txt, ttl=self.ttl)
        self._endpoints[key] = out
        return out

    def srv_records(self, s: Service) -> dict[str, NameRecords]:
        if s.kind != "service" or s.vip:
            return {}
        members = [c for c in self.fleet.service_containers(s) if c.state in RUNNING and c.health_state in HEALTHY]
        out: dict[str, list[Srv]] = {}
        for spec in s.ports:
            parsed = port_spec(spec)
            if parsed is None:
                continue
            port, proto = parsed
            owner = f"_{s.name}._{proto}.{s.stack_name}.{self.domain}".lower()
            out.setdefault(owner, []).extend(Srv(0, 10, port, f"{c.name}.{self.domain}".lower()) for c in members)
        return {k: NameRecords(srv=tuple(v)) for k, v in out.items() if v}

    def build(self) -> dict[str, NameRecords]:
        records: dict[str, NameRecords] = {}

        def add(name: str, rec: NameRecords) -> None:
            name = name.lower()  # every name below is built with the trailing dot already
            records[name] = records[name].merged(rec) if name in records else rec

        d = self.domain
        for s in self.fleet.services:
            rec = self.service_records(s)
            add(f"{s.name}.{s.stack_name}.{d}", rec)
            if s.primary_service_name and s.primary_service_name.lower() != s.name.lower():
                add(f"{s.name}.{s.primary_service_name}.{s.stack_name}.{d}", rec)
            for owner, srv in self.srv_records(s).items():
                add(owner, srv)
        for c in self.fleet.containers:
            if not self.live(c):
                continue
            v4, v6 = _addresses((c.primary_ip,))
            add(f"{c.name}.{d}", NameRecords(a=v4, aaaa=v6, ttl=self.ttl))
            add(_reverse_pointer(c.primary_ip) + ".", NameRecords(ptr=f"{c.name}.{d}".lower(), ttl=self.ttl))
        if self.metadata_answer:
            v4, v6 = _addresses(self.metadata_answer)
            add(f"rancher-metadata.{d}", NameRecords(a=v4, aaaa=v6, ttl=self.ttl))
        return records

    def client_inputs(self) -> dict[str, Any]:
        return {
            c.primary_ip: (c.name, c.stack_name, c.service_name, c.dns, c.dns_search, tuple(c.links.items()))
            for c in self.fleet.containers
            if self.live(c) and self.fleet.container_by_ip(c.primary_ip) is c
        }  # a shared IP: no view

    def make_view(self, table: AnswersTable, client_ip: str, _inputs: Any) -> ClientView:
        c = self.fleet.container_by_ip(client_ip)
        assert c is not None
        d = self.domain
        search = tuple(fqdn(s) for s in c.dns_search) or ((fqdn(f"{c.stack_name}.{d}"), d) if c.stack_name else (d,))
        recurse = tuple((ip, 53) for ip in c.dns if ip not in self.never)
        own: dict[str, NameRecords] = {}
        for target, alias in c.links.items():
            rec = table.records.get(fqdn(f"{target}.{d}"))
            if alias and rec is not None:
                own[fqdn(f"{alias}.{d}")] = rec
        service = self.fleet.service(c.stack_name, c.service_name) if c.service_name else None
        if service is not None:
            for target, alias in service.links.items():
                t_stack, _, t_name = target.rpartition("/")
                linked = self.fleet.service(t_stack or service.stack_name, t_name)
                if alias and linked is not None:
                    rec = self.service_records(linked)
                    own[fqdn(f"{alias}.{d}")] = rec
                    own[fqdn(f"{alias}.{service.stack_name}.{d}")] = rec
        return ClientView(client_ip, search, recurse, own)


def answers_from_fleet(
    fleet: FleetView,
    *,
    domain: str = "rancher.internal",
    metadata_answer: Iterable[str] = (),
    default_recurse: Iterable[Upstream] = (),
    never_recurse_to: Iterable[str] = (),
    ttl: int | None = None,
    serial: int = 1,
) -> AnswersTable:
    """Build the answers table of a fleet (see the module docstring for the names)."""
    builder = _FleetAnswers(fleet, domain, metadata_answer, never_recurse_to, ttl)
    records = builder.build()
    return AnswersTable(
        records,
        [builder.domain],
        [builder.domain],
        default_recurse,
        builder.client_inputs(),
        serial=serial,
        view_factory=builder.make_view,
    )


class AnswersFileError(ValueError):
    """A rancher-dns answers file that cannot be used; the message names the key at fault."""


def parse_upstream(text: str) -> Upstream:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` (port 53 by default); ValueError when malformed."""
    if not text.strip():
        raise ValueError("empty upstream address")
    host, port = parse_host_port(text, 53)
    return str(ipaddress.ip_address(host)), port


def answers_from_rancher_file(data: Any, *, serial: int = 1) -> AnswersTable:
    """Load rancher-dns's answers.json/yaml format (``default`` plus one key per client IP)."""
    if not isinstance(data, Mapping):
        raise AnswersFileError("the top level must be a mapping of client IP (or 'default') to answers")

    def section(key: str, body: Any) -> tuple[dict[str, NameRecords], tuple[str, ...], tuple[Upstream, ...]]:
        if not isinstance(body, Mapping):
            raise AnswersFileError(f"{key}: must be a mapping")
        recs: dict[str, NameRecords] = {}

        def add(name: str, rec: NameRecords) -> None:
            name = fqdn(name)
            recs[name] = recs[name].merged(rec) if name in recs else rec

        try:
            for name, item in (body.get("a") or {}).items():
                v4, v6 = _addresses(str(ipaddress.ip_address(ip)) for ip in item["answer"])
                add(name, NameRecords(a=v4, aaaa=v6, ttl=item.get("ttl")))
            for name, item in (body.get("cname") or {}).items():
                add(name, NameRecords(cname=fqdn(item["answer"]), ttl=item.get("ttl")))
            for name, item in (body.get("ptr") or {}).items():
                owner = (
                    name
                    if name.rstrip(".").endswith(("in-addr.arpa", "ip6.arpa"))
                    else ipaddress.ip_address(name).reverse_pointer
                )
                add(owner, NameRecords(ptr=fqdn(item["answer"]), ttl=item.get("ttl")))
            for name, item in (body.get("txt") or {}).items():
                texts = tuple(str(t) for t in item["answer"])
                if any(len(t.encode()) > 255 for t in texts):
                    raise AnswersFileError(f"{key}.txt.{name}: a string is longer than 255 bytes")
                add(name, NameRecords(txt=texts, ttl=item.get("ttl")))
            search = tuple(str(s) for s in body.get("search") or ())
            recurse = tuple(parse_upstream(str(r)) for r in body.get("recurse") or ())
        except AnswersFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise AnswersFileError(f"{key}: {type(exc).__name__}: {exc}") from None
        return recs, search, recurse

    default = data.get("default") or {}
    records, search, recurse = section("default", default)
    zones = tuple(str(z) for z in (default.get("authoritative") or ())) if isinstance(default, Mapping) else ()
    views: dict[str, ClientView] = {}
    for key, body in data.items():
        if key == "default":
            continue
        try:
            ip = str(ipaddress.ip_address(str(key)))
        except ValueError:
            raise AnswersFileError(f"{key}: top-level keys must be client IPs or 'default'") from None
        recs, c_search, c_recurse = section(str(key), body)
        views[ip] = ClientView(ip, tuple(fqdn(s) for s in c_search) or tuple(fqdn(s) for s in search), c_recurse, recs)
    return AnswersTable(records, zones, search, recurse, explicit_views=views, serial=serial)
