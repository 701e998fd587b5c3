"""The structured fields of captured log lines (``log_event`` puts them on each record)."""

from __future__ import annotations

from typing import Any

import pytest


def logged_fields(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [dict(getattr(record, "fields", {})) for record in caplog.records]
