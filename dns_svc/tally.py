"""What the DNS service answered, kept as plain integers: the hot path adds to a dict entry and
a list slot per reply (no lock, no metric object), and ``/metrics`` reads them at scrape time.

A response is counted by transport, by where its answer came from (packet cache, client cache,
local answers, global cache, stale, upstream, ...), by question type (the common ones by name,
the rest as ``other``, so a client cannot grow the label set) and by rcode; its duration, from
the query read to the reply ready, goes into a histogram per transport and source.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from typing import Final

from dns_svc.wire import name_to_text
from shared.logs import log_event

# Upper bounds in seconds, CoreDNS's request-duration buckets from 250 us up. Final, like ``clock``:
# compiled, a Final name is a C static, not a lookup in the module's dict on every reply.
BUCKETS: Final = (
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.004,
    0.008,
    0.016,
    0.032,
    0.064,
    0.128,
    0.256,
    0.512,
    1.024,
    2.048,
    4.096,
    8.192,
)
QTYPE_NAMES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    35: "NAPTR",
    43: "DS",
    48: "DNSKEY",
    64: "SVCB",
    65: "HTTPS",
    255: "ANY",
    257: "CAA",
}
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
clock: Final = time.perf_counter
query_log = logging.getLogger("dns.query")


class Durations:
    """One histogram: a count per bucket (the last one for anything slower) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (upper bound, count at or below it), ending with +Inf."""
        out, running = [], 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class ResponseTally:
    """One slot per (transport, source, type, rcode): ``[seconds in total, count per bucket...]``.
    A reply costs one dict lookup and two list updates; counts and histograms are summed from
    the slots when scraped."""

    def __init__(self, log_queries: bool = False) -> None:
        self.slots: dict[tuple[str, str, int, int], list[float]] = {}
        self.log_queries = log_queries

    def slot(self, transport: str, source: str, qtype: int, rcode: int) -> list[float]:
        """The slot replies of this kind are counted in; a caller that answers the same kind again
        and again (a packet-cache entry) may keep it and count with ``observe``."""
        key = (transport, source, qtype if qtype in QTYPE_NAMES else 0, rcode)
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = [0.0] * (len(BUCKETS) + 2)
        return slot

    def note(self, transport: str, source: str, qtype: int, reply: bytes, started: float, client: str) -> None:
        rcode = reply[3] & 0xF if len(reply) > 3 else 0
        elapsed = self.observe(self.slot(transport, source, qtype, rcode), started)
        if self.log_queries:
            _log_query(transport, source, qtype, rcode, reply, elapsed, client)

    @staticmethod
    def observe(slot: list[float], started: float) -> float:
        """One reply ready now, for a query read at ``started``, counted in ``slot``; its duration."""
        elapsed = clock() - started
        slot[0] += elapsed
        i = 1  # bisect_left by hand: a reply is nearly always in the first bucket or two
        for bound in BUCKETS:
            if elapsed <= bound:
                break
            i += 1
        slot[i] += 1
        return elapsed

    @property
    def responses(self) -> dict[tuple[str, str, int, int], int]:
        return {key: int(sum(slot[1:])) for key, slot in list(self.slots.items())}

    @property
    def durations(self) -> dict[tuple[str, str], Durations]:
        out: dict[tuple[str, str], Durations] = {}
        for (transport, source, _qtype, _rcode), slot in list(self.slots.items()):
            histogram = out.get((transport, source))
            if histogram is None:
                histogram = out[(transport, source)] = Durations()
            histogram.total += slot[0]
            for i, count in enumerate(slot[1:]):
                histogram.counts[i] += int(count)
        return out

    def total(self, source: str | None = None) -> int:
        return sum(n for (_t, s, _q, _r), n in self.responses.items() if source is None or s == source)


def _log_query(transport: str, source: str, qtype: int, rcode: int, reply: bytes, elapsed: float, client: str) -> None:
    """One debug line per query (``--log-queries``, like dnsmasq's), read from the reply's
    question: a debugging aid that costs throughput, off by default."""
    log_event(
        query_log,
        logging.DEBUG,
        "query",
        client=client,
        proto=transport,
        name=_question_name(reply),
        type=QTYPE_NAMES.get(qtype, str(qtype)),
        rcode=rcode_label(rcode),
        source=source,
        answers=int.from_bytes(reply[6:8], "big") if len(reply) >= 8 else 0,
        duration_ms=round(elapsed * 1000, 3),
    )


def _question_name(reply: bytes) -> str:
    if len(reply) < 13 or reply[4:6] == b"\x00\x00":
        return "-"  # no question (an error reply to a packet we could not read)
    try:
        return name_to_text(reply[12:])
    except IndexError:
        return "-"


def qtype_label(qtype: int) -> str:
    return QTYPE_NAMES.get(qtype, "other")


def rcode_label(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, str(rcode))
