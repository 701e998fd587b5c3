"""Fuzzing the two places where bytes from outside enter: client queries (``parse_query`` and
everything behind it, up to the reply) and upstream replies (``layout`` and the cached-reply
rendering). Seeds live in ``tests/fuzz/``; hypothesis mutates them and adds its own. Bounded
to a few seconds: a regression finder, not a campaign."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dns_svc.chain import Pending
from dns_svc.replies import CachedReply
from dns_svc.server import DnsServer
from dns_svc.settings import DnsSettings
from dns_svc.wire import FLAG_CD, FLAG_RD, RawQuery, WireError, layout, name_to_text, parse_query, skip_name

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


def question_for(reply: bytes, qid: int, bits: int, case: list[bool]) -> bytes | None:
    """A query asking exactly the reply's question (the cache serves a reply only to that
    question), with its own ID, RD/CD bits and letter case; None when the reply's question is
    not one a client could send (a compression pointer, cut short)."""
    try:
        end = skip_name(reply, 12) + 4
    except (IndexError, ValueError):
        return None
    name = bytearray(reply[12 : end - 4])
    if end > len(reply) or name[-1:] != b"\x00":
        return None  # cut short, or a compression pointer
    for i, swap in enumerate(case[: len(name)]):
        if swap and chr(name[i]).isascii() and chr(name[i]).isalpha():
            name[i] ^= 0x20
    header = qid.to_bytes(2, "big") + bits.to_bytes(2, "big") + b"\x00\x01\x00\x00\x00\x00\x00\x00"
    return header + bytes(name) + reply[end - 4 : end]


def aged(ttl: int, elapsed: int | None) -> int:
    """A TTL ``elapsed`` seconds on (never below 0); stale (``None``): 30 s, as served."""
    return 30 if elapsed is None else max(ttl - elapsed, 0)


def same_records(one: bytes, other: bytes) -> bool:
    """Whether two packets that differ only in their first four bytes read as the same records:
    not when a compression pointer points into the header (a reply can say that; no upstream
    does, and rendering it for a client gives the pointer the client's ID and flags)."""
    try:
        first, second = (dns.message.from_wire(p, ignore_trailing=True) for p in (one, other))
    except Exception:
        return False
    return sections(first, int) == sections(second, int)


def sections(message: dns.message.Message, ttl: Callable[[int], int]) -> list[list[str]]:
    """Each section's rrsets, in an order of their own: rotating the address records reorders
    records, and so rrsets, within the answer section, which a DNS reply is free to. Letter case
    aside: names compressed to the question take the question's spelling, as they should."""
    return [
        sorted(
            repr((rrset.name, rrset.rdclass, rrset.rdtype, ttl(rrset.ttl), sorted(map(str, rrset)))).lower()
            for rrset in section
        )
        for section in (message.answer, message.authority, message.additional)
    ]


@given(
    data=mutated(corpus("replies.txt")),
    qid=st.integers(0, 0xFFFF),
    bits=st.sampled_from([0, FLAG_RD, FLAG_CD, FLAG_RD | FLAG_CD]),
    case=st.lists(st.booleans(), max_size=40),
)
@example(  # the second A record's owner points at offset 0, into the header (found by this test)
    data=bytes.fromhex(
        "0b758580000100020000000003777777076578616d706c6504746573740000010001c00c000100010000012c0004"
        "c0000201c000000100010000012c0004c0000202"
    ),
    qid=8448,
    bits=0,
    case=[],
)
@BOUNDED
def test_an_upstream_reply_is_walked_or_refused_never_half_read(
    data: bytes, qid: int, bits: int, case: list[bool]
) -> None:
    """A reply ``layout`` walks renders, read back by dnspython (an independent parser), as the
    same reply: the query's ID, RD/CD bits and question spelling, the upstream's other flags and
    rcode, the same records with their TTLs aged (or all ``ttl`` when stale)."""
    try:
        lay = layout(data)
    except ValueError:
        return  # refused: never cached, the client gets SERVFAIL
    if len(data) < 12 or data[4:6] != b"\x00\x01":
        return
    question = question_for(data, qid, bits, case)
    if question is None:
        return
    query = parse_query(question)
    entry = CachedReply(data, lay, 0.0, 60.0, True)
    try:
        upstream = dns.message.from_wire(data, ignore_trailing=True)
    except Exception:
        upstream = None  # records dnspython will not read: the header and question still must be right
    asked = dns.message.from_wire(question)
    renders: list[tuple[bytes, Callable[[int], int]]] = [
        (entry.render(query, now, 65535), functools.partial(aged, elapsed=int(now))) for now in (0.0, 5.0, 59.0)
    ]
    renders.append((entry.render_stale(query, 65535, 30), functools.partial(aged, elapsed=None)))
    for wire, ttl in renders:
        if upstream is not None and not same_records(data, wire[:4] + data[4:]):
            upstream = None  # a name pointing into the header: its meaning changes with the ID and flags
        assert wire[:2] == question[:2]
        flags = int.from_bytes(wire[2:4], "big")
        assert flags & (FLAG_RD | FLAG_CD) == bits
        assert flags & ~(FLAG_RD | FLAG_CD) == int.from_bytes(data[2:4], "big") & ~(FLAG_RD | FLAG_CD)
        assert wire[12 : query.question_end] == question[12:]  # the question exactly as asked
        assert len(wire) == len(data)
        if upstream is None:
            continue
        got = dns.message.from_wire(wire, ignore_trailing=True)
        assert got.id == qid
        assert got.rcode() == upstream.rcode()
        assert [q.to_text() for q in got.question] == [q.to_text() for q in asked.question]
        assert sections(got, lambda t: t) == sections(upstream, ttl)
    assert entry.render(query, 0.0, 512)[:2] == question[:2]


@BOUNDED
@given(st.lists(st.binary(min_size=1, max_size=63), max_size=8), st.binary(max_size=8))
def test_a_wire_name_reads_as_its_labels_joined_by_dots(labels: list[bytes], after: bytes) -> None:
    """``name_to_text`` turns length bytes into dots in place: any label bytes (dots, backslashes,
    bytes >= 0x80, a length byte that is itself 0x2E) read as the labels joined one by one, and
    nothing after the name's final zero (the rest of a packet) is read."""
    wire = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00" + after
    expected = "".join(label.decode("ascii", "backslashreplace") + "." for label in labels) or "."
    assert name_to_text(wire) == expected
