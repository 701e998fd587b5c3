"""When Python's cyclic garbage collector may pause the server, and over how much.

The caches hold hundreds of thousands of long-lived reply objects. Left to itself, the collector
walks all of them in every full collection: 120 ms at 400k entries on a 2-vCPU VM, which is the
p99 of any query that arrives meanwhile (bench/RESULTS.md). Cache entries, tables and views hold
no reference cycles (reference counting frees them the moment they are dropped), so walking them
finds nothing.

So every ``freeze_interval`` seconds the young generations are collected (cheap: only objects
made since the last pass) and whatever survived is moved out of the collector's sight with
``gc.freeze()``. Frozen objects are still freed by reference counting when the caches drop them;
only a reference cycle that turns to garbage after being frozen would wait, for the full pass
that runs every ``full_interval`` seconds (unfreeze, collect everything, freeze again; logged
with its duration and what it freed). ``full_interval`` 0: never.

The collector's own full collections are turned off (``take_over``): between two freezes it
started one whenever the objects promoted since the last one outnumbered a quarter of those it
had counted before, which under a stream of cache misses (each leaves a few cache objects
behind) was a full collection every ~10,000 misses, walking everything made since the last
freeze, for nothing: the young generations are still collected as before, and the full pass
here catches what they cannot.

A fleet change makes a new parsed fleet and answers table in a worker thread. Collections
triggered meanwhile ran in that thread and walked the half-built table: 50-140 ms each,
during which the event loop could not run (the thread held the interpreter lock). So a fleet
update runs inside ``long_lived()``: no collection while it is made, and what it made is
frozen at the end (the table it replaces is freed by reference counting).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Iterator

from shared.collector import paused_then_frozen
from shared.logs import log_event

log = logging.getLogger("dns.collector")
NEVER = 2**31 - 1  # a threshold the oldest generation's count (collections of the middle one) never reaches


class CollectorSchedule:
    def __init__(self, freeze_interval: float = 5.0, full_interval: float = 3600.0) -> None:
        self.freeze_interval = freeze_interval
        self.full_interval = full_interval
        self.full_passes = 0
        self.freezes = 0

    def take_over(self) -> None:
        """From now on only ``full_pass`` collects the oldest generation (the young ones keep
        their thresholds)."""
        young, middle, _oldest = gc.get_threshold()
        gc.set_threshold(young, middle, NEVER)

    def freeze_survivors(self) -> None:
        """Collect what is young, then freeze the rest: the next full pass skips it."""
        gc.collect(1)
        gc.freeze()
        self.freezes += 1

    def full_pass(self) -> int:
        """Everything, frozen or not, once; returns how many unreachable objects it found."""
        started = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.full_passes += 1
        log_event(
            log,
            logging.INFO,
            "gc_full_pass",
            unreachable=found,
            frozen=gc.get_freeze_count(),
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return found

    @contextlib.contextmanager
    def long_lived(self) -> Iterator[None]:
        """Around making what lives until the next fleet change: no collection meanwhile,
        and what was made is frozen at the end."""
        try:
            with paused_then_frozen():
                yield
        finally:
            self.freezes += 1

    async def run(self) -> None:
        self.take_over()
        self.full_pass()  # startup: modules, classes and the first table, frozen for good
        last_full = time.monotonic()
        while True:
            await asyncio.sleep(self.freeze_interval)
            if self.full_interval and time.monotonic() - last_full >= self.full_interval:
                self.full_pass()
                last_full = time.monotonic()
            else:
                self.freeze_survivors()
