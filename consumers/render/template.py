"""Expand the tokens of a JSON template: every string inside a list that is a token becomes the
servers it stands for, in place, order kept, no de-duplication. Tokens outside lists are errors
(one string cannot hold several servers)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from consumers.render.sources import DnsSource, Expansion, MetadataSource
from consumers.render.tokens import DnsToken, Fixed, MetadataToken, SrvToken, TokenError, parse_token


class TemplateError(ValueError):
    """The template itself is unusable (not JSON, or a token where a list was needed)."""


@dataclass
class Rendered:
    value: Any  # the rendered document
    text: str  # ... as written to the output
    ttl: int | None  # smallest DNS TTL among the tokens; None when no DNS token
    uses_metadata: bool


def load_template(text: str, path: str) -> Any:
    if not text.strip():
        raise TemplateError(f"{path}: empty template")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TemplateError(f"{path}: line {exc.lineno} column {exc.colno}: {exc.msg}") from None


class TemplateRenderer:
    def __init__(self, dns: DnsSource, metadata: MetadataSource | None) -> None:
        self.dns = dns
        self.metadata = metadata

    async def expand(self, text: str) -> tuple[list[str], Expansion | None, bool]:
        token = parse_token(text)
        if isinstance(token, Fixed):
            return [text], None, False
        if isinstance(token, DnsToken):
            expansion = await self.dns.addresses(token, text)
        elif isinstance(token, SrvToken):
            expansion = await self.dns.services(token, text)
        else:
            assert isinstance(token, MetadataToken)
            if self.metadata is None:
                raise TokenError(f"{text}: no --metadata-url to resolve it with")
            expansion = await self.metadata.containers(token, text)
        return list(expansion.servers), expansion, isinstance(token, MetadataToken)

    async def render(self, template: Any) -> Rendered:
        ttls: list[int] = []
        uses_metadata = False

        async def walk(value: Any, path: str) -> Any:
            nonlocal uses_metadata
            if isinstance(value, list):
                out: list[Any] = []
                for i, item in enumerate(value):
                    if isinstance(item, str):
                        servers, expansion, from_metadata = await self.expand(item)
                        uses_metadata |= from_metadata
                        if expansion is not None and expansion.ttl is not None:
                            ttls.append(expansion.ttl)
                        out.extend(servers)
                    else:
                        out.append(await walk(item, f"{path}[{i}]"))
                return out
            if isinstance(value, dict):
                return {k: await walk(v, f"{path}.{k}") for k, v in value.items()}
            if isinstance(value, str) and not isinstance(parse_token(value), Fixed):
                raise TemplateError(f"{path}: token {value!r} must be inside a list")
            return value

        rendered = await walk(template, "$")
        return Rendered(rendered, json.dumps(rendered, indent=2) + "\n", min(ttls) if ttls else None, uses_metadata)
