"""The ``metadata-svc`` command as a user runs it: --help, environment twins, SIGHUP reload."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.support.ports import free_port


def test_help_names_every_flag_and_its_environment_variable() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "metadata_svc", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--listen", "--data", "--xff", "--max-wait", "--state-file", "--self-host"):
        assert flag in out
        assert "METADNS_METADATA_" + flag[2:].replace("-", "_").upper() in out
    assert "169.254.169.250:80" in out


async def test_sighup_reloads_and_env_configures(fleet_file: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "METADNS_METADATA_LISTEN": f"127.0.0.1:{port}",
        "METADNS_METADATA_DATA": str(fleet_file),
        "METADNS_METADATA_STATE_FILE": str(tmp_path / "kept.json"),
        "METADNS_METADATA_POLL_INTERVAL": "3600",
        "METADNS_METADATA_WATCH": "poll",
    }  # only SIGHUP notices
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "metadata_svc", env=env, stderr=asyncio.subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}/latest/containers/shop-db-1/primary_ip"
    try:
        async with aiohttp.ClientSession() as s:
            async with asyncio.timeout(20):
                while True:
                    try:
                        async with s.get(url) as r:
                            assert await r.text() == "127.0.0.21"
                            break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.1)
            data = yaml.safe_load(fleet_file.read_text())
            data["containers"][3]["primary_ip"] = "127.0.0.29"
            fleet_file.write_text(yaml.safe_dump(data))
            await asyncio.sleep(0.3)
            async with s.get(url) as r:
                assert await r.text() == "127.0.0.21"  # not polled yet
            proc.send_signal(signal.SIGHUP)
            async with asyncio.timeout(10):
                while True:
                    async with s.get(url) as r:
                        if await r.text() == "127.0.0.29":
                            break
                    await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await proc.wait()
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    assert "event=fleet_published" in log
    assert log.count("event=fleet_published") == 2


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--xff-trusted", "banana"], {}, "--xff-trusted"),
        (["--log-level", "verbose"], {}, "--log-level"),
        ([], {"METADNS_METADATA_LOG_LEVEL": "verbose"}, "METADNS_METADATA_LOG_LEVEL"),
        ([], {"METADNS_METADATA_MAX_WAIT": "soon"}, "METADNS_METADATA_MAX_WAIT"),
        (["--source", "etcd://"], {}, "--source"),
    ],
)
def test_a_bad_flag_or_variable_is_one_clear_line_and_exit_2(args: list[str], env: dict[str, str], needle: str) -> None:

    proc = subprocess.run(
        [sys.executable, "-m", "metadata_svc", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
    )
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dns_svc_refuses_a_metadata_url_that_is_not_one() -> None:

    proc = subprocess.run(
        [sys.executable, "-m", "dns_svc", "--metadata-url", "notaurl"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert "--metadata-url" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_self_host_the_fleet_does_not_have_is_one_line_and_exit_2(fleet_file: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "metadata_svc",
            "--listen",
            "127.0.0.1:0",
            "--data",
            str(fleet_file),
            "--state-file=",
            "--self-host",
            "nosuch",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if "level=error" in line]
    assert "event=cannot_start" in line
    assert "--self-host nosuch" in line
    assert "host-a, host-b" in line


async def test_a_self_host_that_leaves_the_fleet_is_logged(
    fleet_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import yaml

    from metadata_svc.keys import STORE
    from tests.support.metadata import run_metadata

    async with run_metadata(fleet_file, self_host="host-b") as md:
        assert md.app[STORE].snapshot.self_host_uuid == "host-b"
        data = yaml.safe_load(fleet_file.read_text())
        data["hosts"] = [h for h in data["hosts"] if h["uuid"] != "host-b"]
        for c in data["containers"]:
            if c.get("host_uuid") == "host-b":
                c["host_uuid"] = "host-a"
        fleet_file.write_text(yaml.safe_dump(data))
        async with asyncio.timeout(10):
            while "self_host_missing" not in caplog.text:
                await asyncio.sleep(0.05)
    [fields] = [r.fields for r in caplog.records if r.getMessage() == "self_host_missing"]  # type: ignore[attr-defined]
    assert fields["self_host"] == "host-b"
    assert fields["hosts"] == "host-a"


async def test_a_second_instance_on_the_same_state_file_is_refused(fleet_file: Path, tmp_path: Path) -> None:
    """A trial run must not overwrite the kept copy of an instance already running: the state file
    is locked while a service runs, a second one on it gets one line naming it and exit 1."""
    state = tmp_path / "state" / "kept.json"
    args = [sys.executable, "-m", "metadata_svc", "--listen", "127.0.0.1:0", "--data", str(fleet_file)]
    first = await asyncio.create_subprocess_exec(*args, f"--state-file={state}", stderr=asyncio.subprocess.PIPE)
    try:
        assert first.stderr is not None
        async with asyncio.timeout(15):
            while b"event=listening" not in await first.stderr.readline():
                pass
        second = subprocess.run([*args, f"--state-file={state}"], capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert "Traceback" not in second.stderr
        [line] = [line for line in second.stderr.splitlines() if "level=error" in line]
        assert "event=cannot_start" in line
        assert str(state) in line
        assert f"pid {first.pid}" in line
        other = tmp_path / "other.json"  # its own state file: no conflict
        third = await asyncio.create_subprocess_exec(*args, f"--state-file={other}", stderr=asyncio.subprocess.PIPE)
        assert third.stderr is not None
        async with asyncio.timeout(15):
            while True:
                text = await third.stderr.readline()
                assert text, "the third instance stopped"
                if b"event=listening" in text:
                    break
        third.send_signal(signal.SIGTERM)
        await asyncio.wait_for(third.wait(), 10)
    finally:
        first.send_signal(signal.SIGTERM)
        await asyncio.wait_for(first.wait(), 10)
    # the lock went with its process: a new instance may take the file
    again = subprocess.run(
        [*args, f"--state-file={state}", "--self-host", "nosuch"], capture_output=True, text=True, timeout=30
    )
    assert "in use" not in again.stderr
