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

from shared.fleet_changes import ObjectChange
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


class AnswersDelta(NamedTuple):
    """What an update of the table changed: the owner names whose records or existence changed,
    and the client IPs whose view changed (None: every name, or every view)."""

    names: set[str] | None
    views: set[str] | None


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
        builder: Any = None,
    ) -> None:
        self.records = dict(records)
        self.zones = tuple(fqdn(z) for z in zones)
        self.default = ClientView("default", tuple(fqdn(s) for s in default_search), tuple(default_recurse))
        self.serial = serial
        self._client_inputs = dict(client_inputs or {})
        self._views: dict[str, ClientView] = dict(explicit_views or {})
        self._view_factory = view_factory
        self._builder: _FleetAnswers | None = builder
        self._zone_suffixes = tuple("." + z for z in self.zones)
        # Owner names and empty non-terminals inside our zones; ``_children`` counts, per name, the
        # names present directly below it, so that an update adds or removes ancestors exactly.
        self._names_in_zone: set[str] = set(self.zones)
        self._children: dict[str, int] = {}
        for name in self.records:
            self._enter(name)

    def _enter(self, name: str, flipped: dict[str, bool] | None = None) -> None:
        """``name`` has records now: it exists, and so does every ancestor up to its zone.
        ``flipped`` keeps whether each name it adds existed before the update began."""
        names = self._names_in_zone
        if name in names or self.zone_of(name) is None:
            return
        children = self._children
        while name not in names:
            names.add(name)
            if flipped is not None:
                flipped.setdefault(name, False)
            parent = name[name.find(".") + 1 :]
            children[parent] = children.get(parent, 0) + 1
            name = parent

    def _leave(self, name: str, flipped: dict[str, bool]) -> None:
        """``name`` has no records any more: it and the ancestors it alone kept go."""
        names = self._names_in_zone
        children = self._children
        while name in names and name not in self.records and name not in children and name not in self.zones:
            names.discard(name)
            flipped.setdefault(name, True)
            parent = name[name.find(".") + 1 :]
            count = children[parent] - 1
            if count:
                children[parent] = count
            else:
                del children[parent]
            name = parent

    def update(self, fleet: FleetView, changes: Iterable[ObjectChange], serial: int) -> AnswersDelta:
        """Bring the table to ``fleet`` (the fleet after ``changes``) in place, touching only the
        names the changed objects contribute to. Only a table built from a fleet can."""
        if self._builder is None:
            raise TypeError("only a table built from a fleet can be updated")
        delta = self._builder.update(self, fleet, changes)
        self.serial = serial
        return delta

    @property
    def fleet(self) -> FleetView | None:
        """The fleet the table answers for (None: an answers file's table)."""
        return self._builder.fleet if self._builder is not None else None

    def drop_view(self, client_ip: str) -> None:
        """Forget the view built for ``client_ip``; the next query builds it again."""
        if self._views.pop(client_ip, None) is not None and self._builder is not None:
            self._builder.forget_view(client_ip)

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
        changed.update(self._names_in_zone ^ old._names_in_zone)
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


# Who contributes records to an owner name: a service (its stack/name identity), a container (its
# uuid) or the metadata answer. Where several contribute to one name, their records are merged in
# the order of these keys, so that a name's records do not depend on the order objects came in.
SourceKey = tuple[int, str]
SERVICE_SOURCE, CONTAINER_SOURCE, METADATA_SOURCE = 0, 1, 2
ServiceKey = tuple[str, str]


def _service_key(stack: str, name: str) -> ServiceKey:
    return (stack.lower(), name.lower())


def _link_key(s: Service, target: str) -> ServiceKey:
    t_stack, _, t_name = target.rpartition("/")
    return _service_key(t_stack or s.stack_name, t_name)


class _FleetAnswers:
    """The records of a fleet, kept per contributing object: the full build, and the update of
    the few names a change touches. Its reverse indexes (who aliases a service, which names each
    object contributes to, what each client view was built from) exist for the update."""

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
        self._endpoints: dict[ServiceKey, NameRecords] = {}  # every service's own records
        self._out: dict[SourceKey, dict[str, NameRecords]] = {}  # per source: the names it gives records
        self._sources: dict[str, tuple[SourceKey, ...]] = {}  # per name: who gives it records
        self._aliased_by: dict[ServiceKey, set[ServiceKey]] = {}  # link target -> dnsServices aliasing it
        # what each built view read: the names of its container links, its own service, its links' services
        self._view_reads: dict[str, tuple[tuple[str, ...], ServiceKey | None, tuple[ServiceKey, ...]]] = {}
        self._views_by_name: dict[str, set[str]] = {}
        self._views_by_own: dict[ServiceKey, set[str]] = {}
        self._views_by_linked: dict[ServiceKey, set[str]] = {}

    def live(self, c: Container) -> bool:
        return c.state not in GONE

    def service_records(self, s: Service) -> NameRecords:
        key = _service_key(s.stack_name, s.name)
        cached = self._endpoints.get(key)
        if cached is None:
            cached = self._endpoints[key] = self._endpoint(s, 0, frozenset())
        return cached

    def _endpoint(self, s: Service, depth: int, seen: frozenset[ServiceKey]) -> NameRecords:
        """A service's own records. An alias's are worked out from it alone (its own ``seen``
        and depth), never kept from a walk that started elsewhere: kept, they would depend on
        which service of a loop was asked first."""
        key = _service_key(s.stack_name, s.name)
        if s.kind == "externalService":
            v4, v6 = _addresses(s.external_ips)
            out = NameRecords(a=v4, aaaa=v6, cname="" if s.external_ips else fqdn(s.hostname))
        elif s.kind == "dnsService":
            out = NameRecords()
            if depth < MAX_ALIAS_DEPTH and key not in seen:
                for target in s.links:
                    linked = self.fleet.service(*_link_key(s, target))
                    if linked is not None:
                        sub = (
                            self._endpoint(linked, depth + 1, seen | {key})
                            if linked.kind == "dnsService"
                            else self.service_records(linked)
                        )
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
                healthy = [max(members, key=_create_index)]
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

    def service_out(self, s: Service) -> dict[str, NameRecords]:
        """The names a service gives records: its own, its sidekick name, its SRV owners."""
        d = self.domain
        rec = self.service_records(s)
        out = {f"{s.name}.{s.stack_name}.{d}".lower(): rec}
        if s.primary_service_name and s.primary_service_name.lower() != s.name.lower():
            out[f"{s.name}.{s.primary_service_name}.{s.stack_name}.{d}".lower()] = rec
        out.update(self.srv_records(s))
        return out

    def container_out(self, c: Container) -> dict[str, NameRecords]:
        """The names a container gives records: its name, and the PTR of its address."""
        if not self.live(c):
            return {}
        v4, v6 = _addresses((c.primary_ip,))
        name = f"{c.name}.{self.domain}".lower()  # one string, the A owner and the PTR target
        return {
            name: NameRecords(a=v4, aaaa=v6, ttl=self.ttl),
            (_reverse_pointer(c.primary_ip) + ".").lower(): NameRecords(ptr=name, ttl=self.ttl),
        }

    def metadata_out(self) -> dict[str, NameRecords]:
        if not self.metadata_answer:
            return {}
        v4, v6 = _addresses(self.metadata_answer)
        return {f"rancher-metadata.{self.domain}": NameRecords(a=v4, aaaa=v6, ttl=self.ttl)}

    def _alias(self, s: Service, add: bool) -> None:
        if s.kind != "dnsService":
            return
        key = _service_key(s.stack_name, s.name)
        for target in s.links:
            target_key = _link_key(s, target)
            users = self._aliased_by.get(target_key)
            if add:
                if users is None:
                    users = self._aliased_by[target_key] = set()
                users.add(key)
            elif users is not None:
                users.discard(key)
                if not users:
                    del self._aliased_by[target_key]

    def merged(self, name: str) -> NameRecords | None:
        """The records of ``name``: what its sources give it, merged in the order of their keys."""
        sources = self._sources.get(name)
        if sources is None:
            return None
        out = self._out
        if len(sources) == 1:
            return out[sources[0]][name]
        ordered = sorted(sources)
        rec = out[ordered[0]][name]
        for source in ordered[1:]:
            rec = rec.merged(out[source][name])
        return rec

    def build(self) -> dict[str, NameRecords]:
        out = self._out
        sources = self._sources

        def put(source: SourceKey, given: dict[str, NameRecords]) -> None:
            if not given:
                return
            out[source] = given
            for name in given:
                known = sources.get(name)
                sources[name] = (source,) if known is None else (*known, source)

        for s in self.fleet.services:
            self._alias(s, True)
            put((SERVICE_SOURCE, f"{s.stack_name}/{s.name}".lower()), self.service_out(s))
        for c in self.fleet.containers:
            put((CONTAINER_SOURCE, c.uuid), self.container_out(c))
        put((METADATA_SOURCE, ""), self.metadata_out())
        records: dict[str, NameRecords] = {}
        for name, given in sources.items():
            rec = self.merged(name) if len(given) > 1 else out[given[0]][name]
            assert rec is not None
            records[name] = rec
        return records

    def _replace(self, source: SourceKey, given: dict[str, NameRecords], touched: set[str]) -> None:
        """``source`` gives ``given`` now: the names it gave or gives with other records are touched."""
        before = self._out.pop(source, None) or {}
        sources = self._sources
        for name in before:
            if name not in given:
                left = tuple(k for k in sources[name] if k != source)
                if left:
                    sources[name] = left
                else:
                    del sources[name]
                touched.add(name)
        for name, rec in given.items():
            was = before.get(name)
            if was is None:
                known = sources.get(name)
                sources[name] = (source,) if known is None else (*known, source)
                touched.add(name)
            elif was != rec:
                touched.add(name)
        if given:
            self._out[source] = given

    def update(self, table: AnswersTable, fleet: FleetView, changes: Iterable[ObjectChange]) -> AnswersDelta:
        """Apply ``changes`` (``fleet`` is the fleet after them) to ``table``, which this built."""
        self.fleet = fleet
        touched: set[str] = set()
        services: set[ServiceKey] = set()  # whose own records may have changed
        replaced: set[ServiceKey] = set()  # whose object changed (their members' views read their links)
        client_ips: set[str] = set()
        for change in changes:
            if change.kind == "containers":
                self._container_changed(change, services, client_ips, touched)
            elif change.kind == "services":
                for s in (change.old, change.new):
                    if isinstance(s, Service):
                        key = _service_key(s.stack_name, s.name)
                        services.add(key)
                        replaced.add(key)
                        self._alias(s, s is change.new)
            # hosts, stacks and the environment give no records: a stack's names are its services'
        endpoints_changed = self._services_changed(services, touched)
        changed = self._rewrite(table, touched)
        views = self._client_inputs_changed(table, client_ips)
        for name in changed:
            views.update(self._views_by_name.get(name, ()))
        for key in replaced:
            views.update(self._views_by_own.get(key, ()))
        for key in endpoints_changed:
            views.update(self._views_by_linked.get(key, ()))
        for ip in views:
            table.drop_view(ip)
        return AnswersDelta(changed, views)

    def _container_changed(
        self, change: ObjectChange, services: set[ServiceKey], client_ips: set[str], touched: set[str]
    ) -> None:
        for c in (change.old, change.new):
            if isinstance(c, Container):
                client_ips.add(c.primary_ip)
                if c.service_name:
                    services.add(_service_key(c.stack_name, c.service_name))
        new = change.new
        given = self.container_out(new) if isinstance(new, Container) else {}
        self._replace((CONTAINER_SOURCE, change.ident), given, touched)

    def _services_changed(self, services: set[ServiceKey], touched: set[str]) -> set[ServiceKey]:
        """Work out again the records of ``services`` and of every alias of them, transitively
        (an alias's records are its targets'); the services whose own records changed."""
        queue = list(services)
        while queue:
            for user in self._aliased_by.get(queue.pop(), ()):
                if user not in services:
                    services.add(user)
                    queue.append(user)
        before = {key: self._endpoints.pop(key, None) for key in services}  # all first: aliases read them
        fleet = self.fleet
        for key in services:
            s = fleet.service(*key)
            self._replace((SERVICE_SOURCE, f"{key[0]}/{key[1]}"), self.service_out(s) if s is not None else {}, touched)
        return {key for key, was in before.items() if self._endpoints.get(key) != was}

    def _rewrite(self, table: AnswersTable, touched: set[str]) -> set[str]:
        """Merge the ``touched`` names' records again; the names whose records or existence changed."""
        changed: set[str] = set()
        flipped: dict[str, bool] = {}  # names that came or went, and whether they existed before
        records = table.records
        for name in touched:
            rec = self.merged(name)
            if rec == records.get(name):
                continue
            changed.add(name)
            if rec is None:
                del records[name]
                table._leave(name, flipped)
            else:
                records[name] = rec
                table._enter(name, flipped)
        exists = table._names_in_zone
        changed.update(name for name, existed in flipped.items() if (name in exists) != existed)
        return changed

    def _client_inputs_changed(self, table: AnswersTable, client_ips: set[str]) -> set[str]:
        """The clients among ``client_ips`` whose view inputs changed, brought up to date."""
        inputs = table._client_inputs
        out: set[str] = set()
        for ip in client_ips:
            now = self.inputs_of(ip)
            if now != inputs.get(ip):
                out.add(ip)
                if now is None:
                    del inputs[ip]
                else:
                    inputs[ip] = now
        return out

    def inputs_of(self, ip: str) -> Any:
        """What a client's view is made of, when the client has one (a shared IP gives none)."""
        c = self.fleet.container_by_ip(ip)
        if c is None or not self.live(c):
            return None
        return (c.name, c.stack_name, c.service_name, c.dns, c.dns_search, tuple(c.links.items()))

    def client_inputs(self) -> dict[str, Any]:
        return {
            c.primary_ip: (c.name, c.stack_name, c.service_name, c.dns, c.dns_search, tuple(c.links.items()))
            for c in self.fleet.containers
            if self.live(c) and self.fleet.container_by_ip(c.primary_ip) is c
        }  # a shared IP: no view

    def forget_view(self, client_ip: str) -> None:
        reads = self._view_reads.pop(client_ip, None)
        if reads is None:
            return
        names, own, linked = reads
        for name in names:
            _unindex(self._views_by_name, name, client_ip)
        if own is not None:
            _unindex(self._views_by_own, own, client_ip)
        for key in linked:
            _unindex(self._views_by_linked, key, client_ip)

    def make_view(self, table: AnswersTable, client_ip: str, _inputs: Any) -> ClientView:
        c = self.fleet.container_by_ip(client_ip)
        assert c is not None
        d = self.domain
        search = tuple(fqdn(s) for s in c.dns_search) or ((fqdn(f"{c.stack_name}.{d}"), d) if c.stack_name else (d,))
        recurse = tuple((ip, 53) for ip in c.dns if ip not in self.never)
        own: dict[str, NameRecords] = {}
        names: list[str] = []
        for target, alias in c.links.items():
            if not alias:
                continue
            name = fqdn(f"{target}.{d}")
            names.append(name)
            rec = table.records.get(name)
            if rec is not None:
                own[fqdn(f"{alias}.{d}")] = rec
        own_key: ServiceKey | None = None
        linked_keys: list[ServiceKey] = []
        if c.service_name:
            own_key = _service_key(c.stack_name, c.service_name)
            service = self.fleet.service(*own_key)
            if service is not None:
                for target, alias in service.links.items():
                    if not alias:
                        continue
                    target_key = _link_key(service, target)
                    linked_keys.append(target_key)
                    linked = self.fleet.service(*target_key)
                    if linked is not None:
                        rec = self.service_records(linked)
                        own[fqdn(f"{alias}.{d}")] = rec
                        own[fqdn(f"{alias}.{service.stack_name}.{d}")] = rec
        self.forget_view(client_ip)
        self._view_reads[client_ip] = (tuple(names), own_key, tuple(linked_keys))
        for name in names:
            self._views_by_name.setdefault(name, set()).add(client_ip)
        if own_key is not None:
            self._views_by_own.setdefault(own_key, set()).add(client_ip)
        for key in linked_keys:
            self._views_by_linked.setdefault(key, set()).add(client_ip)
        return ClientView(client_ip, search, recurse, own)


def _create_index(c: Container) -> int:
    return c.create_index


def _unindex(index: dict[Any, set[str]], key: Any, client_ip: str) -> None:
    users = index.get(key)
    if users is not None:
        users.discard(client_ip)
        if not users:
            del index[key]


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
    """Build the answers table of a fleet (see the module docstring for the names); the table
    keeps what built it, so that ``AnswersTable.update`` can follow the fleet object by object."""
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
        builder=builder,
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
