"""The mypyc build of the DNS hot path (``dns_svc/compiled.py``, ``scripts/compile.py``): used all
or nothing, never in place of edited sources, and really used where the test run says it is.

``scripts/test.sh`` runs the whole suite on the pure-Python modules (``METADNS_PURE_PYTHON=1``,
which is also what the coverage floor measures), then builds the compiled modules and runs the
DNS tests again on them with ``METADNS_EXPECT_COMPILED=1``."""

from __future__ import annotations

import asyncio
import importlib
import importlib.machinery
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dns_svc.compiled import HOT_MODULES, PACKAGES, build_dir, is_compiled, manifest, source_digest

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import importlib, dns_svc.compiled as c\n"
    "kinds = {importlib.import_module(n) is not None and c.is_compiled(n) for n in c.HOT_MODULES}\n"
    "print(','.join(sorted(map(str, kinds))))\n"
)


def loaded_kinds() -> set[bool]:
    """For the hot modules of this process: True for a compiled one, False for a source file."""
    return {importlib.import_module(name) is not None and is_compiled(name) for name in HOT_MODULES}


def test_the_hot_modules_are_all_compiled_or_all_source() -> None:
    kinds = loaded_kinds()
    assert len(kinds) == 1, "a mix of compiled and source modules could run old code"
    if os.environ.get("METADNS_EXPECT_COMPILED"):
        assert kinds == {True}, f"no compiled build for these sources in {build_dir()}: run scripts/compile.py"
    if os.environ.get("METADNS_PURE_PYTHON"):
        assert kinds == {False}


def probe(tree: Path, **env: str) -> str:
    """Which kind of hot modules a fresh interpreter imports from the sources in ``tree``."""
    clean = {k: v for k, v in os.environ.items() if k not in ("METADNS_PURE_PYTHON", "PYTHONPATH")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tree,
        env={**clean, "PYTHONPATH": str(tree), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


@pytest.mark.compiled_build
def test_an_edited_source_is_never_shadowed_by_a_stale_build(tmp_path: Path) -> None:
    """The build is used for exactly the sources it was made from; one edited line in any file
    of the packages, a hot module or not, and the sources are imported instead."""
    if source_digest(ROOT) != manifest().get("digest"):
        pytest.fail(f"no compiled build for these sources in {build_dir()}: run scripts/compile.py")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    assert probe(tmp_path) == "True"  # the same sources: the build
    assert probe(tmp_path, METADNS_PURE_PYTHON="1") == "False"
    for edited in ("dns_svc/wire.py", "shared/logs.py"):
        path = tmp_path / edited
        original = path.read_text()
        path.write_text(original + "\n# edited\n")
        assert probe(tmp_path) == "False", edited
        path.write_text(original)
    assert probe(tmp_path) == "True"


def test_a_build_that_cannot_be_made_is_one_line_and_the_sources_stay(tmp_path: Path) -> None:
    """Without a C compiler: one line saying so; an error only with --strict. Run on a copy whose
    digest matches no build, so that the real build is never touched."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "compile.py", tmp_path / "scripts" / "compile.py")
    (tmp_path / "dns_svc" / "wire.py").write_text((tmp_path / "dns_svc" / "wire.py").read_text() + "\n# edited\n")
    env = {**os.environ, "PATH": str(tmp_path / "no-tools")}
    for flags, code in (([], 0), (["--strict"], 1)):
        done = subprocess.run(
            [sys.executable, str(tmp_path / "scripts" / "compile.py"), *flags],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == code, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1
        assert "C compiler" in lines[0]
        assert "pure-Python" in lines[0]


LAUNCH = (
    "import sys, runpy\n"
    "sys.prefix = sys.argv.pop(1)  # where dns_svc.compiled looks for the build\n"
    "runpy.run_module('dns_svc', run_name='__main__', alter_sys=True)\n"
)


async def start_lines(prefix: Path) -> list[str]:
    """The log lines of the real DNS service, started with its build looked for under
    ``prefix``, up to its ``listening`` line; then it is stopped."""
    env = {k: v for k, v in os.environ.items() if k != "METADNS_PURE_PYTHON"}
    env.update(METADNS_DNS_STATE_FILE="", METADNS_DNS_RESOLV_CONF="/nonexistent")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LAUNCH,
        str(prefix),
        "--listen=127.0.0.1:0",
        "--metadata-url=http://127.0.0.1:1/2016-07-29",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not lines or "event=listening" not in lines[-1]:
                line = await process.stderr.readline()
                assert line, f"exited before listening: {lines}"
                lines.append(line.decode().strip())
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
    return lines


async def test_a_stale_build_is_one_warning_at_start(tmp_path: Path) -> None:
    """A build made from other sources is not loaded (above); the service says so once, at
    start, instead of running the hot path as plain Python without a word. No build at all is
    a choice and says nothing; either way ``listening`` says which modules run."""
    stale = tmp_path / "stale"
    (stale / "metadns-compiled").mkdir(parents=True)
    (stale / "metadns-compiled" / "manifest.json").write_text(json.dumps({"digest": "0" * 64, "files": {}}))
    lines = await start_lines(stale)
    warnings = [line for line in lines if "event=compiled_build_unused" in line]
    assert len(warnings) == 1, lines
    assert "level=warning" in warnings[0]
    assert f"build={stale / 'metadns-compiled'}" in warnings[0]
    assert "fix=scripts/compile.py" in warnings[0]
    assert "compiled=False" in lines[-1]

    lines = await start_lines(tmp_path / "never-built")
    assert not [line for line in lines if "compiled_build" in line], lines
    assert "compiled=False" in lines[-1]


DRIVES_DNS = ("run_dns(", "dns_process(", "fleet_stack", "DnsServer(")  # in process, or the real dns-svc


def test_every_test_file_that_drives_the_dns_server_runs_compiled_too() -> None:
    """scripts/test.sh's compiled pass names every test file that starts the DNS service (in
    process or as one), so that none tests only the pure-Python modules."""
    script = (ROOT / "scripts" / "test.sh").read_text().replace("\\\n", " ")
    [command] = [line for line in script.splitlines() if "METADNS_EXPECT_COMPILED=1" in line]
    compiled = {p.name for arg in command.split() if arg.startswith("tests/") for p in ROOT.glob(arg)}
    assert "test_dns_local.py" in compiled
    driving = {
        path.name
        for path in (ROOT / "tests").glob("test_*.py")
        if path.name != Path(__file__).name and any(mark in path.read_text() for mark in DRIVES_DNS)
    }
    assert driving - compiled == set()
