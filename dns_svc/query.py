"""One client question on its way through the chain (``dns_svc.chain``), as a module of its own:
the helpers that build replies to it (``dns_svc.respond``) are used by the cached replies that
the chain's ``Answer`` points to, so a ``Query`` defined in ``chain`` made the three one import
cycle."""

from __future__ import annotations

from dnslib import DNSRecord

from dns_svc.answers import AnswersTable, ClientView
from dns_svc.wire import RawQuery, ascii_packet


class Query:
    """One client question on its way through the chain: what was asked, by whom, and the answers
    table and cache generation it started with. Steps read it; none writes to it."""

    __slots__ = (
        "_request",
        "client_ip",
        "generation",
        "raw",
        "recursion_allowed",
        "started",
        "table",
        "transport",
        "view",
    )

    def __init__(
        self,
        raw: RawQuery,
        client_ip: str,
        transport: str,
        table: AnswersTable,
        view: ClientView,
        recursion_allowed: bool,
        generation: int = 0,
        started: float = 0.0,
    ) -> None:
        self.raw = raw
        self.client_ip = client_ip
        self.transport = transport
        self.table = table
        self.view = view
        # --allow-recursion, decided once per query (``RecursionPolicy``): whether a step may send
        # a query out for it (``Chain.walk``) and whether it may be answered from the global cache
        self.recursion_allowed = recursion_allowed
        self.generation = generation  # the client caches' generation when the query started
        self.started = started  # when the query was read (perf_counter), for its duration
        self._request: DNSRecord | None = None

    def __repr__(self) -> str:
        return f"Query({self.raw.text_name()} {self.raw.qtype} from {self.client_ip} over {self.transport})"

    @property
    def request(self) -> DNSRecord:
        """The full dnslib parse, done only when a step needs it (cache misses)."""
        if self._request is None:
            raw = self.raw
            self._request = DNSRecord.parse(raw.packet if raw.qname.isascii() else ascii_packet(raw))
        return self._request
