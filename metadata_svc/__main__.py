"""``python -m metadata_svc`` / ``metadata-svc``: parse flags, serve until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys

from metadata_svc.app import create_app, make_runner
from metadata_svc.connections import GatedListener, connections_within, raise_open_files_limit
from metadata_svc.keys import GATE, LONGPOLLS, STORE
from metadata_svc.settings import MetadataSettings, parse_settings
from shared.logs import log_event, setup_logging
from shared.state_lock import hold_state_file

log = logging.getLogger("metadata")


async def serve(settings: MetadataSettings) -> None:
    limit = raise_open_files_limit()
    settings = dataclasses.replace(settings, max_connections=connections_within(limit, settings.max_connections))
    app = create_app(settings)
    gate = app[GATE]
    runner = make_runner(app)
    await runner.setup()
    site = GatedListener(runner, settings.host, settings.port, gate)
    try:
        store = app[STORE]
        if settings.self_host and store.has_data and not store.snapshot.self_host_uuid:
            # A typo here would silently give every unknown client an empty self/host. (With
            # etcd and nothing read yet, the host may register later: then it is only logged.)
            hosts = ", ".join(h.name or h.uuid for h in store.snapshot.fleet.hosts) or "none"
            log_event(
                log,
                logging.ERROR,
                "cannot_start",
                reason=f"--self-host {settings.self_host} names no host of the fleet (hosts: {hosts})",
            )
            raise SystemExit(2)
        try:
            await site.start()
        except OSError as exc:
            log_event(log, logging.ERROR, "cannot_listen", listen=f"{settings.host}:{settings.port}", error=str(exc))
            raise SystemExit(1) from None
        log_event(
            log,
            logging.INFO,
            "listening",
            address=f"{site.address[0]}:{site.address[1]}",
            data=settings.data,
            xff=settings.xff,
            max_connections=gate.max_total,
            max_longpolls=app[LONGPOLLS].max_total,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await site.stop()
        await runner.cleanup()
        log_event(log, logging.INFO, "stopped")


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    setup_logging(settings.log_level)
    hold_state_file(settings.state_file, log)  # held until exit
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
    sys.exit(0)


if __name__ == "__main__":
    main()
