"""Where token addresses come from: DNS (aiodns, pointed at metadns or any resolver) and the
metadata service (the service's healthy containers, straight from the fleet)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aiodns
import aiohttp

from consumers.render.tokens import (
    DEFAULT_PORT,
    DnsToken,
    MetadataToken,
    SrvToken,
    TokenError,
    address_key,
    hostport,
)
from shared.model import HEALTHY, RUNNING, port_spec


@dataclass(frozen=True)
class Expansion:
    servers: tuple[str, ...]
    ttl: int | None  # None: no DNS involved (metadata tokens change by long-poll, not by TTL)


class DnsSource:
    def __init__(self, nameservers: Sequence[str], timeout: float = 2.0) -> None:
        self.resolver = aiodns.DNSResolver(nameservers=list(nameservers) or None, timeout=timeout, tries=2)

    async def _query(self, name: str, qtype: str, token: str) -> list[object]:
        try:
            result = await self.resolver.query_dns(name, qtype)
        except aiodns.error.DNSError as exc:
            code = exc.args[0] if exc.args else -1
            reasons = {1: "no records (NODATA)", 4: "does not exist (NXDOMAIN)", 11: "no answer"}
            reason = reasons.get(code) or (str(exc.args[1]) if len(exc.args) > 1 else str(exc))
            raise TokenError(f"{token}: {name} {qtype}: {reason}") from None
        return list(result.answer)

    async def addresses(self, token: DnsToken, text: str) -> Expansion:
        records = [r for r in await self._query(token.host, "A", text) if getattr(r, "type", 1) in (1, "A")]
        ips = sorted({r.data.addr for r in records if hasattr(r.data, "addr")}, key=address_key)  # type: ignore[attr-defined]
        if not ips:
            raise TokenError(f"{text}: {token.host} has no A records")
        return Expansion(tuple(hostport(ip, token.port) for ip in ips), min(r.ttl for r in records))  # type: ignore[attr-defined]

    async def services(self, token: SrvToken, text: str) -> Expansion:
        records = [r for r in await self._query(token.name, "SRV", text) if hasattr(r.data, "target")]  # type: ignore[attr-defined]
        if not records:
            raise TokenError(f"{text}: {token.name} has no SRV records")
        ordered = sorted(records, key=_srv_order)
        servers: list[str] = []
        ttl = min(r.ttl for r in records)  # type: ignore[attr-defined]
        for r in ordered:
            target = r.data.target.rstrip(".")  # type: ignore[attr-defined]
            expansion = await self.addresses(DnsToken(target, r.data.port), text)  # type: ignore[attr-defined]
            servers.extend(expansion.servers)
            ttl = min(ttl, expansion.ttl or ttl)
        return Expansion(tuple(servers), ttl)

    def close(self) -> None:
        self.resolver.cancel()


class MetadataSource:
    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session

    async def version(self, known: str | None, max_wait: int) -> str:
        params = {"wait": "true", "value": known, "maxWait": str(max_wait)} if known else None
        async with self.session.get(
            f"{self.base_url}/version", params=params, headers={"Accept": "application/json"}
        ) as resp:
            resp.raise_for_status()
            return str(await resp.json(content_type=None))

    async def containers(self, token: MetadataToken, text: str) -> Expansion:
        url = f"{self.base_url}/stacks/{token.stack}/services/{token.service}"
        try:
            async with self.session.get(url, headers={"Accept": "application/json"}) as resp:
                if resp.status == 404:
                    raise TokenError(f"{text}: no service {token.stack}/{token.service} in the fleet")
                resp.raise_for_status()
                service = await resp.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise TokenError(f"{text}: metadata unreachable: {exc}") from None
        port = token.port or _service_port(service) or DEFAULT_PORT
        members = [
            c
            for c in service.get("containers") or []
            if isinstance(c, dict) and c.get("state", "running") in RUNNING and (c.get("health_state") or "") in HEALTHY
        ]
        if not members:
            raise TokenError(f"{text}: {token.stack}/{token.service} has no healthy containers")
        members.sort(key=lambda c: (_index(c.get("service_index")), c.get("create_index") or 0, c.get("name", "")))
        return Expansion(tuple(hostport(c["primary_ip"], port) for c in members), None)


def _index(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 1 << 30


def _service_port(service: dict[str, object]) -> int | None:
    """The container-side port of the service's first port spec (what its containers listen on)."""
    for spec in service.get("ports") or []:  # type: ignore[attr-defined]
        parsed = port_spec(str(spec))
        if parsed is not None:
            return parsed[0]
    return None


def _srv_order(record: object) -> tuple[int, str, int]:
    """SRV records by priority, then target, then port: the same order on every host."""
    data = record.data  # type: ignore[attr-defined]
    return (int(data.priority), str(data.target).lower().rstrip("."), int(data.port))
