"""Connections open per client address, with a cap: what keeps one source from holding every
slot of a server (the DNS service's TCP listener, the metadata service's HTTP one)."""

from __future__ import annotations


class ClientSlots:
    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._open: dict[str, int] = {}

    def get(self, client: str) -> int:
        return self._open.get(client, 0)

    def take(self, client: str) -> bool:
        """One more connection for ``client``; False (and nothing taken) when it is at its cap."""
        held = self._open.get(client, 0)
        if held >= self.per_client:
            return False
        self._open[client] = held + 1
        return True

    def give_back(self, client: str) -> None:
        left = self._open.get(client, 1) - 1
        if left > 0:
            self._open[client] = left
        else:
            self._open.pop(client, None)
