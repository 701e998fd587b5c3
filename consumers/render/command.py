"""``metadns render``: keep a rendered config in step with DNS and the fleet.

Re-renders when the template changes, when the metadata version changes (long-poll, only when a
``metadata://`` token is used), and on a DNS schedule: the smallest record TTL, clamped to
``--ttl-min``/``--ttl-max``. A failed render (bad template, a token that does not resolve)
leaves the output untouched, says which token and why in one log line, and is retried after
``--retry`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from consumers.render.output import Output
from consumers.render.pools import check_mcrouter, pool_template
from consumers.render.sources import DnsSource, MetadataSource
from consumers.render.template import Rendered, TemplateError, TemplateRenderer, load_template
from consumers.render.tokens import TokenError
from shared.logs import log_event

log = logging.getLogger("render")


@dataclass(frozen=True)
class RenderSettings:
    output: str
    template: str = ""
    pool_setup: str = ""
    servers: str = ""
    mode: int = 0o644
    on_change: str = ""
    dns: tuple[str, ...] = ()
    metadata_url: str = ""
    ttl_min: float = 5.0
    ttl_max: float = 60.0
    retry: float = 5.0
    poll_interval: float = 1.0
    max_wait: int = 30
    once: bool = False
    check_mcrouter: bool = field(default=True)


class RenderLoop:
    def __init__(self, settings: RenderSettings) -> None:
        self.settings = settings
        self.output = Output(settings.output, settings.mode, settings.on_change or None)
        self.wake = asyncio.Event()
        self.uses_metadata = False
        self.renders = 0
        self.failures = 0

    def template(self) -> object:
        s = self.settings
        if s.pool_setup:
            return pool_template(s.pool_setup, s.servers)
        try:
            text = Path(s.template).read_text(encoding="utf-8")
        except OSError as exc:
            raise TemplateError(f"{s.template}: cannot read: {exc}") from None
        return load_template(text, s.template)

    async def render_once(self, renderer: TemplateRenderer) -> Rendered | None:
        try:
            template = self.template()
            rendered = await renderer.render(template)
            if self.settings.check_mcrouter and (self.settings.pool_setup or _looks_like_mcrouter(template)):
                problems = check_mcrouter(rendered.value)
                if problems:
                    raise TemplateError(f"not a valid mcrouter config: {problems[0]}")
        except (TemplateError, TokenError) as exc:
            self.failures += 1
            log_event(
                log,
                logging.ERROR,
                "render_failed",
                source=self.settings.template or self.settings.servers,
                problem=str(exc),
                output_kept=str(self.output.path),
            )
            return None
        self.renders += 1
        self.uses_metadata = rendered.uses_metadata
        await self.output.write(rendered.text)
        return rendered

    def delay(self, rendered: Rendered | None) -> float:
        s = self.settings
        if rendered is None:
            return s.retry
        if rendered.ttl is None:
            return s.ttl_max
        return min(max(float(rendered.ttl), s.ttl_min), s.ttl_max)

    def template_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = Path(self.settings.template).stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    async def watch_template(self, last: tuple[int, int, int] | None) -> None:
        """Wake the loop when the template changes from ``last``: its stamp taken before the
        first render read it, so that an edit made while that render ran is not missed."""
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            current = self.template_stamp()
            if current != last:
                last = current
                self.wake.set()

    async def watch_metadata(self, source: MetadataSource, version: str | None) -> None:
        """Long-poll from the version seen before the first render, so no change slips between."""
        backoff = 0.5
        reported = False
        while True:
            try:
                new = await source.version(version, self.settings.max_wait)
                backoff, reported = 0.5, False
                if version is not None and new != version and self.uses_metadata:
                    self.wake.set()
                version = new
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                if not reported:
                    log_event(log, logging.WARNING, "metadata_unreachable", url=source.base_url, error=str(exc))
                    reported = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def run(self) -> int:
        s = self.settings
        dns = DnsSource(s.dns)
        timeout = aiohttp.ClientTimeout(total=s.max_wait + 15, connect=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            metadata = MetadataSource(s.metadata_url, session) if s.metadata_url else None
            renderer = TemplateRenderer(dns, metadata)
            version = None
            if metadata is not None and not s.once:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    version = await metadata.version(None, 0)
            stamp = self.template_stamp() if s.template else None
            rendered = await self.render_once(renderer)
            if s.once:
                dns.close()
                return 0 if rendered is not None else 1
            tasks = []
            if s.template:
                tasks.append(asyncio.create_task(self.watch_template(stamp)))
            if metadata is not None:
                tasks.append(asyncio.create_task(self.watch_metadata(metadata, version)))
            try:
                while True:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.delay(rendered)):
                            await self.wake.wait()
                    self.wake.clear()
                    rendered = await self.render_once(renderer)
            finally:
                for task in tasks:
                    task.cancel()
                dns.close()


def _looks_like_mcrouter(template: object) -> bool:
    return isinstance(template, dict) and "pools" in template and ("route" in template or "routes" in template)


def parse_mode(text: str) -> int:
    mode = int(text, 8)
    if not 0o400 <= mode <= 0o777:
        raise ValueError(f"mode {text} is not an octal file mode from 0400 to 0777")
    return mode


__all__ = ["RenderLoop", "RenderSettings", "parse_mode"]
