"""The DNS hot path compiled with mypyc, used only when it was built from exactly these sources.

``scripts/compile.py`` compiles ``HOT_MODULES`` into ``<sys.prefix>/metadns-compiled/`` (the
venv's, never the source tree) with a manifest naming the digest of every source file of
``dns_svc`` and ``shared`` it was built from. At import, ``install`` compares that digest with
the sources being imported: any difference (one edited line anywhere in either package, another
Python) and nothing compiled is loaded, so a stale build can never stand in for edited code; the
pure-Python modules are used instead, as they are with ``METADNS_PURE_PYTHON=1``. All or
nothing: compiled modules call each other natively, so a mix could run old code.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

from shared.logs import log_event

# The modules every query runs through; they compile without changes (mypy --strict clean).
HOT_MODULES = (
    "dns_svc.wire",
    "dns_svc.answers",
    "dns_svc.tally",
    "dns_svc.respond",
    "dns_svc.query",
    "dns_svc.replies.entry",
    "dns_svc.replies.store",
    "dns_svc.replies.packets",
    "dns_svc.chain",
    "dns_svc.resolver",
    "dns_svc.transport",
    "dns_svc.steps.cache.step",
    "dns_svc.steps.local.step",
    "dns_svc.steps.authority.step",
    "dns_svc.steps.upstream.channel",
    "dns_svc.steps.upstream.pool",
)
PACKAGES = ("dns_svc", "shared")  # every source file of these goes into the digest
PURE_ENV = "METADNS_PURE_PYTHON"


def build_dir() -> Path:
    return Path(sys.prefix) / "metadns-compiled"


def source_digest(root: Path) -> str:
    """The digest of every ``.py`` file of ``PACKAGES`` under ``root``, and of the interpreter."""
    digest = hashlib.sha256(sys.version.encode())
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class CompiledFinder:
    """Finds the compiled modules (and mypyc's shared library) before the source files."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


def manifest() -> dict[str, Any]:
    """The build's manifest (``digest``, ``files``); empty when there is no complete build."""
    try:
        found = json.loads((build_dir() / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}  # never built, or half written
    return found if isinstance(found, dict) else {}


# What ``install`` found: "compiled" (the build is used), "pure" (METADNS_PURE_PYTHON), "none"
# (never built), "stale" (built from other sources), "incomplete" (files of the build missing).
_state = "none"


def install() -> bool:
    """Put the compiled build in front of the sources when it matches them; True when it does."""
    global _state
    if os.environ.get(PURE_ENV):
        _state = "pure"
        return False
    if any(isinstance(finder, CompiledFinder) for finder in sys.meta_path):
        _state = "compiled"
        return True
    built = manifest()
    if not built:
        _state = "none"
        return False
    if built.get("digest") != source_digest(Path(__file__).resolve().parent.parent):
        _state = "stale"  # made from other sources: the sources are used
        return False
    files = {name: build_dir() / relative for name, relative in built.get("files", {}).items()}
    if not files or not all(file.is_file() for file in files.values()):
        _state = "incomplete"
        return False
    sys.meta_path.insert(0, CompiledFinder(files))
    _state = "compiled"
    return True


def state() -> str:
    """What ``install`` found (see ``_state``)."""
    return _state


def warn_if_unused(log: logging.Logger) -> bool:
    """One WARNING line at start when a build exists but is not loaded: without it an edit since
    the last ``scripts/compile.py`` silently runs the hot path as plain Python, several times
    slower. True when it warned. No build at all, or ``METADNS_PURE_PYTHON``, is a choice, and
    says nothing (the ``listening`` line's ``compiled=`` tells which modules run)."""
    if _state not in ("stale", "incomplete"):
        return False
    log_event(
        log,
        logging.WARNING,
        "compiled_build_unused",
        build=str(build_dir()),
        reason="built from other sources" if _state == "stale" else "files of the build missing",
        fix="scripts/compile.py",
    )
    return True


def in_use() -> bool:
    """True when the hot modules are the compiled ones."""
    return all(is_compiled(name) for name in HOT_MODULES)


def is_compiled(name: str) -> bool:
    """True when module ``name`` was imported from the build."""
    module = sys.modules.get(name)
    return module is not None and isinstance(module.__loader__, importlib.machinery.ExtensionFileLoader)
