"""``EtcdObjects``: the fleet under an etcd prefix validated one key at a time.

The property that makes following etcd per object safe: after any sequence of puts and
deletes, applied in any batches, what is served equals what a whole validation of every key
gives. The reference here is that whole validation written the obvious way: every object in one
document through ``Fleet.from_mapping``, and each object it refuses taken out, until the rest is
a valid fleet.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.etcd_fleet import KINDS, named_by_key
from shared.etcd_objects import EtcdObjects, fleet_from_keys
from shared.fleet_changes import diff_fleets, identity
from shared.fleet_index import FleetIndex
from shared.model import Container, Fleet, FleetError


def reference(values: Mapping[str, bytes], revisions: Mapping[str, int]) -> tuple[Fleet, set[str]]:
    """The served fleet and the held-back keys, by validating everything together."""
    environment, objects, bad = parsed(values, revisions)
    # Of several keys for one object, the first that can be served is: the others wait while
    # it is a candidate, and the next is tried once it has been refused.
    refused: set[str] = set()
    while True:
        candidates: dict[str, list[tuple[str, dict[str, Any]]]] = {kind: [] for kind in objects}
        claims: set[tuple[str, str]] = set()
        for kind, pairs in objects.items():
            for key, obj in pairs:
                if key not in refused and (kind, claimed(kind, key)) not in claims:
                    claims.add((kind, claimed(kind, key)))
                    candidates[kind].append((key, obj))
        fleet, failed = whole(environment, candidates)
        left = {key for pairs in objects.values() for key, _ in pairs} - refused - failed
        raced = {key for key in failed if any(same_object(key, other) for other in left)}
        if not raced:
            waiting = {key for pairs in objects.values() for key, _ in pairs} - {
                key for pairs in candidates.values() for key, _ in pairs
            }
            return fleet, bad | refused | waiting | failed
        refused |= raced


def contested(values: Mapping[str, bytes]) -> bool:
    """Whether two keys name one object (then the reference's rounds and the index may pick
    differently among keys that each need the other's pick, and only a whole fresh
    validation by the index itself is the measure)."""
    keys = [k for k in values if k.split("/")[0] in KINDS[1:]]
    return len({(k.split("/")[0], claimed(k.split("/")[0], k)) for k in keys}) != len(keys)


def same_object(key: str, other: str) -> bool:
    kind = key.split("/")[0]
    return key != other and other.split("/")[0] == kind and claimed(kind, key) == claimed(kind, other)


def parsed(
    values: Mapping[str, bytes], revisions: Mapping[str, int]
) -> tuple[dict[str, Any], dict[str, list[tuple[str, dict[str, Any]]]], set[str]]:
    """The environment, the objects of each kind in key order, and the keys not usable at all."""
    bad: set[str] = set()
    objects: dict[str, list[tuple[str, dict[str, Any]]]] = {kind: [] for kind in KINDS[1:]}
    environment: dict[str, Any] = {}
    tokens: dict[str, dict[str, Any]] = {}
    for key in sorted(values):
        if key.startswith(("claims/", "status/")):
            continue
        try:
            obj = json.loads(values[key])
        except ValueError:
            bad.add(key)
            continue
        if not isinstance(obj, dict):
            bad.add(key)
            continue
        if key == "environment":
            environment = obj
            continue
        if key.startswith("tokens/"):
            tokens[key[len("tokens/") :]] = obj
            continue
        kind = key.split("/", 1)[0]
        if kind not in objects or named_by_key(kind, key, obj):
            bad.add(key)
            continue
        if kind == "containers":
            obj.setdefault("create_index", revisions[key])
        objects[kind].append((key, obj))
    for key, obj in objects["services"]:
        token = tokens.pop(key[len("services/") :], None)
        if token is not None:
            obj["token"] = token.get("token") or ""
    bad.update(f"tokens/{rest}" for rest in tokens if f"services/{rest}" not in values)
    return environment, objects, bad


def whole(environment: dict[str, Any], objects: dict[str, list[tuple[str, dict[str, Any]]]]) -> tuple[Fleet, set[str]]:
    """One document of ``objects``, each one refused taken out until the rest is valid."""
    failed: set[str] = set()
    while True:
        data = {"environment": environment, **{k: [o for _, o in v] for k, v in objects.items()}}
        try:
            return Fleet.from_mapping(data), failed
        except FleetError as exc:
            if exc.collection not in objects or exc.index is None:
                raise  # a whole-fleet problem: the generator makes none
            key, _ = objects[exc.collection].pop(exc.index)
            failed.add(key)


def claimed(kind: str, key: str) -> str:
    parts = key.split("/")[1:]
    return parts[-1] if kind in ("hosts", "containers") else "/".join(parts).lower()


def served(fleet: Any) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {("environment", ""): fleet.environment}
    for kind in ("hosts", "stacks", "services", "containers"):
        for obj in getattr(fleet, kind):
            out[(kind, identity(kind, obj))] = obj
    return out


STACKS = ["shop", "Shop", "ops"]
SERVICES = ["web", "db", "Web"]
HOSTS = ["h1", "h2", "h3"]
HOST_NAMES = ["n1", "n2", "h1"]  # "h1" is also another host's uuid
IPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1", "not-an-ip"]

json_value = st.one_of(st.none(), st.text(max_size=3), st.integers(-1, 3))


@st.composite
def put_op(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["stacks", "services", "services", "hosts", "containers", "containers", "other"]))
    if kind == "stacks":
        name = draw(st.sampled_from(STACKS))
        obj: dict[str, Any] = {"name": name} if draw(st.booleans()) else {}
        if draw(st.integers(0, 9)) == 0:
            obj["uuid"] = draw(st.sampled_from(["s-1", "s-2"]))
        return f"stacks/{name}", json.dumps(obj).encode()
    if kind == "services":
        stack, name = draw(st.sampled_from(STACKS)), draw(st.sampled_from(SERVICES))
        svc_kind = draw(st.sampled_from(["service", "service", "dnsService", "externalService", "nope"]))
        obj = {"kind": svc_kind}
        if draw(st.booleans()):
            target = draw(st.sampled_from([*SERVICES, "ops/web", "shop/db", "gone"]))
            obj["links"] = {target: draw(st.sampled_from(["", "alias"]))}
        if draw(st.booleans()):
            obj["sidekicks"] = draw(st.lists(st.sampled_from(SERVICES), max_size=2))
        if svc_kind == "externalService" and draw(st.booleans()):
            obj["external_ips"] = [draw(st.sampled_from(IPS))]
        if draw(st.booleans()):
            obj["ports"] = ["80/tcp"]
        if draw(st.integers(0, 5)) == 0:
            obj["primary_service_name"] = "boss"
        return f"services/{stack}/{name}", json.dumps(obj).encode()
    if kind == "hosts" or kind == "other":
        return draw(other_op(kind))
    return draw(container_op())


@st.composite
def other_op(draw: st.DrawFn, kind: str) -> tuple[str, bytes]:
    if kind == "hosts":
        uuid = draw(st.sampled_from(HOSTS))
        obj = {"name": draw(st.sampled_from(HOST_NAMES))}
        if draw(st.booleans()):
            obj["agent_ip"] = draw(st.sampled_from(IPS))
        return f"hosts/{uuid}", json.dumps(obj).encode()
    key = draw(st.sampled_from(["environment", "tokens/shop/web", "tokens/ops/db", "bogus/x", "claims/uuid/c1"]))
    value = draw(
        st.sampled_from([b'{"name": "prod"}', b'{"token": "t0ken"}', b"[1]", b"{not json", b'{"name": "other"}'])
    )
    return key, value


@st.composite
def container_op(draw: st.DrawFn) -> tuple[str, bytes]:
    host = draw(st.sampled_from(["h1", "h2", "-", "n1", "zz"]))
    uuid = draw(st.sampled_from(["c1", "c2", "c3", "c4"]))
    obj: dict[str, Any] = {
        "name": draw(st.sampled_from(["web-1", "web-2", "db-1"])),
        "primary_ip": draw(st.sampled_from(IPS)),
    }
    if draw(st.booleans()):
        obj["stack_name"] = draw(st.sampled_from(STACKS))
        if draw(st.booleans()):
            obj["service_name"] = draw(st.sampled_from(SERVICES))
    elif draw(st.integers(0, 5)) == 0:
        obj["service_name"] = "web"
    if draw(st.integers(0, 3)) == 0:
        obj["create_index"] = draw(st.sampled_from([7, "x"]))
    if draw(st.integers(0, 3)) == 0:
        obj["state"] = draw(st.sampled_from(["stopped", "starting"]))
    return f"containers/{host}/{uuid}", json.dumps(obj).encode()


ops = st.lists(
    st.lists(st.one_of(put_op(), st.tuples(st.just("delete"), st.integers(0, 1000))), min_size=1, max_size=6),
    min_size=1,
    max_size=12,
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_any_sequence_of_changes_serves_what_a_whole_validation_serves(batches: list[list[Any]]) -> None:
    objects = EtcdObjects()
    follower = FleetIndex()  # what a second host builds from the changes alone
    values: dict[str, bytes] = {}
    revisions: dict[str, int] = {}
    revision = 0
    for batch in batches:
        puts: dict[str, bytes] = {}
        deletes: set[str] = set()
        for op in batch:
            if op[0] == "delete":
                if values:
                    key = sorted(values)[op[1] % len(values)]
                    deletes.add(key)
                    puts.pop(key, None)
            else:
                key, value = op
                puts[key] = value
                deletes.discard(key)
        for key in deletes:
            values.pop(key, None)
            revisions.pop(key, None)
        for key, value in puts.items():
            revision += 1
            revisions.setdefault(key, revision)
            values[key] = value
        before = objects.index.snapshot()
        changes = objects.apply(puts, deletes, revisions)
        fresh = EtcdObjects()
        fresh.apply(values, (), revisions)
        assert served(objects.index) == served(fresh.index)  # a fresh list and full rebuild
        assert objects.held == fresh.held
        expected, held = reference(values, revisions)
        if not contested(values):
            assert served(objects.index) == served(expected)
            assert objects.index.digest == expected.digest
            assert set(objects.held) == held
        # the changes are exactly the difference, and a follower applying them keeps up
        assert {(c.kind, c.ident): (c.old, c.new) for c in changes} == {
            (c.kind, c.ident): (c.old, c.new) for c in diff_fleets(before, objects.index)
        }
        follower.apply(changes)
        assert follower.raw_lists() == objects.index.raw_lists()
        whole_now = objects.index.snapshot()
        for text in ["web-1", "WEB-1", "c1", "web", "shop", "Shop", "h1", "n1", "db-1"]:
            for kind in ("hosts", "stacks", "services", "containers"):
                assert getattr(follower, f"{kind}_called")(text) == getattr(whole_now, f"{kind}_called")(text)
    whole, _ = fleet_from_keys(values, revisions)
    assert whole.raw == objects.index.snapshot().raw  # one batch or many: the same lists, in one order


def test_services_that_link_each_other_are_served_together() -> None:
    objects = EtcdObjects()
    objects.apply(
        {
            "stacks/shop": b"{}",
            "services/shop/web": b'{"links": {"db": ""}}',
            "services/shop/db": b'{"links": {"web": ""}}',
        }
    )
    assert objects.index.service("shop", "web") is not None
    assert objects.index.service("shop", "db") is not None
    assert objects.held == {}


def test_a_container_waits_for_its_service_and_goes_with_it() -> None:
    objects = EtcdObjects()
    objects.apply(
        {
            "stacks/shop": b"{}",
            "containers/-/c1": b'{"name": "web-1", "primary_ip": "10.0.0.1", '
            b'"stack_name": "shop", "service_name": "web"}',
        }
    )
    assert objects.index.container("c1") is None
    assert "does not exist" in objects.held["containers/-/c1"]
    [change] = [c for c in objects.apply({"services/shop/web": b"{}"}) if c.kind == "containers"]
    assert change.old is None
    assert change.new is not None
    assert "containers/-/c1" not in objects.held
    changes = objects.apply({}, ["services/shop/web"])
    assert {(c.kind, c.new is None) for c in changes} == {("services", True), ("containers", True)}
    assert objects.index.container("c1") is None


def test_a_key_that_comes_first_takes_its_object_back_when_what_it_names_appears() -> None:
    """One container uuid under two keys: the first in key order waits for its stack while the
    second is served; when the stack appears, the first is served and the second held back,
    as a fresh list of the same keys gives (found by the property test above)."""
    first, second = "containers/h1/c1", "containers/n1/c1"
    objects = EtcdObjects()
    objects.apply(
        {
            "hosts/h1": b'{"name": "n1"}',
            first: b'{"name": "web-1", "primary_ip": "10.0.0.1", "stack_name": "shop"}',
            second: b'{"name": "web-1", "primary_ip": "10.0.0.2"}',
        }
    )
    served = objects.index.container("c1")
    assert served is not None
    assert served.primary_ip == "10.0.0.2"
    assert "does not exist" in objects.held[first]
    [change] = [c for c in objects.apply({"stacks/shop": b"{}"}) if c.kind == "containers"]
    assert isinstance(change.new, Container)
    assert change.new.primary_ip == "10.0.0.1"
    assert "another key" in objects.held[second]
    assert first not in objects.held


def test_a_container_without_create_index_gets_its_create_revision() -> None:
    objects = EtcdObjects()
    objects.apply({"containers/-/c2": b'{"name": "b", "primary_ip": "10.0.0.2"}'}, (), {"containers/-/c2": 40})
    objects.apply({"containers/-/c1": b'{"name": "a", "primary_ip": "10.0.0.1"}'}, (), {"containers/-/c1": 41})
    c2 = objects.index.container("c2")
    assert c2 is not None
    assert c2.create_index == 40  # not moved by a key that sorts before it
