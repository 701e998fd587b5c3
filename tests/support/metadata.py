"""The real metadata service on 127.0.0.1, an ephemeral port, and HTTP clients bound to any
127.0.0.x source address so a test can *be* a given container."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import signal
import sys
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


class RawClient:
    """One HTTP/1.1 connection written by hand: what it was answered, or that it was reset."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, source: str = "127.0.0.1") -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0), limit=1 << 20)
        return cls(reader, writer)

    def send(self, path: str, forwarded_for: str | None = None) -> None:
        xff = f"X-Forwarded-For: {forwarded_for}\r\n" if forwarded_for else ""
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: md\r\n{xff}\r\n".encode())

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body of the next answer (ConnectionResetError on a reset)."""
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, text = line.partition(":")
                headers[name.strip().lower()] = text.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split()[1]), headers, body

    def close(self) -> None:
        self.writer.close()


_LIMITED = (
    "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({0}, {0})); "
    "runpy.run_module('metadata_svc', run_name='__main__', alter_sys=True)"
)


async def start_metadata(
    fleet_file: Path, *flags: str, open_files: int | None = None
) -> tuple[asyncio.subprocess.Process, int]:
    """The real service (uvloop, the open-files limit raised) on a port of its own choosing, read
    from its ``event=listening`` line; its log goes to ``metadata.log`` beside the fleet file (a
    pipe nobody reads would stall it). ``open_files``: the child's RLIMIT_NOFILE, soft and hard,
    set by the child itself before the service starts (a ``preexec_fn`` runs Python between fork
    and exec, which a parent with threads, as a test worker has, must not do)."""
    log_path = fleet_file.parent / "metadata.log"
    if open_files is None:
        start: tuple[str, ...] = ("-m", "metadata_svc")
    else:
        start = ("-c", _LIMITED.format(open_files))
    with log_path.open("wb") as log_file:  # the child has its own copy
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *start,
            "--listen",
            "127.0.0.1:0",
            "--data",
            str(fleet_file),
            "--state-file",
            "",
            *flags,
            stderr=log_file,
        )
    async with asyncio.timeout(30):
        while not (found := re.search(r"event=listening address=\S+:(\d+)", log_path.read_text())):
            assert proc.returncode is None, f"exited {proc.returncode}: {log_path.read_text()}"
            await asyncio.sleep(0.05)
    return proc, int(found.group(1))


async def stop(proc: asyncio.subprocess.Process, fleet_file: Path) -> str:
    """Stop the service started by ``start_metadata``; its log."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.wait(), 20)
    return (fleet_file.parent / "metadata.log").read_text()
