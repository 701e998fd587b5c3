"""``dns-svc`` as a user runs it: --help, flags from the environment, an answers file that is
re-read on change, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import dns.exception
import pytest

from tests.support.dns import addresses, ask, dns_process_on_free_ports, listening_address, rcode
from tests.support.logs import ProcessLog
from tests.support.ports import free_port, hold_port


async def stop(proc: asyncio.subprocess.Process, log: ProcessLog | None = None) -> str:
    """SIGTERM, a clean exit, and the log it wrote (read by ``log`` when one is reading it)."""
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        await proc.wait()
        text = await log.finish() if log is not None else None
    assert proc.returncode == 0
    if text is not None:
        return text
    assert proc.stderr is not None
    return (await proc.stderr.read()).decode()


def test_help_names_every_flag_and_its_environment_variable() -> None:
    out = subprocess.run([sys.executable, "-m", "dns_svc", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in (
        "--listen",
        "--metadata-url",
        "--answers",
        "--recurse",
        "--domain",
        "--ttl",
        "--cache-capacity",
        "--recurser-timeout",
        "--ndots",
        "--allow-recursion",
        "--never-recurse-to",
    ):
        assert flag in out
        assert "METADNS_DNS_" + flag[2:].replace("-", "_").upper() in out
    assert "169.254.169.250:53" in out


def test_bad_flag_values_are_reported() -> None:
    result = subprocess.run([sys.executable, "-m", "dns_svc", "--recurse", "not-an-ip"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "not-an-ip" in result.stderr


@pytest.mark.one_loop
async def test_answers_file_mode_reloads_and_stops_cleanly(tmp_path: Path) -> None:
    answers = tmp_path / "answers.yaml"
    answers.write_text(
        json.dumps(
            {
                "default": {
                    "authoritative": ["corp.internal"],
                    "a": {"app.corp.internal.": {"answer": ["10.0.0.1"]}},
                    "cname": {"www.corp.internal.": {"answer": "app.corp.internal."}},
                    "ptr": {"10.0.0.1": {"answer": "app.corp.internal."}},
                    "txt": {"app.corp.internal.": {"answer": ["v=1"]}},
                }
            }
        )
    )
    env = {
        **os.environ,
        "METADNS_DNS_LISTEN": "127.0.0.1:0",  # the port the service picks: it says which
        "METADNS_DNS_ANSWERS": str(answers),
        "METADNS_DNS_RESOLV_CONF": "/nonexistent",
        "METADNS_DNS_STATE_FILE": "",
        "METADNS_DNS_GC_FREEZE_INTERVAL": "0.2",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dns_svc", env=env, stderr=asyncio.subprocess.PIPE
    )
    lines = ProcessLog(proc.stderr)
    try:
        address = await listening_address(lines)
        async with asyncio.timeout(20):
            while True:
                try:
                    reply = await ask(address, "app.corp.internal", timeout=0.3)
                    break
                except (dns.exception.Timeout, OSError):
                    await asyncio.sleep(0.1)
        assert addresses(reply) == ["10.0.0.1"]
        www = await ask(address, "www.corp.internal")
        assert addresses(www) == ["10.0.0.1"]
        assert str(www.answer[0][0].target) == "app.corp.internal."
        ptr = await ask(address, "1.0.0.10.in-addr.arpa", "PTR")
        assert str(ptr.answer[0][0].target) == "app.corp.internal."
        assert rcode(await ask(address, "nope.corp.internal")) == "NXDOMAIN"
        answers.write_text(
            "default:\n  authoritative: [corp.internal]\n  a: {app.corp.internal.: {answer: [10.0.0.2]}}\n"
        )
        async with asyncio.timeout(10):
            while addresses(await ask(address, "app.corp.internal")) != ["10.0.0.2"]:
                await asyncio.sleep(0.1)
        answers.write_text("default: [this is: not valid")  # refused: the last good answers stay
        proc.send_signal(signal.SIGHUP)
        await lines.wait_for("event=answers_rejected", str(answers))
        assert addresses(await ask(address, "app.corp.internal")) == ["10.0.0.2"]
    finally:
        log = await stop(proc, lines)
    assert "event=answers_rejected" in log
    assert str(answers) in log
    assert "event=gc_full_pass" in log  # the collector schedule runs in the real process


@pytest.mark.one_loop
async def test_workers_share_the_port_and_each_follows_metadata(dns_fleet_file: Path, tmp_path: Path) -> None:
    """--workers 2: two processes on one port (SO_REUSEPORT); after a fleet change every query,
    whichever worker the kernel hands it to, sees the new address."""
    import yaml

    from tests.support.metadata import run_metadata

    async with run_metadata(dns_fleet_file) as md:
        proc, lines, [port] = await dns_process_on_free_ports(
            lambda port: (f"--listen=127.0.0.1:{port}", "--workers=2", f"--metadata-url={md.url}/2016-07-29"),
            ready=2,  # workers share one fixed port: picked here, another one on a clash
        )
        address = ("127.0.0.1", port)

        async def all_answer(expected: str, rounds: int = 40) -> bool:
            for _ in range(rounds):  # each query from a fresh socket: spread over the workers
                reply = await ask(address, "shop-db-1.rancher.internal", timeout=0.5)
                if addresses(reply) != [expected]:
                    return False
            return True

        try:
            async with asyncio.timeout(20):
                while True:
                    try:
                        if await all_answer("127.0.0.21"):
                            break
                    except (dns.exception.Timeout, OSError):
                        pass
                    await asyncio.sleep(0.1)
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            assert len(children) == 2
            data = yaml.safe_load(dns_fleet_file.read_text())
            next(c for c in data["containers"] if c["name"] == "shop-db-1")["primary_ip"] = "127.0.0.24"
            dns_fleet_file.write_text(yaml.safe_dump(data))
            async with asyncio.timeout(10):
                while not await all_answer("127.0.0.24"):
                    await asyncio.sleep(0.05)
            assert await all_answer("127.0.0.24", rounds=100)
        finally:
            log = await stop(proc, lines)
    assert "event=workers_started workers=2" in log
    assert log.count("event=answers_updated") >= 4
    # with several workers every line names its process: two workers' pids, and the parent's

    pids = set(re.findall(r"logger=dns(?:\.\w+)? pid=(\d+)", log))
    assert len(pids) >= 3


@pytest.mark.one_loop
async def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """The port held for both protocols, TCP listening, while the service tries to take it."""
    with hold_port() as held:
        assert held.tcp is not None
        held.tcp.listen()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dns_svc",
            f"--listen=127.0.0.1:{held.port}",
            "--metadata-url=",
            "--state-file=",
            "--resolv-conf=/nonexistent",
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1
    text = err.decode()
    assert "event=cannot_listen" in text
    assert "Traceback" not in text
    assert len(text.strip().splitlines()) <= 2


def test_metadns_help_goes_to_stdout_and_an_unknown_command_is_named() -> None:

    ok = subprocess.run([sys.executable, "-m", "consumers", "--help"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0
    assert "metadns render" in ok.stdout
    assert not ok.stderr
    bad = subprocess.run([sys.executable, "-m", "consumers", "rendr"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2
    assert "unknown command 'rendr'" in bad.stderr


@pytest.mark.one_loop
async def test_a_second_dns_service_on_the_same_state_file_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "dns-kept.json"
    env = {**os.environ, "METADNS_DNS_RESOLV_CONF": "/nonexistent"}
    args = [sys.executable, "-m", "dns_svc", "--metadata-url=http://127.0.0.1:1/2016-07-29", f"--state-file={state}"]
    first = await asyncio.create_subprocess_exec(
        *args, f"--listen=127.0.0.1:{free_port()}", "--workers=2", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert first.stderr is not None
        async with asyncio.timeout(15):
            while b"event=workers_started" not in await first.stderr.readline():
                pass
        second = subprocess.run(
            [*args, f"--listen=127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=30, env=env
        )
        assert second.returncode == 1
        assert f"{state} is in use by another running instance (pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        await asyncio.wait_for(first.wait(), 15)
