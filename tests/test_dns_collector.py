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


def test_after_take_over_only_the_full_pass_collects_the_oldest_generation() -> None:
    """A stream of long-lived objects (a cache filling with misses) triggers no full collection
    of the collector's own; the young generations are still collected."""
    saved = gc.get_threshold()
    schedule = CollectorSchedule()
    try:
        for take_over in (False, True):
            if take_over:
                schedule.take_over()
            else:
                gc.set_threshold(700, 10, 10)
            before = [g["collections"] for g in gc.get_stats()]
            kept = [[Node() for _ in range(100)] for _ in range(3000)]  # survivors, like cache entries
            after = [g["collections"] for g in gc.get_stats()]
            del kept
            assert after[0] > before[0]
            assert after[1] > before[1]
            if take_over:
                assert after[2] == before[2]
            else:
                assert after[2] > before[2]  # the default thresholds do start full collections
        schedule.full_pass()
        assert gc.get_stats()[2]["collections"] > after[2]
    finally:
        gc.set_threshold(*saved)
