"""Server tokens inside a template, and how each is expanded.

| token | expands to |
|---|---|
| ``dns://host`` | ``ip:11211`` for each A record of host |
| ``dns+PORT://host`` | ``ip:PORT`` for each A record |
| ``dnssrv://_svc._proto.name`` | ``ip:port`` for each SRV target's A records |
| ``metadata://stack/service[:PORT]`` | ``ip:PORT`` for each healthy container of the service |

Anything else is a fixed entry and stays as it is (mcw's grammar, plus ``metadata://``).

Order is stable whatever order the resolver or the fleet returns: A records by numeric address;
SRV records by priority, then target name, then port, each target's addresses by numeric
address; containers by service index, then creation index, then name. The same set of servers
therefore always renders the same list, and consistent hashing keeps every key where it was.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

DEFAULT_PORT = 11211
_DNS = re.compile(r"^dns(?:\+(?P<port>[^:/]*))?://(?P<host>.+)$")


class TokenError(ValueError):
    """A token that cannot be rendered; the message names the token and the reason."""


@dataclass(frozen=True)
class DnsToken:
    host: str
    port: int


@dataclass(frozen=True)
class SrvToken:
    name: str


@dataclass(frozen=True)
class MetadataToken:
    stack: str
    service: str
    port: int | None


@dataclass(frozen=True)
class Fixed:
    text: str


Token = DnsToken | SrvToken | MetadataToken | Fixed


def _port(text: str, token: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise TokenError(f"{token}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def _hostname(host: str, token: str) -> str:
    host = host.strip()
    if not host or any(c in host for c in " /:@") or len(host.rstrip(".")) > 253:
        raise TokenError(f"{token}: {host!r} is not a host name")
    return host


def parse_token(text: str) -> Token:
    if text.startswith("dnssrv://"):
        return SrvToken(_hostname(text[len("dnssrv://") :], text))
    match = _DNS.match(text)
    if match:
        port = DEFAULT_PORT if match.group("port") is None else _port(match.group("port"), text)
        return DnsToken(_hostname(match.group("host"), text), port)
    if text.startswith("dns+") and "://" in text:
        raise TokenError(f"{text}: expected dns+PORT://host")
    if text.startswith("metadata://"):
        body = text[len("metadata://") :]
        path, _, port_text = body.partition(":")
        stack, _, service = path.partition("/")
        if not stack or not service or "/" in service:
            raise TokenError(f"{text}: expected metadata://stack/service[:PORT]")
        return MetadataToken(stack, service, _port(port_text, text) if port_text else None)
    return Fixed(text)


def address_key(ip: str) -> tuple[int, int]:
    addr = ipaddress.ip_address(ip)
    return (addr.version, int(addr))


def hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
