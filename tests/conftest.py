from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.metadata import RunningMetadata, run_metadata

DATA = Path(__file__).parent / "data"


@pytest.fixture
def fleet_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    shutil.copy(DATA / "fleet.yaml", path)
    return path


@pytest.fixture
async def metadata(fleet_file: Path, tmp_path: Path) -> AsyncIterator[RunningMetadata]:
    async with run_metadata(fleet_file, tmp_path / "state" / "kept.json", self_host="host-a") as running:
        yield running
