"""The answers table updated object by object equals the table built from scratch.

This is the invariant that makes the incremental update safe: random sequences of fleet changes
(containers, services of every kind, stacks, hosts: put, replaced, deleted, several at once),
each applied to one table through ``diff_fleets`` of the fleets before and after; after every
step the updated table and ``answers_from_fleet`` of the new fleet agree on every record, every
name that exists, and every client's view, and the update reported exactly the names and views
that changed.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dns_svc.answers import AnswersTable, ClientView, answers_from_fleet
from shared.fleet_changes import diff_fleets
from shared.model import Fleet, FleetError

STACKS = ("shop", "Infra", "ops")
SERVICES = ("web", "db", "Alias", "ext", "side", "vip")
CONTAINER_NAMES = ("web-1", "web-2", "db-1", "web.shop", "dup", "DUP", "_web._tcp.shop")
IPS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "fd00::1", "fd00::2")
LINK_TARGETS = ("web-1", "db-1", "web.shop", "dup", "nothere", "db.infra")
UPSTREAMS = ("127.0.0.53", "10.0.0.1")
NEVER = ("10.0.0.1",)


def table_for(fleet: Fleet, serial: int = 1) -> AnswersTable:
    return answers_from_fleet(
        fleet, metadata_answer=["169.254.169.250"], never_recurse_to=NEVER, ttl=None, serial=serial
    )


def view_of(table: AnswersTable, ip: str) -> tuple[Any, ...]:
    v: ClientView = table.view(ip)
    return (v.key, v.search, v.recurse, dict(v.records))


def repaired(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with the references that now dangle taken out, as a writer deleting an object and
    what names it would: a deleted stack takes its services, a deleted service its containers'
    membership, links and sidekicks."""
    stacks = {s["name"].lower() for s in doc["stacks"]}
    doc["services"] = [s for s in doc["services"] if s["stack_name"].lower() in stacks]
    services = {(s["stack_name"].lower(), s["name"].lower()) for s in doc["services"]}
    for s in doc["services"]:
        stack = s["stack_name"]

        def exists(target: str, stack: str = stack) -> bool:
            t_stack, _, t_name = target.rpartition("/")
            return ((t_stack or stack).lower(), t_name.lower()) in services

        s["links"] = {t: a for t, a in s.get("links", {}).items() if exists(t)}
        s["sidekicks"] = [k for k in s.get("sidekicks", []) if (stack.lower(), k.lower()) in services]
        if s.get("kind") == "dnsService" and not s["links"]:
            s["kind"] = "service"
    hosts = {h["uuid"] for h in doc["hosts"]}
    for c in doc["containers"]:
        if c.get("stack_name") and c["stack_name"].lower() not in stacks:
            c["stack_name"] = ""
        if not c.get("stack_name") or (c["stack_name"].lower(), c.get("service_name", "").lower()) not in services:
            c["service_name"] = ""
        if c.get("host_uuid") and c["host_uuid"] not in hosts:
            c["host_uuid"] = ""
    return doc


@st.composite
def services(draw: st.DrawFn, stack: str) -> dict[str, Any]:
    name = draw(st.sampled_from(SERVICES))
    kind = draw(st.sampled_from(("service", "service", "externalService", "dnsService", "vip")))
    s: dict[str, Any] = {"name": name, "stack_name": stack}
    if kind == "externalService":
        s["kind"] = kind
        if draw(st.booleans()):
            s["external_ips"] = draw(st.lists(st.sampled_from(("10.1.1.1", "10.1.1.2", "fd01::1")), max_size=2))
        if not s.get("external_ips"):
            s["hostname"] = draw(st.sampled_from(("example.test", "Other.Example.test.")))
    elif kind == "dnsService":
        s["kind"] = kind
    elif kind == "vip":
        s["vip"] = draw(st.sampled_from(("10.2.0.1", "fd02::1")))
    s["links"] = draw(
        st.dictionaries(
            st.sampled_from((*SERVICES, *(f"{t}/{n}" for t in STACKS for n in SERVICES[:3]))),
            st.sampled_from(("", "up", "Peer")),
            max_size=3,
        )
    )
    s["sidekicks"] = draw(st.lists(st.sampled_from(SERVICES), max_size=2, unique=True))
    s["ports"] = draw(st.lists(st.sampled_from(("80", "8080:80/tcp", "53/udp", "bad")), max_size=3))
    s["labels"] = draw(st.dictionaries(st.sampled_from(("tier", "team")), st.sampled_from(("a", "b")), max_size=2))
    return s


@st.composite
def containers(draw: st.DrawFn, uuid: str) -> dict[str, Any]:
    c: dict[str, Any] = {
        "uuid": uuid,
        "name": draw(st.sampled_from(CONTAINER_NAMES)),
        "primary_ip": draw(st.sampled_from(IPS)),
        "state": draw(st.sampled_from(("running", "running", "starting", "stopped"))),
        "health_state": draw(st.sampled_from(("healthy", "healthy", "unhealthy", ""))),
        "create_index": draw(st.integers(0, 3)),
        "host_uuid": draw(st.sampled_from(("", "h1", "h2"))),
    }
    stack = draw(st.sampled_from(("", *STACKS)))
    if stack:
        c["stack_name"] = stack
        c["service_name"] = draw(st.sampled_from(("", *SERVICES)))
    c["links"] = draw(st.dictionaries(st.sampled_from(LINK_TARGETS), st.sampled_from(("", "l1", "L2")), max_size=2))
    c["dns_search"] = draw(st.lists(st.sampled_from(("shop.rancher.internal", "example.test")), max_size=2))
    c["dns"] = draw(st.lists(st.sampled_from(UPSTREAMS), max_size=2))
    return c


class IncrementalAnswers(RuleBasedStateMachine):
    """One fleet, changed step by step; one table updated along, compared with a fresh build."""

    @initialize()
    def start(self) -> None:
        self.doc: dict[str, Any] = {
            "environment": {"name": "env", "uuid": "env-1"},
            "hosts": [{"uuid": "h1", "name": "one"}],
            "stacks": [{"name": "shop"}],
            "services": [],
            "containers": [],
        }
        self.fleet = Fleet.from_mapping(self.doc)
        self.serial = 1
        self.table = table_for(self.fleet)
        self.fresh = table_for(self.fleet)  # never the table updated in place
        self.delta_names: set[str] | None = set()
        self.delta_views: set[str] | None = set()
        self.previous = self.table
        self.next_uuid = 0

    def change(self, doc: dict[str, Any]) -> None:
        try:
            fleet = Fleet.from_mapping(repaired(doc))
        except FleetError:
            return  # a change a writer could not make (a sidekick of two services, say)
        for ip in IPS:  # every view built, so that one kept too long would show
            self.table.view(ip)
        self.previous = self.fresh  # the fresh build of the fleet before, its views built
        changes = diff_fleets(self.fleet, fleet)
        self.serial += 1
        self.delta_names, self.delta_views = self.table.update(fleet, changes, self.serial)
        self.doc, self.fleet = fleet.to_mapping(), fleet
        self.fresh = table_for(fleet, self.serial)

    @rule(data=st.data(), count=st.integers(1, 3))
    def put_containers(self, data: st.DataObject, count: int) -> None:
        doc = copy.deepcopy(self.doc)
        for _ in range(count):
            existing = [c["uuid"] for c in doc["containers"]]
            replace: bool = data.draw(st.booleans())
            if existing and replace:
                uuid = data.draw(st.sampled_from(existing))
            else:
                self.next_uuid += 1
                uuid = f"c{self.next_uuid}"
            c = data.draw(containers(uuid))
            doc["containers"] = [x for x in doc["containers"] if x["uuid"] != uuid] + [c]
        self.change(doc)

    @rule(data=st.data())
    def delete_container(self, data: st.DataObject) -> None:
        if not self.doc["containers"]:
            return
        uuid = data.draw(st.sampled_from([c["uuid"] for c in self.doc["containers"]]))
        doc = copy.deepcopy(self.doc)
        doc["containers"] = [c for c in doc["containers"] if c["uuid"] != uuid]
        self.change(doc)

    @rule(data=st.data())
    def put_service(self, data: st.DataObject) -> None:
        if not self.doc["stacks"]:
            return
        stack = data.draw(st.sampled_from([s["name"] for s in self.doc["stacks"]]))
        s = data.draw(services(stack))
        doc = copy.deepcopy(self.doc)
        key = (stack.lower(), s["name"].lower())
        doc["services"] = [x for x in doc["services"] if (x["stack_name"].lower(), x["name"].lower()) != key] + [s]
        for other in doc["services"]:
            other.pop("primary_service_name", None)  # derived from the sidekicks again
        self.change(doc)

    @rule(data=st.data())
    def delete_service(self, data: st.DataObject) -> None:
        if not self.doc["services"]:
            return
        index = data.draw(st.integers(0, len(self.doc["services"]) - 1))
        doc = copy.deepcopy(self.doc)
        del doc["services"][index]
        for other in doc["services"]:
            other.pop("primary_service_name", None)
        self.change(doc)

    @rule(name=st.sampled_from(STACKS), delete=st.booleans())
    def put_or_delete_stack(self, name: str, delete: bool) -> None:
        doc = copy.deepcopy(self.doc)
        doc["stacks"] = [s for s in doc["stacks"] if s["name"].lower() != name.lower()]
        if not delete:
            doc["stacks"].append({"name": name, "uuid": f"stack-{name}-{self.serial}"})
        for other in doc["services"]:
            other.pop("primary_service_name", None)
        self.change(doc)

    @rule(uuid=st.sampled_from(("h1", "h2")), delete=st.booleans(), env=st.booleans())
    def put_or_delete_host(self, uuid: str, delete: bool, env: bool) -> None:
        doc = copy.deepcopy(self.doc)
        doc["hosts"] = [h for h in doc["hosts"] if h["uuid"] != uuid]
        if not delete:
            doc["hosts"].append({"uuid": uuid, "name": f"host-{self.serial}"})
        if env:
            doc["environment"] = {"name": f"env-{self.serial}", "uuid": "env-1"}
        self.change(doc)

    @invariant()
    def equals_a_fresh_build(self) -> None:
        table, fresh = self.table, self.fresh
        assert table.records == fresh.records
        assert table._names_in_zone == fresh._names_in_zone
        assert table._client_inputs == fresh._client_inputs
        assert table.serial == fresh.serial
        for ip in (*IPS, "10.9.9.9"):
            assert view_of(table, ip) == view_of(fresh, ip), ip

    @invariant()
    def reports_exactly_what_changed(self) -> None:
        before, after = self.previous, self.fresh
        names = before.records.keys() | after.records.keys()
        differ = {n for n in names if before.records.get(n) != after.records.get(n)}
        differ |= before._names_in_zone ^ after._names_in_zone
        assert self.delta_names is not None
        assert self.delta_names == differ
        views = {ip for ip in IPS if view_of(before, ip) != view_of(after, ip)}
        assert self.delta_views is not None
        assert views <= self.delta_views


IncrementalAnswers.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=15,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
test_incremental_answers_equal_a_full_build = pytest.mark.slow(IncrementalAnswers.TestCase)
