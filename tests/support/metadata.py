"""The real metadata service on 127.0.0.1, an ephemeral port, and HTTP clients bound to any
127.0.0.x source address so a test can *be* a given container."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from metadata_svc.app import create_app, make_runner
from metadata_svc.connections import GatedListener
from metadata_svc.keys import GATE
from metadata_svc.settings import MetadataSettings


@dataclasses.dataclass
class RunningMetadata:
    url: str
    app: web.Application
    settings: MetadataSettings

    @contextlib.asynccontextmanager
    async def client(self, source_ip: str = "127.0.0.1", **kwargs: Any) -> AsyncIterator[aiohttp.ClientSession]:
        connector = aiohttp.TCPConnector(local_addr=(source_ip, 0), limit=0, force_close=True)
        async with aiohttp.ClientSession(self.url, connector=connector, **kwargs) as session:
            yield session


@contextlib.asynccontextmanager
async def run_metadata(
    data: Path, state_file: Path | None = None, port: int = 0, **overrides: Any
) -> AsyncIterator[RunningMetadata]:
    settings = MetadataSettings(
        **{
            "host": "127.0.0.1",
            "port": 0,
            "data": str(data),
            "state_file": str(state_file) if state_file else "",
            "poll_interval": 0.05,
            **overrides,
        }
    )
    app = create_app(settings)
    runner = make_runner(app)  # the production runner and listener, connection gate and all
    await runner.setup()
    site = GatedListener(runner, "127.0.0.1", port, app[GATE])
    await site.start()
    port = site.address[1]
    try:
        yield RunningMetadata(f"http://127.0.0.1:{port}", app, settings)
    finally:
        await site.stop()
        await runner.cleanup()
