"""The kept copy of a fleet that changes by objects: a snapshot and a log of changes beside it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from shared.fleet_changes import diff_fleets
from shared.fleet_index import FleetIndex
from shared.kept_copy import KeptCopy
from shared.model import Fleet, FleetError


def fleet(ip: str, *extra: str) -> Fleet:
    containers: list[dict[str, Any]] = [{"name": "web-1", "uuid": "c1", "primary_ip": ip}]
    containers += [{"name": f"x-{i}", "uuid": f"x{i}", "primary_ip": address} for i, address in enumerate(extra)]
    return Fleet.from_mapping({"stacks": [{"name": "shop"}], "containers": containers})


async def follow(kept: KeptCopy, index: FleetIndex, new: Fleet, version: int, applied: str = "") -> None:
    changes = diff_fleets(index, new)
    index.apply(changes)
    await kept.save_soon(index, version, changes, version=applied)


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


async def test_a_snapshot_is_trusted_only_while_it_arrives_at_its_digest(tmp_path: Path) -> None:
    """A snapshot as written is rebuilt without validating it again; one edited since (its
    digest no longer matches) or without a digest is validated, and refused when invalid."""
    path = tmp_path / "kept.json"
    kept = KeptCopy(path, keep_every=0.0)
    await kept.save_in_background(fleet("10.0.0.1", "10.0.0.9"), 4)
    loaded, at = kept.load()
    assert (at, loaded.digest) == (4, fleet("10.0.0.1", "10.0.0.9").digest)
    assert isinstance(loaded, FleetIndex)  # the trusted path: no Fleet validated in between

    doc = json.loads(path.read_text())
    doc["fleet"]["containers"][0]["stack_name"] = "nowhere"  # dangles: whole validation refuses it
    path.write_text(json.dumps(doc))
    with pytest.raises(FleetError, match=r"kept copy invalid.*nowhere"):
        kept.load()

    doc["fleet"]["containers"][0]["stack_name"] = "shop"
    del doc["digest"]  # a copy without one: validated, and used
    path.write_text(json.dumps(doc))
    loaded, at = kept.load()
    assert isinstance(loaded, Fleet)
    assert {c.stack_name for c in loaded.containers} >= {"shop"}


async def test_a_line_that_does_not_arrive_at_its_digest_is_taken_back(tmp_path: Path) -> None:
    kept = KeptCopy(tmp_path / "kept.json", keep_every=0.0, flush_every=0.01)
    index = FleetIndex.of(fleet("10.0.0.1"))
    await kept.save_soon(index, 10, version="10-aaa")
    await kept.flush()
    await follow(kept, index, fleet("10.0.0.2"), 11, "11-bbb")  # the version applied, kept with the line
    await kept.flush()
    await follow(kept, index, fleet("10.0.0.3", "10.1.0.1"), 12, "12-ccc")
    await kept.flush()
    log = tmp_path / "kept.json.log"
    lines = log.read_bytes().splitlines()
    last = json.loads(lines[-1])
    last["version"] = "12-" + "0" * 64  # whole, but not what its changes arrive at
    log.write_bytes(b"\n".join([*lines[:-1], json.dumps(last).encode()]) + b"\n")
    loaded, at = kept.load()
    assert at == 11
    assert kept.version == "11-bbb"
    assert {c.uuid: c.primary_ip for c in loaded.containers} == {"c1": "10.0.0.2"}  # x0 taken back
    assert loaded.digest == fleet("10.0.0.2").digest
