"""The resolver chain: each step answers a query itself or hands it to the next one.

The order is fixed in one place (``server.build_chain``) and reads as the data flow:
per-client cache -> local answers -> global cache -> authority (NXDOMAIN) -> upstream.
A step returns an ``Answer``: finished wire bytes plus what produced them, so the caches above
know what they may keep.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dnslib import DNSRecord

from dns_svc.wire import RCODE_SERVFAIL, RawQuery, header_only_reply
from shared.answers import AnswersTable, ClientView


class Source(enum.Enum):
    LOCAL = "local"          # from the answers table: cached per client until the answers change
    AUTHORITY = "authority"  # NXDOMAIN/NODATA for a name in our zone: same lifetime as LOCAL
    UPSTREAM = "upstream"    # relayed from an upstream server: global cache, by its TTL
    FAILURE = "failure"      # every upstream failed: SERVFAIL, cached for a few seconds at most
    REFUSED = "refused"      # recursion not allowed for this client: never cached


@dataclass(slots=True)
class Answer:
    wire: bytes
    source: Source
    countdown: bool = True   # False: authoritative data, served with its full TTL every time


@dataclass(slots=True)
class Query:
    """One client question on its way through the chain. Steps may only set the two notes below."""

    raw: RawQuery
    client_ip: str
    transport: str
    table: AnswersTable
    view: ClientView
    recursion_allowed: bool
    skip_local: bool = False     # set by the client cache: this name is known not to be local
    shared_answer: bool = False  # set by local answers: the reply is the same for every client
    built_from: set[str] = field(default_factory=set)  # set by local answers: the names it read
    _request: Any = field(default=None, repr=False)

    @property
    def request(self) -> DNSRecord:
        """The full dnslib parse, done only when a step needs it (cache misses)."""
        if self._request is None:
            self._request = DNSRecord.parse(self.raw.packet)
        return self._request


CallNext = Callable[[Query], Awaitable[Answer]]


class Step(Protocol):
    name: str

    async def resolve(self, query: Query, call_next: CallNext) -> Answer: ...


class Chain:
    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = tuple(steps)

    def index(self, name: str) -> int:
        return next(i for i, step in enumerate(self.steps) if step.name == name)

    async def resolve(self, query: Query, start: int = 0) -> Answer:
        """Run the chain, from step ``start`` when the steps above it are known to pass."""
        return await self._call(start, query)

    async def _call(self, index: int, query: Query) -> Answer:
        if index == len(self.steps):  # nobody answered
            return Answer(header_only_reply(query.raw, RCODE_SERVFAIL), Source.FAILURE)
        return await self.steps[index].resolve(query, lambda q: self._call(index + 1, q))
