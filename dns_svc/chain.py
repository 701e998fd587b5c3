"""The resolver chain: each step answers a query itself or hands it to the next one.

The order is fixed in one place (``server.build_chain``) and reads as the data flow:
per-client cache -> local answers -> global cache -> authority (NXDOMAIN) -> upstream.
A step returns an ``Answer``: finished wire bytes plus what produced them, so the caches above
know what they may keep.

A step's ``resolve`` is "look; answer or call the next step; look at the answer on its way back".
Steps also offer the two halves in plain code, ``passes`` and ``answered``, so that a query every
step would pass on can be relayed by the last step with callbacks instead of coroutines
(``Chain.relay``): the common cache miss then costs a fraction of the CPU (bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dnslib import RR, DNSRecord

from dns_svc.answers import AnswersTable, ClientView, Upstream
from dns_svc.wire import RCODE_SERVFAIL, RawQuery, ReplyLayout, ascii_packet, header_only_reply


class Source(enum.Enum):
    LOCAL = "local"  # from the answers table: cached per client until the answers change
    AUTHORITY = "authority"  # NXDOMAIN/NODATA for a name in our zone: same lifetime as LOCAL
    UPSTREAM = "upstream"  # relayed from an upstream server: global cache, by its TTL
    FAILURE = "failure"  # every upstream failed: SERVFAIL, cached for a few seconds at most
    REFUSED = "refused"  # recursion not allowed for this client: never cached
    STALE = "stale"  # an expired upstream answer served while the upstreams fail (RFC 8767)
    GATHER = "gather"  # merged from several clusters' answers: global cache, like UPSTREAM
    CLIENT_CACHE = "client_cache"  # a LOCAL or AUTHORITY answer served again from the client cache
    GLOBAL_CACHE = "global_cache"  # an UPSTREAM or GATHER answer served again from the global cache


@dataclass(slots=True)
class Answer:
    wire: bytes
    source: Source
    countdown: bool = True  # False: authoritative data, served with its full TTL every time
    layout: ReplyLayout | None = None  # the reply walked already (upstream replies are, once)


@dataclass(slots=True)
class Query:
    """One client question on its way through the chain. Steps may only set the two notes below."""

    raw: RawQuery
    client_ip: str
    transport: str
    table: AnswersTable
    view: ClientView
    recursion_allowed: bool
    skip_local: bool = False  # set by the client cache: this name is known not to be local
    shared_answer: bool = False  # set by local answers: the reply is the same for every client
    generation: int = -1  # set by the client cache: the answers generation it looked at
    built_from: tuple[str, ...] = ()  # set by local answers: the names it read
    # A relayed query's way back (``Chain.relay``): who gets the answer, and what they need with it.
    reply_to: Callable[[Query, Answer | None], None] | None = None
    context: Any = None
    # Set by a step that can answer if the steps below take too long (serve-stale): a relayed
    # query gets ``fallback(query)`` after ``fallback_after`` seconds, and the real answer still
    # comes up through ``answered`` to refresh the caches.
    fallback: Callable[[Query], Answer] | None = None
    fallback_after: float = 0.0
    timer: Any = None
    started: float = 0.0  # when the query was read (perf_counter), for its duration
    _request: Any = field(default=None, repr=False)

    @property
    def request(self) -> DNSRecord:
        """The full dnslib parse, done only when a step needs it (cache misses)."""
        if self._request is None:
            raw = self.raw
            self._request = DNSRecord.parse(raw.packet if raw.qname.isascii() else ascii_packet(raw))
        return self._request


CallNext = Callable[[Query], Awaitable[Answer]]
Done = Callable[["Query", Answer | None], None]
# What steps may ask of the upstreams without knowing the upstream step: resolve a name a local
# CNAME points to (``Chase``), or forward a query they built to given servers (``Forwarder``).
Chase = Callable[[Query, str, int], Awaitable["list[RR] | None"]]


class Forwarder(Protocol):
    async def forward_packet(self, packet: bytes, upstreams: Sequence[Upstream]) -> bytes | None: ...


class Step:
    """A step of the chain. The defaults are the safe ones: a step that does not say it passes a
    query on is assumed to answer it, so nothing is relayed past it."""

    name = "step"

    async def resolve(self, query: Query, call_next: CallNext) -> Answer:
        raise NotImplementedError

    def passes(self, query: Query) -> bool:
        """True when ``resolve`` would hand ``query`` on without answering it (decided without waiting)."""
        return False

    def answered(self, query: Query, answer: Answer) -> Answer:
        """What ``resolve`` does with an answer from below, and the answer to pass up (the same
        one, or one the step has instead); called bottom-up after a relay."""
        return answer

    def relay(self, query: Query, done: Done) -> bool:
        """The last step only: answer ``query`` later through ``done(query, answer)`` (answer
        None: run the chain after all) and return True, or return False at once when it cannot."""
        return False


class Chain:
    def __init__(self, steps: Sequence[Step], *, after_local: Step | None = None) -> None:
        self.steps = tuple(steps)
        # Where a query starts that the client cache knows is not local (it skips the client cache
        # and the local step): the index of ``after_local``, given by whoever orders the steps.
        self.after_local = self.steps.index(after_local) if after_local is not None else 0
        self._upper = self.steps[:-1]
        self._upper_reversed = tuple(reversed(self._upper))
        self._finish: Done = self._finished  # one bound method, not one closure per query

    async def resolve(self, query: Query, start: int = 0) -> Answer:
        """Run the chain, from step ``start`` when the steps above it are known to pass."""
        return await self._call(start, query)

    def relay(self, query: Query) -> bool:
        """The chain in plain code, for a query every step above the last one passes on: the last
        step answers through a callback, the steps above see the answer bottom-up, as they
        would after ``call_next``, then ``query.reply_to`` gets it. False (and nothing sent)
        when some step would answer itself."""
        for step in self._upper:
            if not step.passes(query):
                return False
        if not self.steps[-1].relay(query, self._finish):
            return False
        if query.fallback is not None and query.reply_to is not None:
            query.timer = asyncio.get_running_loop().call_later(query.fallback_after, self._fall_back, query)
        return True

    @staticmethod
    def _fall_back(query: Query) -> None:
        """The steps below took too long: answer with the fallback now, once."""
        reply_to, query.reply_to = query.reply_to, None
        query.timer = None
        if reply_to is not None and query.fallback is not None:
            reply_to(query, query.fallback(query))

    def _finished(self, query: Query, answer: Answer | None) -> None:
        if query.timer is not None:
            query.timer.cancel()
            query.timer = None
        if answer is not None:
            for step in self._upper_reversed:
                answer = step.answered(query, answer)
        reply_to, query.reply_to = query.reply_to, None
        if reply_to is not None:  # None: the fallback has answered already
            reply_to(query, answer)

    async def _call(self, index: int, query: Query) -> Answer:
        if index == len(self.steps):  # nobody answered
            return Answer(header_only_reply(query.raw, RCODE_SERVFAIL), Source.FAILURE)
        return await self.steps[index].resolve(query, lambda q: self._call(index + 1, q))
