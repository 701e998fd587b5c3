"""The metadata service's plain counters, bumped by the handlers and read by ``metrics`` at scrape
time. A module of their own: ``keys`` names them as app state and ``metrics`` reads the app
through ``keys``, so neither needs the other."""

from __future__ import annotations

from collections import Counter


class MetadataCounters:
    """What happened since start: requests by kind and status, reloads by result."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.reloads: Counter[str] = Counter()
        self.deltas: Counter[str] = Counter()  # /metadns/v1/fleet?since=: served, gone

    def request(self, kind: str, status: int) -> None:
        self.requests[(kind, status)] += 1
