"""Real external programs for the tests. In CI a missing one fails the test instead of skipping it."""

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
