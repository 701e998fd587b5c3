"""DNS wire format without a full parse: the question, EDNS, and where the TTLs are.

The hot path never builds dnslib objects. It reads the question straight from the packet, looks
up a finished reply in a cache, patches the ID, the RD bit, the question's letter case and the
TTLs, and sends it. dnslib builds replies only on a miss and handles everything unusual.
"""

from __future__ import annotations

import struct

QTYPE_A, QTYPE_NS, QTYPE_CNAME, QTYPE_SOA, QTYPE_PTR = 1, 2, 5, 6, 12
QTYPE_TXT, QTYPE_AAAA, QTYPE_SRV, QTYPE_OPT = 16, 28, 33, 41
QTYPE_IXFR, QTYPE_AXFR, QTYPE_ANY = 251, 252, 255
CLASS_IN = 1

RCODE_NOERROR, RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NXDOMAIN, RCODE_NOTIMP, RCODE_REFUSED = 0, 1, 2, 3, 4, 5
RCODE_BADVERS = 16

FLAG_QR, FLAG_AA, FLAG_TC, FLAG_RD, FLAG_RA, FLAG_CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010

MAX_UDP_QUERY = 4096
# The EDNS UDP size we advertise in every OPT record we write (to clients and upstreams) and the
# default cap on a UDP reply: DNS Flag Day 2020's 1232, below the common 1280-byte IPv6 MTU minus
# headers, so that no reply of ours needs IP fragmentation.
EDNS_UDP_SIZE = 1232
_HEADER = struct.Struct("!HHHHHH")
_U16 = struct.Struct("!H")
_RR_FIXED = struct.Struct("!HHIH")


class WireError(ValueError):
    """A packet we cannot answer normally. ``rcode`` is what to answer, or None to drop it."""

    def __init__(self, message: str, rcode: int | None) -> None:
        super().__init__(message)
        self.rcode = rcode


class RawQuery:
    """One question read straight off the wire.

    A plain class rather than a dataclass: compiled, a dataclass's ``__init__`` is still the
    interpreted one ``dataclasses`` generates, and every query builds one of these."""

    __slots__ = (
        "do",
        "edns",
        "edns_version",
        "flags",
        "id",
        "key",
        "lower",
        "packet",
        "qclass",
        "qname",
        "qtype",
        "question_end",
        "udp_size",
    )

    def __init__(
        self,
        packet: bytes,
        id: int,
        flags: int,
        qname: bytes,
        qtype: int,
        qclass: int,
        question_end: int,
        edns: bool,
        udp_size: int,
        do: bool,
        edns_version: int,
    ) -> None:
        self.packet = packet
        self.id = id
        self.flags = flags
        self.qname = qname  # wire form as sent (letter case kept)
        self.qtype = qtype
        self.qclass = qclass
        self.question_end = question_end  # offset just past the question
        self.edns = edns
        self.udp_size = udp_size  # the reply budget over UDP: 512 without EDNS
        self.do = do
        self.edns_version = edns_version
        # Worked out at most once per query, however many steps ask (``lower_text``, ``cache_key``).
        self.lower: str | None = None
        self.key: tuple[object, ...] | None = None  # dns_svc.replies.CacheKey

    def text_name(self) -> str:
        return name_to_text(self.qname)

    def lower_text(self) -> str:
        """The question name as text, lower case, with its final dot: what the table is keyed by."""
        lower = self.lower
        if lower is None:
            lower = self.lower = name_to_text(self.qname).lower()
        return lower


def ascii_packet(raw: RawQuery) -> bytes:
    """The query with every byte >= 0x80 of its name replaced by ``-``, for dnslib, which cannot
    read such labels (they are legal DNS, and never a fleet name). Same length, same layout: the
    reply's question is put back to the original bytes (``with_question``)."""
    name = bytes(b if b < 0x80 else 0x2D for b in raw.qname)
    return raw.packet[:12] + name + raw.packet[12 + len(name) :]


def with_question(wire: bytes, raw: RawQuery) -> bytes:
    """``wire`` with the question name exactly as ``raw`` spelled it (same length)."""
    return wire[:2] + reply_tail(wire, raw.qname)


def reply_tail(wire: bytes, qname: bytes, bits: int = -1) -> bytes:
    """A reply after its two ID bytes, with the question name spelled ``qname`` (the same name,
    the same length: letter case is all that differs) and, with ``bits`` (a query's flags), the
    query's RD and CD bits instead of the reply's. The one splice of a reply to the question a
    client asked: the caller puts the client's ID in front."""
    if bits < 0:
        head = wire[2:4]
    else:
        head = (((wire[2] << 8 | wire[3]) & ~(FLAG_RD | FLAG_CD)) | (bits & (FLAG_RD | FLAG_CD))).to_bytes(2, "big")
    return head + wire[4:12] + qname + wire[12 + len(qname) :]


def name_to_text(wire: bytes) -> str:
    """The name as text with its final dot: each length byte turned into a dot, decoded once
    (bytes >= 0x80 escaped, as ``backslashreplace`` does)."""
    if not wire[0]:
        return "."
    text = bytearray(wire)
    i = 0
    n = text[0]
    while n:
        text[i] = 0x2E
        i += 1 + n
        n = text[i]
    text[i] = 0x2E
    return text[1 : i + 1].decode("ascii", "backslashreplace")  # what follows the name is not read


def parse_query(packet: bytes, udp_cap: int = 65535) -> RawQuery:  # noqa: C901 (one check per way a packet is malformed, inline on the hot path)
    """Read a query. Raises WireError with FORMERR/NOTIMP/BADVERS, or None when not worth a reply.
    ``udp_cap`` bounds the reply size over UDP whatever the client advertises (amplification)."""
    size = len(packet)
    if size < 12:
        raise WireError("shorter than a DNS header", None)
    qid, flags, qd, an, ns, ar = _HEADER.unpack_from(packet)
    if flags & FLAG_QR:
        raise WireError("a response, not a query", None)  # never answer answers: no reflection loops
    opcode = (flags >> 11) & 0xF
    if opcode != 0:
        raise WireError(f"opcode {opcode} not implemented", RCODE_NOTIMP)
    if qd != 1 or an or ns or ar > 1:
        raise WireError(f"expected one question and no records, got qd={qd} an={an} ns={ns} ar={ar}", RCODE_FORMERR)
    i = 12
    total = 0
    while True:
        if i >= size:
            raise WireError("question name runs past the packet", RCODE_FORMERR)
        n = packet[i]
        if n == 0:
            i += 1
            break
        if n > 63:
            raise WireError("compressed or oversized label in the question", RCODE_FORMERR)
        i += 1 + n
        total += n + 1
        if total > 254:
            raise WireError("question name longer than 255 bytes", RCODE_FORMERR)
    if i + 4 > size:
        raise WireError("question truncated", RCODE_FORMERR)
    qname = packet[12:i]
    qtype, qclass = struct.unpack_from("!HH", packet, i)
    end = i + 4
    edns, udp_size, do, version = False, 512, False, 0
    if ar:
        if end + 11 > size or packet[end] != 0:
            raise WireError("additional record is not an OPT record", RCODE_FORMERR)
        rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(packet, end + 1)
        if rtype != QTYPE_OPT or end + 11 + rdlen != size:
            raise WireError("malformed OPT record", RCODE_FORMERR)
        j = end + 11
        while j < size:  # the options must fill the record exactly: dnslib raises on a short one
            if j + 4 > size:
                raise WireError("EDNS option header cut short", RCODE_FORMERR)
            j += 4 + (packet[j + 2] << 8 | packet[j + 3])
            if j > size:
                raise WireError("EDNS option longer than its OPT record", RCODE_FORMERR)
        edns, udp_size = True, min(max(rclass, 512), udp_cap)
        version = (ttl >> 16) & 0xFF
        do = bool(ttl & 0x8000)
    elif end != size:
        raise WireError("trailing bytes after the question", RCODE_FORMERR)
    return RawQuery(packet, qid, flags, qname, qtype, qclass, end, edns, udp_size, do, version)


def skip_name(packet: bytes, i: int) -> int:
    """Offset just past the (possibly compressed) name at ``i``."""
    while True:
        n = packet[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        if n > 63:
            raise ValueError("bad label")
        i += 1 + n


class ReplyLayout:
    """Where the patchable parts of a reply are: TTL offsets and values, the minimum TTL,
    and a run of equal-sized address records that can be rotated. (A plain class, as
    ``RawQuery`` is: one is built for every upstream reply.)"""

    __slots__ = ("answers", "min_ttl", "negative_ttl", "rcode", "rotate", "truncated", "ttl_offsets", "ttls")

    def __init__(
        self,
        rcode: int,
        answers: int,
        ttl_offsets: tuple[int, ...],
        ttls: tuple[int, ...],
        min_ttl: int | None,
        negative_ttl: int | None,
        rotate: tuple[int, int, int] | None,
        truncated: bool,
    ) -> None:
        self.rcode = rcode
        self.answers = answers
        self.ttl_offsets = ttl_offsets
        self.ttls = ttls
        self.min_ttl = min_ttl  # None: no records (negative answer without SOA)
        self.negative_ttl = negative_ttl  # RFC 2308: min(SOA TTL, SOA MINIMUM) from the authority section
        self.rotate = rotate  # (start, count, size of one record)
        self.truncated = truncated


def layout(packet: bytes) -> ReplyLayout:
    """Walk a reply's sections and note every TTL (except OPT's, which is not a TTL). Raises
    ValueError, and only that, for a reply that cannot be walked to its end."""
    try:
        return _layout(packet)
    except (IndexError, struct.error) as exc:
        raise ValueError(f"reply cut short: {exc}") from None


def _layout(packet: bytes) -> ReplyLayout:
    _, flags, qd, an, ns, ar = _HEADER.unpack_from(packet)
    i = 12
    for _ in range(qd):
        i = skip_name(packet, i) + 4
    offsets: list[int] = []
    ttls: list[int] = []
    negative: int | None = None
    run_start, run_count, run_size, best = -1, 0, 0, None
    packet_end = len(packet)
    for index in range(an + ns + ar):
        start = i
        i = skip_name(packet, i)
        if i + 10 > packet_end:
            raise ValueError("record header cut short")
        # read in place: ``struct.unpack_from`` and the tuple it builds cost more than the walk
        rtype = packet[i] << 8 | packet[i + 1]
        ttl = packet[i + 4] << 24 | packet[i + 5] << 16 | packet[i + 6] << 8 | packet[i + 7]
        rdlen = packet[i + 8] << 8 | packet[i + 9]
        ttl_at = i + 4
        i += 10 + rdlen
        if i > packet_end:
            raise ValueError("record runs past the packet")
        if rtype == QTYPE_OPT:
            continue
        offsets.append(ttl_at)
        ttls.append(ttl)
        if an <= index < an + ns and rtype == QTYPE_SOA and rdlen >= 20:
            minimum = struct.unpack_from("!I", packet, i - 4)[0]
            negative = min(ttl, minimum)
        if index < an and rtype in (QTYPE_A, QTYPE_AAAA):
            size = i - start
            if run_count and size == run_size and packet[start : start + 2] == packet[run_start : run_start + 2]:
                run_count += 1
            else:
                run_start, run_count, run_size = start, 1, size
            if run_count >= 2:
                best = (run_start, run_count, run_size)
        else:
            run_count = 0
    return ReplyLayout(
        flags & 0xF,
        an,
        tuple(offsets),
        tuple(ttls),
        min_ttl(ttls, an),
        negative,
        best,
        bool(flags & FLAG_TC),
    )


def cap_ttls(wire: bytes, lay: ReplyLayout, cap: int) -> tuple[bytes, ReplyLayout]:
    """``wire`` with every TTL above ``cap`` lowered to it (unbound's cache-max-ttl, dnsmasq's
    --max-cache-ttl): a client must not keep an answer longer than we would."""
    if not any(ttl > cap for ttl in lay.ttls):
        return wire, lay
    buf = bytearray(wire)
    ttls = tuple(min(ttl, cap) for ttl in lay.ttls)
    for offset, ttl in zip(lay.ttl_offsets, ttls, strict=True):
        struct.pack_into("!I", buf, offset, ttl)
    negative = None if lay.negative_ttl is None else min(lay.negative_ttl, cap)
    return bytes(buf), ReplyLayout(
        lay.rcode, lay.answers, lay.ttl_offsets, ttls, min_ttl(ttls, lay.answers), negative, lay.rotate, lay.truncated
    )


def min_ttl(ttls: list[int] | tuple[int, ...], answers: int) -> int | None:
    """The smallest TTL of the answer section (the first ``answers`` of ``ttls``, OPT's left out),
    or of every record when there are no answers; None when there are no records at all."""
    counted = ttls[:answers] if answers else ttls
    return min(counted) if counted else None


def header_only_reply(query: RawQuery, rcode: int, *, tc: bool = False, aa: bool = False, ra: bool = True) -> bytes:
    """A reply with the question and no records (REFUSED, SERVFAIL, FORMERR, truncation)."""
    flags = FLAG_QR | (query.flags & (FLAG_RD | FLAG_CD)) | (rcode & 0xF)
    if tc:
        flags |= FLAG_TC
    if aa:
        flags |= FLAG_AA
    if ra:
        flags |= FLAG_RA
    opt = b""
    if query.edns:
        ext = (rcode >> 4) & 0xFF
        opt = b"\x00" + struct.pack("!HHIH", QTYPE_OPT, EDNS_UDP_SIZE, ext << 24, 0)
    head = _HEADER.pack(query.id, flags, 1, 0, 0, 1 if opt else 0)
    return head + query.packet[12 : query.question_end] + opt


def servfail(query: RawQuery) -> bytes:
    """SERVFAIL with the question and no records: the one way we build it (every upstream
    failed, nothing answered, a reply too big even for TCP, a query we could not finish)."""
    return header_only_reply(query, RCODE_SERVFAIL)


def error_reply(packet: bytes, rcode: int) -> bytes | None:
    """FORMERR/NOTIMP for a packet we could not read as a query: echo the ID, no question."""
    if len(packet) < 12:
        return None
    qid, flags = struct.unpack_from("!HH", packet)
    out_flags = FLAG_QR | (flags & 0x7800) | (flags & FLAG_RD) | (rcode & 0xF)
    return _HEADER.pack(qid, out_flags, 0, 0, 0, 0)
