"""The kept copy of a fleet that changes by objects: a snapshot and a log of changes beside it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from shared.fleet_changes import diff_fleets
from shared.fleet_index import FleetIndex
from shared.kept_copy import KeptCopy
from shared.model import Fleet


def fleet(ip: str, *extra: str) -> Fleet:
    containers: list[dict[str, Any]] = [{"name": "web-1", "uuid": "c1", "primary_ip": ip}]
    containers += [{"name": f"x-{i}", "uuid": f"x{i}", "primary_ip": address} for i, address in enumerate(extra)]
    return Fleet.from_mapping({"stacks": [{"name": "shop"}], "containers": containers})


async def follow(kept: KeptCopy, index: FleetIndex, new: Fleet, version: int) -> None:
    changes = diff_fleets(index, new)
    index.apply(changes)
    await kept.save_soon(index, version, changes)


async def test_versions_go_to_the_log_and_replay_over_the_snapshot(tmp_path: Path) -> None:
    kept = KeptCopy(tmp_path / "kept.json", keep_every=0.0, flush_every=0.01)
    index = FleetIndex.of(fleet("10.0.0.1"))
    await kept.save_soon(index, 10)  # no changes known: a snapshot
    await kept.flush()
    snapshot = (tmp_path / "kept.json").read_bytes()
    for version, ip in enumerate(["10.0.0.2", "10.0.0.3", "10.0.0.4"], start=11):
        await follow(kept, index, fleet(ip, "10.1.0.1"), version)
    await asyncio.sleep(0.05)
    assert (tmp_path / "kept.json").read_bytes() == snapshot  # a version costs a line, not the fleet
    assert len((tmp_path / "kept.json.log").read_bytes().splitlines()) == 3
    loaded, at = kept.load()
    assert at == 13
    assert loaded.digest == index.digest
    c1 = loaded.container("c1")
    assert c1 is not None
    assert c1.primary_ip == "10.0.0.4"


async def test_a_line_cut_by_a_crash_leaves_the_versions_before_it(tmp_path: Path) -> None:
    kept = KeptCopy(tmp_path / "kept.json", keep_every=0.0, flush_every=0.01)
    index = FleetIndex.of(fleet("10.0.0.1"))
    await kept.save_soon(index, 10)
    await kept.flush()
    await follow(kept, index, fleet("10.0.0.2"), 11)
    await kept.flush()
    await follow(kept, index, fleet("10.0.0.3"), 12)
    await kept.flush()
    log = tmp_path / "kept.json.log"
    log.write_bytes(log.read_bytes()[:-7])  # the last line half written
    loaded, at = kept.load()
    assert at == 11
    c1 = loaded.container("c1")
    assert c1 is not None
    assert c1.primary_ip == "10.0.0.2"


async def test_a_log_grown_past_its_share_is_folded_into_a_new_snapshot(tmp_path: Path) -> None:
    kept = KeptCopy(tmp_path / "kept.json", keep_every=0.0, flush_every=0.01, snapshot_every=0.0)
    index = FleetIndex.of(fleet("10.0.0.1"))
    await kept.save_soon(index, 10)
    await kept.flush()
    await follow(kept, index, fleet("10.0.0.2"), 11)  # the snapshot is older than snapshot_every
    await kept.flush()
    assert not (tmp_path / "kept.json.log").exists()
    loaded, at = kept.load()
    assert at == 11
    assert loaded.digest == index.digest
