"""``python -m dns_svc`` / ``dns-svc``: parse flags, serve until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio

from dns_svc.server import DnsServer
from dns_svc.settings import parse_settings
from shared.logs import setup_logging


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    setup_logging(settings.log_level)
    try:
        import uvloop
    except ImportError:
        asyncio.run(DnsServer(settings).serve_forever())
    else:
        uvloop.run(DnsServer(settings).serve_forever())


if __name__ == "__main__":
    main()
