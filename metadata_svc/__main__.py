"""``python -m metadata_svc`` / ``metadata-svc``: parse flags, run the app."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from metadata_svc.app import create_app
from metadata_svc.settings import parse_settings
from shared.logs import log_event, setup_logging


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    setup_logging(settings.log_level)
    try:
        import uvloop
    except ImportError:
        loop = None
    else:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
    log_event(logging.getLogger("metadata"), logging.INFO, "starting", listen=f"{settings.host}:{settings.port}",
              data=settings.data, xff=settings.xff)
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None,
                shutdown_timeout=5, access_log=None, loop=loop, handle_signals=True)


if __name__ == "__main__":
    main()
