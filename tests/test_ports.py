"""The tests' port helper: a number it hands out is free for UDP and for TCP, a clash on either
side (a listener, a TCP port in TIME_WAIT) is skipped, and no socket is left open on the way.

A port picked free for UDP alone once made the DNS command-line test fail to bind its TCP side
(EADDRINUSE: the number was in TIME_WAIT for TCP), and the socket it leaked failed a later test
through a ResourceWarning."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from tests.support.ports import free_ports, hold_port


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def udp_free_tcp_listening() -> Iterator[int]:
    """A port free for UDP whose TCP side a listener holds."""
    with hold_port() as held:
        port = held.release()
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", port))
            listener.listen()
            yield port


@pytest.fixture
def udp_free_tcp_time_wait() -> int:
    """A port free for UDP whose TCP side is in TIME_WAIT, with nothing bound to it any more: the
    server end closes the connection first, so the TIME_WAIT is on the port's side."""
    with hold_port() as held:
        port = held.release()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the active close: TIME_WAIT on 127.0.0.1:port
            assert client.recv(1) == b""  # the FIN has arrived: the close is under way
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        udp.bind(("127.0.0.1", port))  # UDP alone says the port is free ...
        with pytest.raises(OSError, match="Address already in use"):
            tcp.bind(("127.0.0.1", port))  # ... TCP does not: the failure the tests used to hit
    return port


@pytest.fixture
def tcp_free_udp_taken() -> Iterator[int]:
    with hold_port() as held:
        port = held.release()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", port))
            yield port


@pytest.mark.parametrize("clash", ["udp_free_tcp_listening", "udp_free_tcp_time_wait", "tcp_free_udp_taken"])
def test_a_port_taken_on_either_side_is_skipped(clash: str, request: pytest.FixtureRequest) -> None:
    taken = request.getfixturevalue(clash)
    before = open_fds()
    with hold_port(candidates=[taken]) as held:
        assert held.port != taken
        assert held.udp is not None
        assert held.tcp is not None
        assert held.udp.getsockname() == held.tcp.getsockname() == ("127.0.0.1", held.port)
        assert held.tcp.type == socket.SOCK_STREAM
        assert held.udp.type == socket.SOCK_DGRAM
    assert open_fds() == before  # the sockets of the refused try and the held ones are closed


def test_a_held_port_is_given_to_nobody_else_and_free_once_released() -> None:
    held = hold_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(OSError, match="in use"):
        udp.bind(("127.0.0.1", held.port))
    port = held.release()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        udp.bind(("127.0.0.1", port))
        tcp.bind(("127.0.0.1", port))
        tcp.listen()


def test_free_ports_are_distinct() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20


def test_no_port_at_all_is_said_and_leaves_nothing_open() -> None:
    before = open_fds()
    with socket.socket() as tcp:
        tcp.bind(("127.0.0.1", 0))
        taken = tcp.getsockname()[1]
        with pytest.raises(RuntimeError, match="no port free for both UDP and TCP"):
            hold_port(candidates=[taken] * 3, attempts=0)
    assert open_fds() == before


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_service_whose_port_is_taken_before_it_binds_is_started_again_elsewhere(
    monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Between the pick and the service's bind another program can take the port: the real
    dns-svc then says so and exits (its workers fail), and the helper stops it and starts it
    again on another port."""
    import signal

    import tests.support.dns as support

    with hold_port() as taken:
        assert taken.tcp is not None
        taken.tcp.listen()  # what another program would hold
        first = [[taken.port]]
        real = free_ports
        monkeypatch.setattr(support, "free_ports", lambda count: first.pop() if first else real(count))
        proc, log, [port] = await support.dns_process_on_free_ports(
            lambda port: (f"--listen=127.0.0.1:{port}", "--metadata-url=", f"--workers={workers}"), ready=workers
        )
        try:
            assert port != taken.port
            assert not first  # the taken port was tried first
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
            await log.finish()
    assert len(log.matching("event=listening", f"address=127.0.0.1:{port}")) == workers
