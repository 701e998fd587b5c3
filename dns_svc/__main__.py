"""``python -m dns_svc`` / ``dns-svc``: parse flags, serve until SIGINT/SIGTERM.

With ``--workers N`` the process forks N workers that share the port (``workers.py``).
"""

from __future__ import annotations

import logging
import sys

from dns_svc import compiled
from dns_svc.server import StartupError
from dns_svc.settings import parse_settings
from dns_svc.workers import serve, serve_workers
from shared.logs import log_event, setup_logging
from shared.state_lock import hold_state_file

log = logging.getLogger("dns")


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    setup_logging(settings.log_level, with_pid=settings.workers > 1)
    compiled.warn_if_unused(log)  # a build the edits since made stale: said once, at start
    hold_state_file(settings.state_file, log)  # held until exit, by the workers too (they inherit it)
    if settings.workers > 1:
        sys.exit(serve_workers(settings))
    try:
        serve(settings)
    except StartupError as exc:
        log_event(log, logging.ERROR, "cannot_start", reason=str(exc))
        sys.exit(1)
    except OSError as exc:  # the port taken, the address not ours: one line, not a traceback
        log_event(log, logging.ERROR, "cannot_listen", listen=f"{settings.host}:{settings.port}", error=str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
