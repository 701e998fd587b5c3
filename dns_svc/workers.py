"""``--workers N``: N forked DNS processes on one port, one supervisor, one metrics endpoint.

The workers share the DNS port with SO_REUSEPORT (the kernel spreads clients over them); each
follows metadata and keeps its caches itself, so every one is correct on its own. The parent
forwards signals, replaces a worker that dies, and serves ``--http-listen`` itself: ``/metrics``
is every worker's series, each labelled ``worker="i"``, read from the workers' own endpoints on
Unix sockets at scrape time, so one scrape shows the whole service (with the port shared, each
scrape would reach one worker at random). ``/healthz`` is ok only while every worker says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from dns_svc.metrics import CONTENT_TYPE
from dns_svc.server import DnsServer
from dns_svc.settings import DnsSettings
from shared.logs import log_event

log = logging.getLogger("dns")


def serve(settings: DnsSettings) -> None:
    """One DNS process until SIGTERM, on uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(DnsServer(settings).serve_forever())
    else:
        uvloop.run(DnsServer(settings).serve_forever())


def _fork_worker(settings: DnsSettings) -> int:
    pid = os.fork()
    if pid == 0:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        code = 0
        try:
            serve(settings)
        except BaseException:
            logging.getLogger("dns").exception("worker failed")
            code = 1
        finally:
            os._exit(code)
    return pid


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


class Supervisor:
    def __init__(self, settings: DnsSettings, rundir: Path) -> None:
        self.settings = settings
        self.rundir = rundir
        self.slots: dict[int, int] = {}  # worker number -> pid
        self.stopping = False
        self.restarts = 0

    def socket_of(self, worker: int) -> str:
        return str(self.rundir / f"worker-{worker}.sock")

    def start(self, worker: int) -> None:
        settings = dataclasses.replace(
            self.settings,
            reuse_port=True,
            workers=1,
            http_host="",
            http_port=0,
            http_unix=self.socket_of(worker) if self.settings.http_host else "",
        )
        self.slots[worker] = _fork_worker(settings)

    def forward(self, signum: int) -> None:
        self.stopping = self.stopping or signum in (signal.SIGTERM, signal.SIGINT)
        for pid in self.slots.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def reap(self) -> None:
        while self.slots:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w, p in self.slots.items() if p == pid), None)
            if worker is None:
                continue
            del self.slots[worker]
            if self.stopping:
                continue
            # A lost worker would leave the clients the kernel hashes to it unanswered: replace it.
            self.restarts += 1
            log_event(
                log,
                logging.ERROR,
                "worker_exited",
                worker_pid=pid,
                worker=worker,
                code=os.waitstatus_to_exitcode(status),
                action="restarting",
            )
            asyncio.get_running_loop().call_later(min(self.restarts, 5), self._restart, worker)

    def _restart(self, worker: int) -> None:
        if not self.stopping and worker not in self.slots:
            self.start(worker)

    async def _ask(self, worker: int, path: str) -> tuple[int, str]:
        connector = aiohttp.UnixConnector(path=self.socket_of(worker))
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=2)) as session,
            session.get(f"http://worker{path}") as response,
        ):
            return response.status, await response.text()

    async def metrics(self, _request: web.Request) -> web.Response:
        workers = sorted(self.slots)
        results = await asyncio.gather(*(self._ask(w, "/metrics") for w in workers), return_exceptions=True)
        merged: dict[str, Metric] = {}
        up = GaugeMetricFamily("metadns_dns_worker_up", "1 when the worker's metrics could be read", labels=["worker"])
        for worker, result in zip(workers, results, strict=True):
            ok = not isinstance(result, BaseException) and result[0] == 200
            up.add_metric([str(worker)], int(ok))
            if not ok or isinstance(result, BaseException):
                continue
            for family in text_string_to_metric_families(result[1]):
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(family.name, family.documentation, family.type)
                for sample in family.samples:
                    into.samples.append(sample._replace(labels={**sample.labels, "worker": str(worker)}))
        registry = CollectorRegistry()
        registry.register(_Merged([up, *merged.values()]))
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})

    async def healthz(self, _request: web.Request) -> web.Response:
        workers = sorted(self.slots)
        results = await asyncio.gather(*(self._ask(w, "/healthz") for w in workers), return_exceptions=True)
        states = {
            str(w): ("unreachable" if isinstance(r, BaseException) else "ok" if r[0] == 200 else "failing")
            for w, r in zip(workers, results, strict=True)
        }
        healthy = (
            not self.stopping
            and len(workers) == self.settings.workers
            and all(state == "ok" for state in states.values())
        )
        return web.json_response(
            {"status": "ok" if healthy else "failing", "workers": states}, status=200 if healthy else 503
        )

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for worker in range(self.settings.workers):
            self.start(worker)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.forward, sig)
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        runner: web.AppRunner | None = None
        s = self.settings
        if s.http_host:
            app = web.Application()
            app.router.add_get("/metrics", self.metrics)
            app.router.add_get("/healthz", self.healthz)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, s.http_host, s.http_port).start()
        log_event(
            log,
            logging.INFO,
            "workers_started",
            workers=len(self.slots),
            pids=",".join(str(self.slots[w]) for w in sorted(self.slots)),
            http=f"{s.http_host}:{s.http_port}" if s.http_host else "",
        )
        try:
            while self.slots or not self.stopping:
                await asyncio.sleep(0.2)
                self.reap()  # a SIGCHLD can be merged with another: look anyway
        finally:
            if runner is not None:
                await runner.cleanup()
        log_event(log, logging.INFO, "stopped", workers=self.settings.workers)
        return 0


def serve_workers(settings: DnsSettings) -> int:
    with tempfile.TemporaryDirectory(prefix="metadns-workers-") as rundir:
        return asyncio.run(Supervisor(settings, Path(rundir)).run())
