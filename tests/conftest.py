from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.metadata import RunningMetadata, run_metadata

if TYPE_CHECKING:
    from tests.support.upstream import Unbound

DATA = Path(__file__).parent / "data"


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """The DNS service's tests run twice: on uvloop, the loop production runs (``dns-svc`` picks
    it), and on plain asyncio. The two differ where it hurts (a socket error stops a uvloop
    reader watcher for good; asyncio keeps calling it). A test marked ``one_loop`` drives only
    real ``dns-svc`` processes, which pick their loop themselves: it runs once."""
    if not item.path.name.startswith(("test_dns_", "test_stub_")) or item.get_closest_marker("one_loop"):
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The ``slow`` tests first, each file's in its order: scripts/test.sh's workers take the tests
    from one queue in this order (``--dist load --maxschedchunk 1``), so that the long ones start
    at once side by side and the short ones fill in around them, instead of one long test
    starting last and running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def fleet_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    shutil.copy(DATA / "fleet.yaml", path)
    return path


@pytest.fixture
async def metadata(fleet_file: Path, tmp_path: Path) -> AsyncIterator[RunningMetadata]:
    async with run_metadata(fleet_file, tmp_path / "state" / "kept.json", self_host="host-a") as running:
        yield running


@pytest.fixture(scope="session")
def shared_unbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unbound]:
    """One unbound per test process: it answers only from its static zone, so no test can change
    what another one is answered (its queries are not logged: ``log_queries`` needs one's own)."""
    from tests.support.upstream import run_unbound

    with run_unbound(tmp_path_factory.mktemp("unbound")) as server:
        yield server


@pytest.fixture
def unbound(shared_unbound: Unbound) -> Iterator[Unbound]:
    """The shared unbound, for a test that does not stop it (``stoppable_unbound`` is one's own)."""
    assert shared_unbound.process.poll() is None, "the shared unbound was stopped by an earlier test"
    yield shared_unbound
    assert shared_unbound.process.poll() is None, "a test stopped the shared unbound: use stoppable_unbound"


@pytest.fixture
def stoppable_unbound(tmp_path: Path) -> Iterator[Unbound]:
    """An unbound of this test's own, which it may stop."""
    from tests.support.upstream import run_unbound

    with run_unbound(tmp_path / "unbound") as server:
        yield server


@pytest.fixture
def dns_fleet_file(tmp_path: Path) -> Path:
    import yaml

    from tests.support.fleets import dns_fleet

    path = tmp_path / "dns-fleet.yaml"
    path.write_text(yaml.safe_dump(dns_fleet()))
    return path


@pytest.fixture
async def fleet_stack(dns_fleet_file: Path, tmp_path: Path, unbound):
    """The real metadata service on the DNS fleet, the real DNS service following it, and a real
    unbound as the default upstream."""
    from dns_svc.follower import version_index
    from metadata_svc.keys import STORE
    from tests.support.dns import run_dns, wait_for_version

    async with (
        run_metadata(dns_fleet_file, self_host="host-a") as md,
        run_dns(metadata_url=f"{md.url}/2016-07-29", recurse=(unbound.address,)) as server,
    ):
        await wait_for_version(server, version_index(md.app[STORE].snapshot.version))
        yield md, server
