"""The collector schedule: long-lived objects leave the collector's full passes, are still freed
the moment nothing holds them, and a cycle frozen by mistake is still reclaimed by the full pass."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from dns_svc.collector import CollectorSchedule


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the test process's collector goes back to its defaults


def test_frozen_objects_are_still_freed_by_reference_counting() -> None:
    schedule = CollectorSchedule()
    cached = Node()
    gone = weakref.ref(cached)
    before = gc.get_freeze_count()
    schedule.freeze_survivors()
    assert gc.get_freeze_count() > before
    assert schedule.freezes == 1
    del cached
    assert gone() is None  # no cycle: freed at once, frozen or not


def test_a_cycle_frozen_by_mistake_waits_for_the_full_pass() -> None:
    schedule = CollectorSchedule()
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    schedule.freeze_survivors()
    del a, b
    gc.collect()
    assert gone() is not None  # frozen: ordinary collections no longer look at it
    assert schedule.full_pass() >= 2
    assert gone() is None
    assert schedule.full_passes == 1


def test_a_fleet_update_is_made_without_collections_and_then_frozen() -> None:
    schedule = CollectorSchedule()
    before = gc.get_freeze_count()
    with schedule.long_lived():
        assert not gc.isenabled()
        table = [Node() for _ in range(1000)]
        gone = weakref.ref(table[0])
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + 1000
    del table
    assert gone() is None  # the replaced table is freed by reference counting, frozen or not
