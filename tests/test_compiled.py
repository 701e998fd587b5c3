"""The mypyc build of the DNS hot path (``dns_svc/compiled.py``, ``scripts/compile.py``): used all
or nothing, never in place of edited sources, and really used where the test run says it is.

``scripts/test.sh`` runs the whole suite on the pure-Python modules (``METADNS_PURE_PYTHON=1``,
which is also what the coverage floor measures), then builds the compiled modules and runs the
DNS tests again on them with ``METADNS_EXPECT_COMPILED=1``."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import shutil
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
