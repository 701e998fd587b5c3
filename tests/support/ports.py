"""Loopback port numbers for servers that need one up front, free for UDP *and* TCP.

The DNS service, unbound and dnsmasq listen on one number for both protocols, and a port the
kernel hands out as free for one protocol may be taken for the other: bound by another program,
the local end of a connection, or in TIME_WAIT after one (a bind without SO_REUSEADDR fails on
those). So a port is held by binding both sockets (TCP without SO_REUSEADDR, the strictest
test), a clash on either side means trying another number, and every socket opened on the way is
closed whatever happens. The sockets stay bound until the port is handed over: a caller that
starts its server later keeps the ``HeldPort`` until just before, so that nobody else gets the
number in between.

Only the standard library: ``bench/`` imports this module too.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable
from types import TracebackType

ATTEMPTS = 100


class HeldPort:
    """A port number bound on ``host`` for UDP and for TCP until ``release``; a context manager
    that releases it on the way out (an exception included)."""

    def __init__(self, host: str, port: int, udp: socket.socket, tcp: socket.socket) -> None:
        self.host = host
        self.port = port
        self.udp: socket.socket | None = udp
        self.tcp: socket.socket | None = tcp

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def release(self) -> int:
        """Close both sockets (the server that gets the number binds it next) and return it."""
        for sock in (self.udp, self.tcp):
            if sock is not None:
                sock.close()
        self.udp = self.tcp = None
        return self.port

    def __enter__(self) -> HeldPort:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _try_hold(host: str, wanted: int) -> HeldPort | None:
    """Both sockets on ``wanted`` (0: a number the kernel picks for UDP), or None on a clash;
    nothing stays open unless it is returned."""
    family = _family(host)
    with contextlib.ExitStack() as opened:
        udp = opened.enter_context(socket.socket(family, socket.SOCK_DGRAM))
        tcp = opened.enter_context(socket.socket(family, socket.SOCK_STREAM))
        try:
            udp.bind((host, wanted))
            port = int(udp.getsockname()[1])
            tcp.bind((host, port))
        except OSError:
            return None
        opened.pop_all()  # handed over: the HeldPort closes them
        return HeldPort(host, port, udp, tcp)


def hold_port(host: str = "127.0.0.1", candidates: Iterable[int] = (), attempts: int = ATTEMPTS) -> HeldPort:
    """A port free for both UDP and TCP on ``host``, held (both sockets bound) until released.
    ``candidates`` are tried first, in order (a test of this helper names a port it has taken on
    one side); then numbers the kernel picks, ``attempts`` of them."""
    for wanted in (*candidates, *([0] * attempts)):
        held = _try_hold(host, wanted)
        if held is not None:
            return held
    raise RuntimeError(f"no port free for both UDP and TCP on {host} after {attempts} tries")


def free_port(host: str = "127.0.0.1") -> int:
    """A port number free for both UDP and TCP a moment ago, released for the caller's server
    to bind at once (where a wait comes before the bind, hold it with ``hold_port`` instead)."""
    with hold_port(host) as held:
        return held.port


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct port numbers, each free for both UDP and TCP (held together, so that
    none repeats, then released together)."""
    with contextlib.ExitStack() as stack:
        return [stack.enter_context(hold_port(host)).port for _ in range(count)]
