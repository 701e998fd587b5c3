"""``diff_fleets``: the reference list of object changes between two fleets."""

from __future__ import annotations

from typing import Any

from shared.fleet_changes import diff_fleets, identity
from shared.model import Container, Fleet


def fleet(**overrides: Any) -> Fleet:
    data: dict[str, Any] = {
        "hosts": [{"uuid": "h1", "name": "h1"}],
        "stacks": [{"name": "Shop"}],
        "services": [{"name": "Web", "stack_name": "Shop", "ports": ["80/tcp"]}],
        "containers": [
            {"name": "web-1", "uuid": "c1", "primary_ip": "10.0.0.1", "stack_name": "Shop", "service_name": "Web"},
            {"name": "web-2", "uuid": "c2", "primary_ip": "10.0.0.2", "stack_name": "Shop", "service_name": "Web"},
        ],
    }
    data.update(overrides)
    return Fleet.from_mapping(data)


def test_equal_fleets_have_no_changes() -> None:
    assert diff_fleets(fleet(), fleet()) == []


def test_a_new_address_is_one_container_replaced() -> None:
    before = fleet()
    after = fleet(
        containers=[
            {"name": "web-1", "uuid": "c1", "primary_ip": "10.0.0.9", "stack_name": "Shop", "service_name": "Web"},
            {"name": "web-2", "uuid": "c2", "primary_ip": "10.0.0.2", "stack_name": "Shop", "service_name": "Web"},
        ]
    )
    [change] = diff_fleets(before, after)
    assert (change.kind, change.ident) == ("containers", "c1")
    assert isinstance(change.old, Container)
    assert isinstance(change.new, Container)
    assert (change.old.primary_ip, change.new.primary_ip) == ("10.0.0.1", "10.0.0.9")


def test_puts_and_deletes_name_objects_by_identity() -> None:
    before = fleet()
    after = fleet(
        services=[{"name": "Web", "stack_name": "Shop", "ports": ["80/tcp"]}, {"name": "Db", "stack_name": "Shop"}],
        containers=[
            {"name": "web-1", "uuid": "c1", "primary_ip": "10.0.0.1", "stack_name": "Shop", "service_name": "Web"}
        ],
    )
    changes = {(c.kind, c.ident): (c.old is None, c.new is None) for c in diff_fleets(before, after)}
    assert changes == {("services", "shop/db"): (True, False), ("containers", "c2"): (False, True)}
    assert identity("stacks", before.stacks[0]) == "shop"
