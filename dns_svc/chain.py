"""The resolver chain: one contract for every step, and the drivers that run it.

The order is fixed in one place (``server.build_chain``) and reads as the data flow:
per-client cache -> local answers -> global cache -> [gather] -> authority -> upstream.

Each step writes its rule once, as three parts (``Step``):

- ``check(query)``: synchronous: an ``Answer``, ``PASS`` (the next step's turn) or ``WAIT``
  (only this step can answer, and not without waiting). A step that could answer later when
  the steps below are slow passes with a ``Pass`` carrying that fallback (serve-stale's
  client-response timer). It keeps, drops and builds no answer, so that asking twice gives the
  same verdict; a lookup's own bookkeeping is all it may change (``ReplyCache.get``'s LRU order
  and expired entries, ``CachedReply.render``'s rotation turn, ``upstreams_for``'s memo).
- ``back(query, answer)``: what it does with an answer from below on its way back up (the
  caches keep it), and the answer to pass up.
- ``wait(query)``, and optionally ``relay(query, done)``: the waiting, for the few steps that
  really wait (upstream, gather, a local CNAME chased upstream); ``relay`` is the same wait
  with a callback instead of a coroutine.
- ``refused(query)``: what the step answers instead of waiting to a client outside
  ``--allow-recursion`` (REFUSED, unless it has a partial answer of its own).

Every wait sends a query out (to an upstream, to the clusters), so the recursion gate is the
drivers' too, written once in ``Chain.walk``: a ``WAIT`` for a client that may not recurse
becomes that step's ``refused`` answer, and nothing is sent. A step never checks the gate itself;
a new step that waits is gated the day it is added.

The drivers are generic: ``Chain.walk`` runs the checks top-down and, on an answer, the backs
bottom-up, in plain code with no coroutine (a cache hit or a local answer never awaits);
on ``WAIT`` it returns a ``Pending``, which finishes the query either with callbacks
(``Pending.relay``, the UDP miss path: no coroutine either) or with a coroutine
(``Pending.answer``: TCP, gathering, CNAME chases, a truncated reply's TCP retry).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from dnslib import RR
from mypy_extensions import mypyc_attr

from dns_svc.answers import Upstream
from dns_svc.query import Query as Query  # the steps read it from here, with the other chain types
from dns_svc.replies import CachedReply
from dns_svc.wire import RCODE_REFUSED, RawQuery, ReplyLayout, header_only_reply, servfail


class Source(enum.Enum):
    LOCAL = "local"  # from the answers table: cached per client until the answers change
    AUTHORITY = "authority"  # NXDOMAIN/NODATA for a name in our zone: same lifetime as LOCAL
    UPSTREAM = "upstream"  # relayed from an upstream server: global cache, by its TTL
    FAILURE = "failure"  # every upstream failed: SERVFAIL, cached for a few seconds at most
    REFUSED = "refused"  # the recursion gate's answer (Step.refused): never cached
    STALE = "stale"  # an expired upstream answer served while the upstreams fail (RFC 8767)
    GATHER = "gather"  # merged from several clusters' answers: global cache, like UPSTREAM
    CLIENT_CACHE = "client_cache"  # a LOCAL or AUTHORITY answer served again from the client cache
    GLOBAL_CACHE = "global_cache"  # an UPSTREAM or GATHER answer served again from the global cache


class Answer:
    """Finished wire bytes plus what produced them, so that the steps above know what they may keep.

    ``Answer`` and ``Query`` are plain classes, not dataclasses: compiled, a dataclass's
    ``__init__`` is still the interpreted one ``dataclasses`` generates, and every query builds
    both."""

    __slots__ = ("built_from", "cached", "countdown", "layout", "shared", "source", "wire")

    def __init__(
        self,
        wire: bytes,
        source: Source,
        countdown: bool = True,
        layout: ReplyLayout | None = None,
        built_from: frozenset[str] | None = None,
        cached: CachedReply | None = None,
        shared: bool = False,
    ) -> None:
        self.wire = wire
        self.source = source
        self.countdown = countdown  # False: authoritative data, served with its full TTL every time
        self.layout = layout  # the reply walked already (upstream replies are, once)
        # A local answer: the table names it was built from (None: not known, it goes with any
        # change), and whether every client gets it (``shared``: no search suffix, no link alias,
        # no client's own upstreams involved).
        self.built_from = built_from
        self.shared = shared
        self.cached = cached  # the cache entry a hit was rendered from (for the packet cache)

    def __repr__(self) -> str:
        return f"Answer({self.source.value}, {len(self.wire)} bytes)"


def failure(raw: RawQuery) -> Answer:
    """SERVFAIL as an answer: nothing could answer (every upstream failed, no step did). Cached
    for a few seconds at most (``--cache-servfail-ttl``), never served over an expired answer."""
    return Answer(servfail(raw), Source.FAILURE)


class Pass:
    """A check's "not mine": the next step's turn. With ``fallback``, an answer this step can
    give if the steps below take longer than ``after`` seconds; the real answer still comes back
    up through ``back``."""

    __slots__ = ("after", "fallback")

    def __init__(self, fallback: Callable[[Query], Answer] | None = None, after: float = 0.0) -> None:
        self.fallback = fallback
        self.after = after


class Wait(enum.Enum):
    WAIT = "wait"


PASS = Pass()
WAIT = Wait.WAIT
Verdict = Answer | Pass | Wait
Done = Callable[[Query, Answer | None], None]
Settled = Callable[["Pending", Answer | None], None]  # a relayed query's way back to its transport
# What steps may ask of the upstreams without knowing the upstream step: resolve a name a local
# CNAME points to (``Chase``), or forward a query they built to given servers (``Forwarder``).
Chase = Callable[[Query, str, int], Awaitable["list[RR] | None"]]


class Forwarder(Protocol):
    async def forward_packet(self, packet: bytes, upstreams: Sequence[Upstream]) -> bytes | None: ...


@mypyc_attr(allow_interpreted_subclasses=True)  # a compiled build: steps may be plain Python
class Step:
    """A step of the chain: its rule written once (see the module's docstring)."""

    name = "step"

    def check(self, query: Query) -> Verdict:
        """Answer, ``PASS`` or ``WAIT``, decided now, keeping and dropping no answer."""
        raise NotImplementedError

    def back(self, query: Query, answer: Answer) -> Answer:
        """An answer from a step below, on its way up: the answer to pass on (the same one, or
        one this step has instead)."""
        return answer

    async def wait(self, query: Query) -> Answer:
        """The answer for a query ``check`` said ``WAIT`` to."""
        raise NotImplementedError

    def relay(self, query: Query, done: Done) -> bool:
        """``wait`` with a callback: answer later through ``done(query, answer)`` (answer None:
        ``wait`` must answer after all) and return True, or return False at once when it cannot."""
        return False

    def refused(self, query: Query) -> Answer:
        """The answer instead of ``wait`` for a client outside ``--allow-recursion``: a wait sends
        a query out, which such a client must never cause (an open resolver, an amplifier towards
        the upstreams and the clusters). REFUSED without RA, as a recursive resolver that will
        not recurse for a client answers; a step with something of its own to answer without the
        wait (a local CNAME whose target is outside the table) answers that instead, with the
        same ``Source.REFUSED`` so that no cache keeps what this one client was given."""
        return Answer(header_only_reply(query.raw, RCODE_REFUSED, ra=False), Source.REFUSED)


class Chain:
    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = tuple(steps)
        self._checks = tuple(step.check for step in self.steps)  # bound once, not per query

    def walk(self, query: Query) -> Answer | Pending:
        """The checks top-down; an answer goes back up through the steps above the one that gave
        it. A step that must wait: the ``Pending`` that finishes the query, or, for a client
        outside ``--allow-recursion``, the step's ``refused`` answer (the recursion gate: the one
        place it is checked, for every step that sends a query out, and for both drivers, since
        every ``Pending`` starts here)."""
        fallback: Pass | None = None
        fallback_at = 0
        index = 0
        for check in self._checks:
            verdict = check(query)
            if verdict is PASS:
                index += 1
                continue
            if verdict is WAIT:
                if not query.recursion_allowed:
                    return self.back(query, index, self.steps[index].refused(query))
                return Pending(self, query, index, fallback, fallback_at)
            if isinstance(verdict, Answer):
                return self.back(query, index, verdict)
            if isinstance(verdict, Pass) and verdict.fallback is not None:
                fallback, fallback_at = verdict, index
            index += 1
        return self.back(query, index, failure(query.raw))

    def back(self, query: Query, below: int, answer: Answer) -> Answer:
        """``answer``, given by step ``below``, through the ``back`` of each step above it."""
        steps = self.steps
        while below:
            below -= 1
            answer = steps[below].back(query, answer)
        return answer

    async def resolve(self, query: Query) -> Answer:
        """The whole chain for one query, waiting where a step must."""
        outcome = self.walk(query)
        if isinstance(outcome, Answer):
            return outcome
        return await outcome.answer()


class Pending:
    """A query a step must wait for: finished by callbacks (``relay``) or by a coroutine
    (``answer``), the steps above seeing the answer on its way back either way, and a fallback
    offered above (serve-stale) answering in its place when the wait runs past its timer."""

    __slots__ = ("chain", "context", "fallback", "fallback_at", "index", "query", "reply_to", "timer")

    def __init__(self, chain: Chain, query: Query, index: int, fallback: Pass | None, fallback_at: int) -> None:
        self.chain = chain
        self.query = query
        self.index = index
        self.fallback = fallback
        self.fallback_at = fallback_at
        self.context: Any = None  # the transport's: where the answer goes
        self.reply_to: Settled | None = None
        self.timer: asyncio.TimerHandle | None = None

    def relay(self, reply_to: Settled) -> bool:
        """Wait with callbacks: ``reply_to(self, answer)`` later (answer None: await ``answer``
        after all). False, and nothing sent, when the waiting step cannot relay."""
        self.reply_to = reply_to
        if not self.chain.steps[self.index].relay(self.query, self._done):
            self.reply_to = None
            return False
        fallback = self.fallback
        if fallback is not None and self.reply_to is not None:  # not answered at once
            self.timer = asyncio.get_running_loop().call_later(fallback.after, self._fall_back)
        return True

    def _fallback_answer(self) -> Answer:
        assert self.fallback is not None
        assert self.fallback.fallback is not None
        answer = self.fallback.fallback(self.query)
        return self.chain.back(self.query, self.fallback_at, answer)

    def _fall_back(self) -> None:
        """The step below took too long: the fallback answers now, once."""
        self.timer = None
        reply_to, self.reply_to = self.reply_to, None
        if reply_to is not None:
            reply_to(self, self._fallback_answer())

    def _done(self, query: Query, answer: Answer | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if answer is not None:
            answer = self.chain.back(query, self.index, answer)
        reply_to, self.reply_to = self.reply_to, None
        if reply_to is not None:  # None: the fallback has answered already
            reply_to(self, answer)

    async def answer(self) -> Answer:
        """Wait as a coroutine: the waiting step's answer, through the steps above."""
        below = self.chain.steps[self.index].wait(self.query)
        fallback = self.fallback
        if fallback is None:
            return self.chain.back(self.query, self.index, await below)
        task = asyncio.ensure_future(below)
        done, _ = await asyncio.wait({task}, timeout=fallback.after)
        if not done:  # the fallback answers; the late answer still refreshes the caches
            task.add_done_callback(self._refreshed)
            return self._fallback_answer()
        return self.chain.back(self.query, self.index, task.result())

    def _refreshed(self, task: asyncio.Future[Answer]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.chain.back(self.query, self.index, task.result())
