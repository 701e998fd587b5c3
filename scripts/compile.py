"""Compile the DNS hot path with mypyc into the venv (``dns_svc/compiled.py`` says how it is used),
and the listener's recvmmsg/sendmmsg extension (``dns_svc/_mmsg.c``; ``dns_svc/mmsg.py``).

    .venv/bin/python scripts/compile.py            # build when the sources changed since the last build
    .venv/bin/python scripts/compile.py --strict   # a build that cannot be made is an error (CI)

The build runs on a copy of the sources in a temporary directory, so nothing compiled ever lands
beside the sources; the result and its manifest are written to ``<sys.prefix>/metadns-compiled``
in one rename; the extension likewise to ``<sys.prefix>/metadns-native``, each rebuilt only when
its own sources changed. Without a C compiler or Python's headers, or when mypyc fails, the
pure-Python modules (and ``recvfrom``/``sendto``) stay in use and one line says why (an error with
``--strict``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dns_svc import mmsg  # noqa: E402
from dns_svc.compiled import HOT_MODULES, PACKAGES, build_dir, manifest, source_digest  # noqa: E402

# mypyc reads this instead of pyproject.toml: the build needs the types, not the house rules.
MYPY_CONFIG = """[mypy]
python_version = {version}
[mypy-dnslib.*,aiodns.*,pycares.*]
ignore_missing_imports = True
"""


def missing_tools() -> list[str]:
    missing = []
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]  # what setuptools will run
    if shutil.which(compiler) is None:
        missing.append("a C compiler (Debian: gcc)")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        missing.append("Python's headers (Debian: python3-dev)")
    try:
        import mypyc  # noqa: F401
    except ImportError:
        missing.append("mypyc (pip: mypy)")
    return missing


def build(digest: str) -> None:
    target = build_dir()
    with tempfile.TemporaryDirectory(prefix="metadns-compile-") as tmp:
        work = Path(tmp)
        for package in PACKAGES:
            shutil.copytree(ROOT / package, work / package, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        (work / "mypy.ini").write_text(MYPY_CONFIG.format(version=f"{sys.version_info[0]}.{sys.version_info[1]}"))
        sources = [str(Path(*name.split(".")).with_suffix(".py")) for name in HOT_MODULES]
        done = subprocess.run(
            [sys.executable, "-m", "mypyc", *sources], cwd=work, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            raise RuntimeError("mypyc failed: " + " | ".join(tail))
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        files: dict[str, str] = {}
        staged = work / "out"
        for name in HOT_MODULES:
            relative = Path(*name.split(".")).with_suffix("").as_posix() + suffix
            (staged / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(work / relative, staged / relative)
            files[name] = relative
        for shared_lib in work.glob(f"*__mypyc{suffix}"):  # the one library every module above calls into
            shutil.copy2(shared_lib, staged / shared_lib.name)
            files[shared_lib.name.removesuffix(suffix)] = shared_lib.name
        (staged / "manifest.json").write_text(json.dumps({"digest": digest, "files": files}, indent=1))
        _swap_in(staged, target)


def _swap_in(staged: Path, target: Path) -> None:
    """Put a finished build where the loader looks, replacing the one there: the old one stays
    whole until the new one is in place."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    shutil.move(str(staged), str(target))
    shutil.rmtree(old, ignore_errors=True)


# Run in a child interpreter so that the compiler's output can be kept out of sight unless it fails.
BUILD_EXT = """import sys
from setuptools import Distribution, Extension
source, out = sys.argv[1], sys.argv[2]
ext = Extension("dns_svc._mmsg", [source], extra_compile_args=["-O2", "-Wall"])
dist = Distribution({"name": "metadns-mmsg", "ext_modules": [ext]})
dist.script_args = ["build_ext", "--build-lib", out + "/lib", "--build-temp", out + "/tmp"]
dist.parse_command_line()
dist.run_commands()
"""


def native_manifest() -> dict[str, Any]:
    try:
        found = json.loads((mmsg.build_dir() / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def build_native(digest: str) -> None:
    """``dns_svc/_mmsg.c`` into ``<sys.prefix>/metadns-native`` with its manifest, in one rename."""
    target = mmsg.build_dir()
    with tempfile.TemporaryDirectory(prefix="metadns-native-") as tmp:
        work = Path(tmp)
        done = subprocess.run(
            [sys.executable, "-c", BUILD_EXT, str(mmsg.SOURCE), str(work)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            lines = (done.stdout + done.stderr).strip().splitlines()
            errors = [line for line in lines if "error" in line.lower()]  # the compiler's, before the traceback
            raise RuntimeError("the C build failed: " + " | ".join((errors or lines)[:5]))
        name = "_mmsg" + sysconfig.get_config_var("EXT_SUFFIX")
        staged = work / "out"
        staged.mkdir()
        shutil.copy2(work / "lib" / "dns_svc" / name, staged / name)
        (staged / "manifest.json").write_text(json.dumps({"digest": digest, "file": name}, indent=1))
        _swap_in(staged, target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strict", action="store_true", help="fail when the build cannot be made")
    parser.add_argument(
        "--native-only",
        action="store_true",
        help="only the recvmmsg/sendmmsg extension (seconds), for the pure-Python modules' tests",
    )
    args = parser.parse_args()
    digest = source_digest(ROOT)
    native_digest = mmsg.source_digest()
    native_current = native_manifest().get("digest") == native_digest
    if (args.native_only or manifest().get("digest") == digest) and native_current:
        return 0
    missing = missing_tools()
    if missing:
        print(
            f"compile: not built, missing {', '.join(missing)}; the pure-Python modules and recvfrom/sendto are used",
            file=sys.stderr,
        )
        return 1 if args.strict else 0
    failed = False
    if not native_current:
        try:
            build_native(native_digest)
        except (RuntimeError, OSError) as exc:
            print(f"compile: recvmmsg/sendmmsg not built ({exc}); the listener uses recvfrom/sendto", file=sys.stderr)
            failed = True
    if args.native_only or manifest().get("digest") == digest:
        return 1 if failed and args.strict else 0
    started = time.monotonic()
    print(f"compile: building {len(HOT_MODULES)} modules with mypyc into {build_dir()}", file=sys.stderr)
    try:
        build(digest)
    except (RuntimeError, OSError) as exc:
        print(f"compile: not built ({exc}); the pure-Python modules are used", file=sys.stderr)
        return 1 if args.strict else 0
    print(f"compile: built in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
