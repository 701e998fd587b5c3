"""Who is asking: the socket peer, or X-Forwarded-For when it comes from a trusted proxy.

rancher-metadata's ``--xff`` trusted the header from anyone, so any container could claim another
container's ``self`` (and its service token). Here the header only counts when ``--xff`` is on
*and* the peer is inside ``--xff-trusted``; the client is then the rightmost address in the chain
that is not itself a trusted proxy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def normalize_ip(text: str) -> str:
    """Canonical text of an address; IPv4-mapped IPv6 (``::ffff:a.b.c.d``) becomes plain IPv4."""
    try:
        addr = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return text.strip()
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip())


@dataclass(frozen=True)
class ClientIdentity:
    trust_xff: bool
    trusted: tuple[IPNetwork, ...]

    def speaks_for_others(self, peer: str) -> bool:
        """Whether ``peer`` is a proxy whose X-Forwarded-For is believed: its requests are its
        clients', so limits count those, not the proxy's address."""
        return self.trust_xff and self._is_trusted(peer)

    def _is_trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted)

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str:
        peer_ip = normalize_ip(peer or "")
        if not (self.trust_xff and forwarded_for and self._is_trusted(peer_ip)):
            return peer_ip
        hops = [normalize_ip(h) for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop
        return hops[0] if hops else peer_ip
