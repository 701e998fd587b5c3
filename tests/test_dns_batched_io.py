"""The listening UDP socket's batched I/O (``recvmmsg``/``sendmmsg``, ``dns_svc/_mmsg.c``) and its
fallback (``recvfrom``/``sendto``): every good query of a batch answered whatever else is in it,
replies in the order the queries came, and none lost when the kernel takes fewer than offered."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest

from dns_svc import mmsg
from dns_svc.transport import UdpListener
from tests.support.dns import addresses, run_dns

NAMES = {f"n{i}.rancher.internal.": f"10.1.0.{i}" for i in range(1, 9)}


@pytest.fixture
def answers_file(tmp_path: Path) -> Path:
    path = tmp_path / "answers.json"
    path.write_text(
        json.dumps(
            {
                "default": {
                    "authoritative": ["rancher.internal"],
                    "a": {name: {"answer": [ip], "ttl": 30} for name, ip in NAMES.items()},
                }
            }
        )
    )
    return path


def require_mmsg(monkeypatch: pytest.MonkeyPatch) -> None:
    """The extension's build must exist (scripts/compile.py); a skip without it, a failure in CI."""
    monkeypatch.delenv(mmsg.OFF_ENV, raising=False)
    if mmsg.load() is None:
        message = f"no recvmmsg/sendmmsg build for this source ({mmsg.state()}): run scripts/compile.py"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(params=["mmsg", "recvfrom"])
def udp_io(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both paths: the extension and the fallback."""
    if request.param == "recvfrom":
        monkeypatch.setenv(mmsg.OFF_ENV, "1")
    else:
        require_mmsg(monkeypatch)
    return str(request.param)


def query(qid: int, name: str) -> bytes:
    msg = dns.message.make_query(name, "A")
    msg.id = qid
    return msg.to_wire()


def client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def replies(sock: socket.socket, count: int, seconds: float = 5.0) -> list[dns.message.Message]:
    """``count`` replies in the order they arrive (fewer when the time is up)."""
    loop = asyncio.get_running_loop()
    out: list[dns.message.Message] = []
    try:
        async with asyncio.timeout(seconds):
            while len(out) < count:
                out.append(dns.message.from_wire(await loop.sock_recv(sock, 4096)))
    except TimeoutError:
        pass
    return out


def listener_of(server: Any) -> UdpListener:
    listener = server._udp
    assert isinstance(listener, UdpListener)
    return listener


def counting_recv(listener: UdpListener) -> list[int]:
    """Wraps the listener's recvmmsg: the datagrams each call returned."""
    counts: list[int] = []
    real = listener._recv_into

    def recv_into(fd: int, datas: list[bytes], addrs: list[Any], count: int, size: int) -> int:
        got = real(fd, datas, addrs, count, size)
        counts.append(got)
        return got

    listener._recv_into = recv_into
    return counts


GARBAGE = [
    b"\x12",  # not even a header: no reply
    struct.pack(">HHHHHH", 900, 0x0100, 1, 0, 0, 0) + b"\x07trunc",  # a question cut short: FORMERR
    struct.pack(">HHHHHH", 901, 0x8100, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01",  # a reply, not a query: no reply
]


async def test_a_batch_with_malformed_datagrams_in_the_middle_answers_every_good_query(
    answers_file: Path, udp_io: str
) -> None:
    """Good queries before, between and after garbage, all sent from one socket before the
    server reads any (it runs on this loop, so they sit in its socket buffer together): each
    good one is answered, in the order sent, and with recvmmsg they came in one call."""
    async with run_dns(answers=str(answers_file)) as server:
        listener = listener_of(server)
        assert listener.batched is (udp_io == "mmsg")
        counts = counting_recv(listener) if listener.batched else []
        names = list(NAMES)
        packets = [query(1, names[0]), query(2, names[1])]
        packets += [GARBAGE[0], query(3, names[2]), GARBAGE[1], query(4, names[3]), GARBAGE[2]]
        packets += [query(5 + i, name) for i, name in enumerate(names[4:])]
        with client() as sock:
            for packet in packets:
                sock.sendto(packet, server.address)  # no await in between: the server reads none yet
            got = await replies(sock, 9)
        good = [r for r in got if r.id != 900]
        assert [r.id for r in good] == list(range(1, 9))  # every good query, in the order sent
        for r, name in zip(good, names, strict=True):
            assert r.rcode() == dns.rcode.NOERROR
            assert addresses(r) == [NAMES[name]]
        assert [r.rcode() for r in got if r.id == 900] == [dns.rcode.FORMERR]
        if listener.batched:
            assert max(counts) == len(packets)  # one recvmmsg took the whole batch
            assert listener.send_errors == listener.send_drops == 0


async def test_a_lone_query_is_answered_at_once(answers_file: Path, udp_io: str) -> None:
    """One query in flight, then another: each is answered on its own, never held for a batch."""
    async with run_dns(answers=str(answers_file)) as server:
        counts = counting_recv(listener_of(server)) if listener_of(server).batched else []
        with client() as sock:
            for qid, name in enumerate(NAMES, start=1):
                sock.sendto(query(qid, name), server.address)
                [reply] = await replies(sock, 1)
                assert reply.id == qid
                assert addresses(reply) == [NAMES[name]]
        if counts:
            assert max(counts) == 1


def scripted_send(listener: UdpListener, script: Iterator[int | None]) -> list[int]:
    """Wraps the listener's sendmmsg: each call takes the next step of ``script``: None sends one
    reply only (a partial sendmmsg), an errno fails the call with it. The starts of the calls."""
    real = listener._send_from
    starts: list[int] = []

    def send_from(fd: int, replies: list[bytes], addrs: list[Any], start: int) -> int:
        starts.append(start)
        step = next(script, None)
        if step is not None:
            return -step
        return real(fd, replies[: start + 1], addrs[: start + 1], start)

    listener._send_from = send_from
    return starts


async def test_partial_sends_eagain_and_enobufs_lose_no_reply(
    answers_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel refuses the whole batch (EAGAIN, then ENOBUFS: the replies wait for room), then
    takes one reply per call, and one reply fails for its own reason (EPERM): every other reply
    arrives, in order."""
    require_mmsg(monkeypatch)
    async with run_dns(answers=str(answers_file)) as server:
        listener = listener_of(server)
        names = list(NAMES)
        script = iter([errno.EAGAIN, errno.ENOBUFS, None, None, errno.EPERM])
        starts = scripted_send(listener, script)
        with client() as sock:
            for qid, name in enumerate(names, start=1):
                sock.sendto(query(qid, name), server.address)
            got = await replies(sock, len(names) - 1)
            assert not await replies(sock, 1, seconds=0.2)  # nothing more comes
        assert [r.id for r in got] == [1, 2, 4, 5, 6, 7, 8]  # the third failed on its own
        assert starts[:6] == [0, 0, 0, 1, 2, 3]
        assert listener.send_errors == 1
        assert listener.send_drops == 0
        assert not listener._waiting


async def test_replies_beyond_the_backlog_are_dropped_and_counted(
    answers_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the socket has no room, at most ``BACKLOG`` replies wait; the newest beyond are
    dropped (the client asks again) and counted, the waiting ones go out once there is room."""
    require_mmsg(monkeypatch)
    async with run_dns(answers=str(answers_file)) as server:
        listener = listener_of(server)
        listener.BACKLOG = 3
        scripted_send(listener, iter([errno.EAGAIN]))
        with client() as sock:
            for qid, name in enumerate(NAMES, start=1):
                sock.sendto(query(qid, name), server.address)
            got = await replies(sock, 3)
            assert not await replies(sock, 1, seconds=0.2)
        assert [r.id for r in got] == [1, 2, 3]
        assert listener.send_drops == len(NAMES) - 3


def test_a_build_of_another_source_is_not_loaded(tmp_path: Path) -> None:
    """Like the mypyc build: only a build of this very source is used; none, or a stale one,
    and the listener uses recvfrom/sendto."""
    assert mmsg.find(tmp_path / "never-built") == (None, "none")
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "manifest.json").write_text(json.dumps({"digest": "0" * 64, "file": "_mmsg.so"}))
    assert mmsg.find(stale) == (None, "stale")
    built = mmsg.build_dir()
    if (built / "manifest.json").is_file() and mmsg.find(built)[1] == "mmsg":
        copy = tmp_path / "copy"
        shutil.copytree(built, copy)
        native, state = mmsg.find(copy)
        assert state == "mmsg"
        assert native is not None
        assert native.max_batch >= 16


def test_the_variable_forces_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(mmsg.OFF_ENV, "1")
    assert mmsg.load() is None
    assert mmsg.state() == "off"
