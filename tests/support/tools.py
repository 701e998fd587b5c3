"""Real external programs and privileges for the tests. In CI a missing one fails the test instead
of skipping it. Tests that need them carry the ``external_tool`` or ``needs_root`` marker, so
``pytest -m "not needs_root"`` runs what an unprivileged machine can."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str, *paths: str) -> str:
    """The path of program ``name``; skip locally, fail when ``CI=true``, if it is not installed."""
    for candidate in (shutil.which(name), *paths):
        if candidate and os.path.exists(candidate):
            return candidate
    message = f"{name} is not installed (scripts/bootstrap.sh installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_root(why: str) -> None:
    """Skip locally, fail when ``CI=true``, unless the tests run as root (``why`` says for what)."""
    if os.geteuid() == 0:
        return
    message = f"{why} needs root"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)
