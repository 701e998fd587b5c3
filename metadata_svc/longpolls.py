"""Long-poll slots: what one client, as identified, may hold waiting, and what all may.

A long-poll holds a connection for up to ``maxWait`` seconds, so long-polls are what can starve a
server of connections. They are counted per client *as identified* (the address that
X-Forwarded-For names when the peer is a trusted proxy; the socket peer otherwise), so that the
containers behind one proxy, or host-network containers sharing the host's address, are each
counted apart only when they can be told apart. The total is kept below the connection limit:
ordinary requests always find a slot while the long-polls are at theirs. A long-poll over a
limit is answered ``429`` with ``Retry-After``, never left to take a slot.
"""

from __future__ import annotations

import logging

from shared.client_slots import ClientSlots
from shared.logs import ThrottledLog

log = logging.getLogger("metadata")


class LongPollSlots:
    def __init__(self, per_client: int, max_total: int) -> None:
        self.max_total = max_total
        self.by_client = ClientSlots(per_client)
        self.held = 0
        self.refused = ThrottledLog(log, "longpoll_refused")

    def take(self, client: str) -> str | None:
        """One long-poll for ``client``; or why not (nothing taken)."""
        if not self.by_client.take(client):
            self.refused.note(client=client, reason="per-client limit", limit=self.by_client.per_client)
            return "too many long-polls from this client"
        if self.held >= self.max_total:
            self.by_client.give_back(client)
            self.refused.note(client=client, reason="every long-poll slot busy", limit=self.max_total)
            return "too many long-polls on this server"
        self.held += 1
        return None

    def give_back(self, client: str) -> None:
        self.held -= 1
        self.by_client.give_back(client)
