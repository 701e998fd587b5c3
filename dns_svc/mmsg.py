"""Batched UDP I/O for the listening socket: ``recvmmsg``/``sendmmsg`` from a C extension of our
own (``dns_svc/_mmsg.c``), used only when it was built from exactly that source; and the calls of
an upstream query's socket (connect and send in one call, a reply read, the disconnect with a
look at what is left queued), which the socket module makes at several times their kernel cost.

Python's socket module makes one system call per datagram, and on a cache hit the kernel's
entry, exit and wake-up costs of ``recvfrom`` and ``sendto`` are most of the CPU a query costs
(bench/RESULTS.md). ``scripts/compile.py`` builds the extension into
``<sys.prefix>/metadns-native/`` with a manifest naming the digest of the C source and of the
interpreter; ``load`` checks it, as ``dns_svc.compiled`` does for the mypyc build, so an edited
source never runs an old build. Without a build, or with ``METADNS_NO_MMSG=1``, the listener
uses ``recvfrom`` and ``sendto``, and the upstream sockets the socket module's calls (``state``
says why, the ``listening`` line shows it).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent / "_mmsg.c"
MODULE = "dns_svc._mmsg"
OFF_ENV = "METADNS_NO_MMSG"

# recv_into(fd, datas, addrs, count, size) -> appended, 0 (nothing queued) or -errno
RecvInto = Callable[[int, list[bytes], list[Any], int, int], int]
# send_from(fd, replies, addrs, start) -> sent from start on, or -errno for the first of them
SendFrom = Callable[[int, list[bytes], list[Any], int], int]
# The upstream sockets' calls (``dns_svc.steps.upstream.channel.UpstreamSockets``):
# address(addr) -> struct sockaddr bytes; connect_send(fd, sockaddr, packet) -> 0 or -errno;
# recv_one(fd) -> the datagram or -errno; disconnect(fd) -> 0 quiet, 1 queued, -1 error, -errno
Address = Callable[[tuple[Any, ...]], bytes]
ConnectSend = Callable[[int, bytes, bytes], int]
RecvOne = Callable[[int], "bytes | int"]
Disconnect = Callable[[int], int]


class Native:
    """The calls of the extension, typed for the listener and the upstream sockets."""

    __slots__ = ("address", "connect_send", "disconnect", "max_batch", "recv_into", "recv_one", "send_from")

    def __init__(self, module: Any) -> None:
        self.recv_into: RecvInto = module.recv_into
        self.send_from: SendFrom = module.send_from
        self.max_batch = int(module.MAX_BATCH)
        self.address: Address = module.address
        self.connect_send: ConnectSend = module.connect_send
        self.recv_one: RecvOne = module.recv_one
        self.disconnect: Disconnect = module.disconnect


def build_dir() -> Path:
    return Path(sys.prefix) / "metadns-native"


def source_digest() -> str:
    """The digest the build must carry: the C source's and the interpreter's."""
    return hashlib.sha256(sys.version.encode() + b"\0" + SOURCE.read_bytes()).hexdigest()


# What ``load`` found: "mmsg" (the extension is used), "off" (METADNS_NO_MMSG), "none" (never
# built), "stale" (built from another source), "broken" (the build would not load).
_state = "none"
_found: tuple[Native | None, str] | None = None  # the one look at the build, per process


def find(directory: Path) -> tuple[Native | None, str]:
    """The extension built into ``directory`` when it was built from this very source, and
    what was found there (a state of ``_state``)."""
    try:
        found = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None, "none"
    try:
        digest = source_digest()
    except OSError:
        return None, "none"  # installed without the source (a wheel): nothing to check a build against
    if not isinstance(found, dict) or found.get("digest") != digest:
        return None, "stale"
    try:
        path = directory / str(found["file"])
        loader = importlib.machinery.ExtensionFileLoader(MODULE, str(path))
        spec = importlib.util.spec_from_file_location(MODULE, path, loader=loader)
        if spec is None:
            return None, "broken"
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        native = Native(module)
    except (ImportError, OSError, KeyError, AttributeError):
        return None, "broken"
    return native, "mmsg"


def load() -> Native | None:
    """The extension when a build of this very source exists and ``METADNS_NO_MMSG`` is not
    set; None otherwise (the caller uses ``recvfrom``/``sendto``). The build is looked at once
    per process; the variable is read on every call."""
    global _state, _found
    if os.environ.get(OFF_ENV):
        _state = "off"
        return None
    if _found is None:
        _found = find(build_dir())
    native, _state = _found
    return native


def state() -> str:
    """What ``load`` found (see ``_state``)."""
    return _state
