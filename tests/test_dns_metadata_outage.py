"""Metadata down: the DNS service keeps answering from the last table, says so once, catches up
when metadata returns, and after a restart answers from the copy it kept on disk. Metadata not
up yet when the DNS service starts is no outage: quiet retries, an error only past the grace."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import dns.exception
import pytest
import yaml

from dns_svc.follower import version_index
from metadata_svc.keys import STORE
from tests.support.dns import addresses, ask, dns_process, listening_address, rcode, run_dns, wait_for_version
from tests.support.logs import ProcessLog, logged_fields
from tests.support.metadata import run_metadata
from tests.support.ports import free_port, hold_port


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [f for f in logged_fields(caplog) if f.get("event") == name]


async def test_outage_recovery_and_restart_from_kept_copy(
    dns_fleet_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = free_port()
    kept = tmp_path / "dns-kept.json"
    md_kept = tmp_path / "metadata-kept.json"
    url = f"http://127.0.0.1:{port}/2016-07-29"
    async with run_dns(metadata_url=url, state_file=str(kept)) as server:
        assert server.follower is not None
        server.follower.max_backoff = 0.2
        async with run_metadata(dns_fleet_file, md_kept, port=port) as md:
            await wait_for_version(server, version_index(md.app[STORE].snapshot.version))
            assert addresses(await ask(server, "shop-db-1.rancher.internal")) == ["127.0.0.21"]
        # metadata is gone: answers continue from the last table, through several retries
        async with asyncio.timeout(20):
            while server.follower.failures < 4:
                await asyncio.sleep(0.05)
        assert addresses(await ask(server, "shop-db-1.rancher.internal")) == ["127.0.0.21"]
        assert addresses(await ask(server, "db.shop.rancher.internal")) == ["127.0.0.21"]
        outage = events(caplog, "metadata_unreachable")
        assert len(outage) == 1  # said once, not once per retry; nothing at the start, metadata came up in time
        assert outage[0]["serving"] == server.follower.version
        assert outage[0]["attempts"] == 1  # at once: metadata was reached before, the grace is over
        # it comes back with a moved container
        data = yaml.safe_load(dns_fleet_file.read_text())
        next(c for c in data["containers"] if c["name"] == "shop-db-1")["primary_ip"] = "127.0.0.23"
        dns_fleet_file.write_text(yaml.safe_dump(data))
        copy_version = server.follower.version  # what the kept copies hold
        async with run_metadata(dns_fleet_file, md_kept, port=port) as md:
            async with asyncio.timeout(10):  # the kept copy is served at once, the file read next
                while md.app[STORE].snapshot.version == copy_version:
                    await asyncio.sleep(0.01)
            version = md.app[STORE].snapshot.version
            await wait_for_version(server, version_index(version), version=version)
            table = server.tables.current
            assert addresses(await ask(server, "shop-db-1.rancher.internal")) == ["127.0.0.23"], (
                version,
                server.follower.version,
                table.serial,
                table.records.get("shop-db-1.rancher.internal."),
                server.tables.current is table,
            )
        assert len(events(caplog, "metadata_reachable")) == 2  # after the start-up wait, and after the outage
    assert kept.exists()
    # a restart while metadata is down serves the kept copy
    async with run_dns(metadata_url=url, state_file=str(kept)) as server:
        assert addresses(await ask(server, "shop-db-1.rancher.internal")) == ["127.0.0.23"]
        assert addresses(await ask(server, "web.shop.rancher.internal")) != []


async def test_broken_kept_copy_is_ignored_with_a_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    kept = tmp_path / "kept.json"
    kept.write_text("{not json")
    url = f"http://127.0.0.1:{free_port()}/2016-07-29"
    async with run_dns(metadata_url=url, state_file=str(kept)) as server:
        assert (await ask(server, "nope.rancher.internal")).rcode() == 3  # NXDOMAIN, still serving
    [line] = events(caplog, "kept_copy_not_used")
    assert "kept copy unusable" in line["reason"]


async def test_follows_any_rancher_metadata_through_the_tree(fleet_stack, dns_fleet_file: Path) -> None:
    """Without metadns's compact /metadns/v1/fleet document (as with rancher-metadata itself), the
    follower reads the versioned tree instead and validates it."""
    md, server = fleet_stack
    assert server.follower is not None
    server.follower.fleet_url = None
    data = yaml.safe_load(dns_fleet_file.read_text())
    next(c for c in data["containers"] if c["name"] == "lonely")["primary_ip"] = "127.0.0.42"
    dns_fleet_file.write_text(yaml.safe_dump(data))
    store = md.app[STORE]
    async with asyncio.timeout(10):
        while store.snapshot.fleet.container_by_ip("127.0.0.42") is None:
            await asyncio.sleep(0.01)
    version = store.snapshot.version
    await wait_for_version(server, version_index(version), version=version)
    assert addresses(await ask(server, "lonely.rancher.internal")) == ["127.0.0.42"]
    assert server.follower.fleet_url is None


async def terminate(proc: asyncio.subprocess.Process, log: ProcessLog) -> str:
    """SIGTERM to a process this test started, its exit, and its whole log."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(15):
        await proc.wait()
        return await log.finish()


@pytest.mark.one_loop
async def test_dns_started_before_metadata_logs_no_error(dns_fleet_file: Path) -> None:
    """Both services started at once, DNS first (as ``scripts/run.sh`` once did): the real
    ``dns-svc`` fails to reach metadata a few times, quietly, and answers the fleet's names once
    the real ``metadata-svc`` is up, with no error line on the way."""
    with hold_port() as metadata_port:  # held until metadata starts: nobody else takes it meanwhile
        service = await dns_process(
            "--listen=127.0.0.1:0",
            f"--metadata-url=http://127.0.0.1:{metadata_port.port}/2016-07-29",
            "--log-level=debug",
        )
        dns_log = ProcessLog(service.stderr)
        metadata: asyncio.subprocess.Process | None = None
        metadata_log: ProcessLog | None = None
        try:
            address = await listening_address(dns_log)
            await dns_log.wait_for("logger=dns.metadata", "event=metadata_", count=3)  # tried 3 times: 1-2 s
            metadata_port.release()
            metadata = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "metadata_svc",
                f"--listen=127.0.0.1:{metadata_port.port}",
                f"--data={dns_fleet_file}",
                "--state-file=",
                stderr=asyncio.subprocess.PIPE,
            )
            metadata_log = ProcessLog(metadata.stderr)
            async with asyncio.timeout(20):
                while True:
                    try:
                        if addresses(await ask(address, "shop-db-1.rancher.internal", timeout=0.5)) == ["127.0.0.21"]:
                            break
                    except dns.exception.Timeout:
                        pass
                    await asyncio.sleep(0.1)
            assert addresses(await ask(address, "db.shop.rancher.internal")) == ["127.0.0.21"]
        finally:
            text = await terminate(service, dns_log)
            if metadata is not None and metadata_log is not None:
                await terminate(metadata, metadata_log)
    assert "level=error" not in text, text
    assert "event=metadata_unreachable" not in text
    [reached] = dns_log.matching("event=metadata_reachable")
    assert "level=info" in reached
    assert "after_attempts=" in reached


@pytest.mark.one_loop
async def test_metadata_unreachable_past_the_grace_period_is_one_error_line() -> None:
    """A source that never comes up: quiet retries for the grace period, then one error line,
    and the retries after it are debug lines, not more errors."""
    with hold_port() as nobody:  # bound, never listening: every connection is refused
        service = await dns_process(
            "--listen=127.0.0.1:0",
            f"--metadata-url=http://127.0.0.1:{nobody.port}/2016-07-29",
            "--metadata-grace=1",
            "--log-level=debug",
        )
        dns_log = ProcessLog(service.stderr)
        try:
            address = await listening_address(dns_log)
            await dns_log.wait_for("event=metadata_unreachable")
            await dns_log.wait_for("event=metadata_retry_failed", count=2)  # two retries past the error
            assert rcode(await ask(address, "nope.rancher.internal")) == "NXDOMAIN"  # serving meanwhile
        finally:
            text = await terminate(service, dns_log)
    errors = [line for line in text.splitlines() if "level=error" in line]
    assert len(errors) == 1, text
    assert "event=metadata_unreachable" in errors[0]
    assert 'serving="no data yet"' in errors[0]
    lines = text.splitlines()
    quiet = [i for i, line in enumerate(lines) if "event=metadata_not_yet_reachable" in line]
    assert quiet, text  # the grace period's retries came first, as debug lines
    assert all("level=debug" in lines[i] for i in quiet)
    assert max(quiet) < lines.index(errors[0])
