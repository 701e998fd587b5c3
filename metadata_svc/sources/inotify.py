"""Linux inotify on one directory, through libc: which names were closed after writing, and
which were renamed or moved into place.

That is what tells a finished file from one still being written: a writer that pauses half-way
has modified the file but not closed it. Polling cannot see the difference (the half file is
just as stable between two polls as a finished one), so on Linux the file source waits for
``IN_CLOSE_WRITE`` or ``IN_MOVED_TO``; elsewhere, or when inotify cannot be had (no libc, no
watches left), ``InotifyDirectory.open`` returns None and the source polls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from pathlib import Path

IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")
WATCHED = (
    IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
)


class InotifyDirectory:
    """Events of one directory; ``read`` returns ``(mask, name)`` pairs without blocking."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, directory: Path) -> InotifyDirectory | None:
        name = ctypes.util.find_library("c")
        if name is None or not hasattr(os, "O_NONBLOCK"):
            return None
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        if libc.inotify_add_watch(fd, os.fsencode(directory), WATCHED) < 0:
            os.close(fd)
            return None
        return cls(fd)

    def read(self) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            i = 0
            while i + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, i)
                raw = data[i + _EVENT.size : i + _EVENT.size + length]
                out.append((mask, os.fsdecode(raw.rstrip(b"\0"))))
                i += _EVENT.size + length

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
