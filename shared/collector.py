"""Python's cyclic collector paused while a large structure is made.

Building or parsing a fleet of 100,000 containers makes millions of objects that all stay alive
until the end and hold no reference cycles. Left alone, the collector walks the growing heap
over and over meanwhile and frees nothing (three quarters of a 100k YAML parse, about 15% of a
cold etcd list's apply), and every full collection afterwards walks what was built again.
``collector_paused`` turns it off for the build; ``paused_then_frozen`` also moves what exists
at the end out of its sight (``gc.freeze``): reference counting still frees those objects when
they are dropped.

The collector is one per process, so pauses are counted: nested or in several threads at once,
it comes back when the last one ends, and only if it was on when the first began.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator


class _Pauses:
    """How many pauses are open, and whether the collector was on before the first."""

    lock = threading.Lock()
    open = 0
    resume = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection inside (for a parse, a validation, a bulk write)."""
    with _Pauses.lock:
        if _Pauses.open == 0:
            _Pauses.resume = gc.isenabled()
            gc.disable()
        _Pauses.open += 1
    try:
        yield
    finally:
        with _Pauses.lock:
            _Pauses.open -= 1
            if _Pauses.open == 0 and _Pauses.resume:
                gc.enable()


@contextlib.contextmanager
def paused_then_frozen() -> Iterator[None]:
    """No collection inside; what exists at the end is frozen. For a build that lives until
    the next one (a cold list, a rebuilt table), not per request."""
    with collector_paused():
        try:
            yield
        finally:
            gc.freeze()
