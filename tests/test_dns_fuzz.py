"""Fuzzing the two places where bytes from outside enter: client queries (``parse_query`` and
everything behind it, up to the reply) and upstream replies (``layout`` and the cached-reply
rendering). Seeds live in ``tests/fuzz/``; hypothesis mutates them and adds its own. Bounded
to a few seconds: a regression finder, not a campaign."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import dns.message
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dns_svc.chain import Pending
from dns_svc.replies import CachedReply
from dns_svc.server import DnsServer
from dns_svc.settings import DnsSettings
from dns_svc.wire import RawQuery, WireError, layout, name_to_text, parse_query

FUZZ = Path(__file__).parent / "fuzz"
BOUNDED = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def corpus(name: str) -> list[bytes]:
    return [
        bytes.fromhex(line)
        for line in (FUZZ / name).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def mutated(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    """A seed with a few bytes flipped, cut short or lengthened, or plain random bytes."""

    def mutate(seed: bytes, edits: list[tuple[int, int]], cut: int, tail: bytes) -> bytes:
        out = bytearray(seed)
        for at, value in edits:
            if out:
                out[at % len(out)] = value
        return bytes(out[: max(cut, 0) or len(out)]) + tail

    edits = st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=6)
    seeded = st.builds(mutate, st.sampled_from(seeds), edits, st.integers(-8, 300), st.binary(max_size=12))
    return st.one_of(seeded, st.binary(max_size=600))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[asyncio.AbstractEventLoop, DnsServer]]:
    answers = tmp_path / "answers.json"
    answers.write_text(
        json.dumps(
            {
                "default": {
                    "authoritative": ["rancher.internal"],
                    "search": ["rancher.internal"],
                    "a": {"web.shop.rancher.internal.": {"answer": [f"10.1.0.{i}" for i in range(1, 90)]}},
                    "cname": {"alias.rancher.internal.": {"answer": "web.shop.rancher.internal."}},
                    "txt": {"web.shop.rancher.internal.": {"answer": ["tier=front"]}},
                },
            }
        )
    )
    loop = asyncio.new_event_loop()
    dns_server = DnsServer(DnsSettings(host="127.0.0.1", port=0, state_file="", answers=str(answers)))
    loop.run_until_complete(dns_server.start())
    try:
        yield loop, dns_server
    finally:
        loop.run_until_complete(dns_server.close())
        loop.close()


@given(data=mutated(corpus("queries.txt")))
@BOUNDED
def test_parse_query_raises_only_wire_errors(data: bytes) -> None:
    try:
        raw = parse_query(data, 1232)
    except WireError:
        return
    assert isinstance(raw, RawQuery)
    assert raw.question_end <= len(data)
    assert raw.udp_size <= 1232


def test_any_query_gets_a_well_formed_reply_or_none(server: tuple[asyncio.AbstractEventLoop, DnsServer]) -> None:
    loop, dns_server = server
    dispatcher = dns_server.dispatcher

    async def answer(data: bytes, transport: str) -> bytes | None:
        outcome = dispatcher.immediate(data, "127.0.0.9", transport)
        return await dispatcher.finish(outcome) if isinstance(outcome, Pending) else outcome

    @given(data=mutated(corpus("queries.txt")), tcp=st.booleans())
    @BOUNDED
    def check(data: bytes, tcp: bool) -> None:
        reply = loop.run_until_complete(answer(data, "tcp" if tcp else "udp"))
        assert dispatcher.failed.total == 0  # nothing reached the catch-all
        if reply is None:
            return
        assert reply[:2] == data[:2]
        assert reply[2] & 0x80
        assert len(reply) <= (65535 if tcp else 1232)
        dns.message.from_wire(reply, question_only=True)

    check()


@given(data=mutated(corpus("replies.txt")), question=st.sampled_from(corpus("queries.txt")[:4]))
@BOUNDED
def test_an_upstream_reply_is_walked_or_refused_never_half_read(data: bytes, question: bytes) -> None:
    try:
        lay = layout(data)
    except ValueError:
        return  # refused: never cached, the client gets SERVFAIL
    if len(data) < 12 or data[4:6] != b"\x00\x01":
        return
    entry = CachedReply(data, lay, 0.0, 60.0, True)
    query = parse_query(question)
    for now in (0.0, 5.0, 59.0):
        assert entry.render(query, now, 1232)[:2] == question[:2]
    assert entry.render_stale(query, 512)[:2] == question[:2]


@BOUNDED
@given(st.lists(st.binary(min_size=1, max_size=63), max_size=8), st.binary(max_size=8))
def test_a_wire_name_reads_as_its_labels_joined_by_dots(labels: list[bytes], after: bytes) -> None:
    """``name_to_text`` turns length bytes into dots in place: any label bytes (dots, backslashes,
    bytes >= 0x80, a length byte that is itself 0x2E) read as the labels joined one by one, and
    nothing after the name's final zero (the rest of a packet) is read."""
    wire = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00" + after
    expected = "".join(label.decode("ascii", "backslashreplace") + "." for label in labels) or "."
    assert name_to_text(wire) == expected
