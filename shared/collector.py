"""Python's cyclic collector paused while a large, long-lived structure is made.

Building a fleet of 100,000 containers makes millions of objects that live until the next
whole rebuild and hold no reference cycles. Left alone, the collector walks the growing heap
over and over meanwhile (about 15% of a cold etcd list's apply at 100k), and every full
collection afterwards walks it again for nothing. ``paused_then_frozen`` turns it off for
the build and moves what the build made out of its sight (``gc.freeze``): reference counting
still frees those objects when they are dropped.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_then_frozen() -> Iterator[None]:
    """No collection inside; what exists at the end is frozen. Process-wide: for a build that
    runs once in a while (a cold list, a rebuilt table), not per request."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
