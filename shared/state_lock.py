"""One running instance per kept copy: a lock beside the state file, held while the process runs.

The kept copy is what a restart serves while its source is down. Two instances writing one
file (a trial run on a production host with the default ``--state-file``) would each overwrite
the other's, and a restart could come back with the wrong fleet. So the first instance holds
``<state file>.lock`` (``flock``, released by the kernel when the process ends, however it ends)
and a second one is refused at start, with the file and the holder's pid named.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from shared.logs import log_event


def _lock(path: Path) -> bool:
    """Take ``path``'s lock for the rest of the process (the descriptor is never closed: the
    kernel lets go when the process ends, and forked workers share it). False when no lock can
    be kept there at all (no directory, read-only): the kept copy will not be written either,
    and its own code says so. Raises ValueError, saying who holds it, when another process
    does."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ValueError(
            f"{path.with_suffix('')} is in use by another running instance (pid {holder}, "
            f"lock {path}): give this one its own --state-file, or --state-file= for none"
        ) from None
    except OSError:
        os.close(fd)
        return False
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return True


def hold_state_file(state_file: str, log: logging.Logger) -> None:
    """At start: the lock on ``state_file`` ('' = no kept copy: nothing to hold), the file named
    in the log; a second instance gets one line and exit 1."""
    if not state_file:
        log_event(log, logging.INFO, "state_file", path="none")
        return
    path = Path(f"{state_file}.lock")
    try:
        held = _lock(path)
    except ValueError as exc:
        log_event(log, logging.ERROR, "cannot_start", reason=str(exc))
        raise SystemExit(1) from None
    log_event(log, logging.INFO, "state_file", path=state_file, lock=str(path) if held else "not possible here")
