"""``python -m dns_svc`` / ``dns-svc``: parse flags, serve until SIGINT/SIGTERM.

With ``--workers N`` the process forks N workers that share the port with SO_REUSEPORT (the
kernel spreads clients over them); each worker follows metadata and keeps its caches itself, so
every one of them is correct on its own. The parent only forwards signals and reports exits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time

from dns_svc.server import DnsServer, StartupError
from dns_svc.settings import DnsSettings, parse_settings
from shared.logs import log_event, setup_logging

log = logging.getLogger("dns")


def serve(settings: DnsSettings) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(DnsServer(settings).serve_forever())
    else:
        uvloop.run(DnsServer(settings).serve_forever())


def _fork_worker(settings: DnsSettings) -> int:
    pid = os.fork()
    if pid == 0:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        code = 0
        try:
            serve(settings)
        except BaseException:
            logging.getLogger("dns").exception("worker failed")
            code = 1
        finally:
            os._exit(code)
    return pid


def serve_workers(settings: DnsSettings) -> int:
    worker_settings = dataclasses.replace(settings, reuse_port=True)
    children = [_fork_worker(worker_settings) for _ in range(settings.workers)]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = stopping or signum in (signal.SIGTERM, signal.SIGINT)
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    log_event(log, logging.INFO, "workers_started", workers=len(children), pids=",".join(map(str, children)))
    failed = 0
    while children:
        pid, status = os.wait()
        if pid not in children:
            continue
        children.remove(pid)
        if stopping:
            continue
        # A lost worker would leave the clients the kernel hashes to it unanswered: replace it.
        failed += 1
        log_event(log, logging.ERROR, "worker_exited", pid=pid, code=os.waitstatus_to_exitcode(status),
                  action="restarting")
        time.sleep(min(failed, 5))
        if not stopping:
            children.append(_fork_worker(worker_settings))
    return 0


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(argv)
    setup_logging(settings.log_level, with_pid=settings.workers > 1)
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
