"""Reload of the fleet file: good data swapped in, bad data refused with one clear line,
the last good copy kept on disk and served after a restart."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import yaml

from metadata_svc.keys import STORE
from tests.support.logs import logged_fields
from tests.support.metadata import RunningMetadata, run_metadata


async def text(md: RunningMetadata, path: str, source_ip: str = "127.0.0.1") -> str:
    async with md.client(source_ip) as s, s.get(path) as r:
        return await r.text()


async def wait_for(predicate, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.02)


def rejections(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    return [f for f in logged_fields(caplog) if f.get("event") == "fleet_rejected"]


async def test_good_change_is_served(metadata: RunningMetadata, fleet_file: Path) -> None:
    store = metadata.app[STORE]
    before = store.index
    data = yaml.safe_load(fleet_file.read_text())
    data["containers"].append(
        {
            "name": "Shop-Web-3",
            "stack_name": "Shop",
            "service_name": "Web",
            "primary_ip": "127.0.0.14",
            "host_uuid": "host-a",
        }
    )
    fleet_file.write_text(yaml.safe_dump(data))
    await wait_for(lambda: store.index == before + 1)
    assert await text(metadata, "/latest/self/container/name", "127.0.0.14") == "shop-web-3"
    assert await text(metadata, "/latest/services/web/scale") == "3"
    assert await text(metadata, "/latest/services/web/containers/2/name") == "shop-web-3"


async def test_identical_data_keeps_the_version(metadata: RunningMetadata, fleet_file: Path) -> None:
    store = metadata.app[STORE]
    version = store.snapshot.version
    reloads = store.last_reload
    data = yaml.safe_load(fleet_file.read_text())
    fleet_file.write_text(yaml.safe_dump(data, sort_keys=True) + "\n# only a comment changed\n")
    await wait_for(lambda: store.last_reload is not reloads)
    assert store.last_reload is not None
    assert store.last_reload.message == "unchanged"
    assert store.snapshot.version == version


@pytest.mark.parametrize(
    ("broken", "where", "problem"),
    [
        ("stacks: [{name: a}\nservices: [", "line 2", "bad YAML"),
        ("", "fleet", "the document is empty"),  # `: > fleet.yaml` used to wipe every name
        ("# nothing but a comment\n", "fleet", "the document is empty"),
        ("{}\n", "fleet", "no 'containers' key"),
        ("- a\n- b\n", "fleet", "top level must be a mapping"),
        ("containers: []\n", None, None),  # an empty fleet said explicitly is valid: the control case
    ],
    ids=["bad-yaml", "empty-file", "only-a-comment", "empty-mapping", "a-list", "explicitly-empty-is-valid"],
)
async def test_yaml_errors_name_the_line(
    metadata: RunningMetadata,
    fleet_file: Path,
    caplog: pytest.LogCaptureFixture,
    broken: str,
    where: str | None,
    problem: str | None,
) -> None:
    store = metadata.app[STORE]
    before = store.snapshot.version
    caplog.set_level(logging.INFO)
    fleet_file.write_text(broken)
    await wait_for(
        lambda: (
            store.last_reload is not None
            and store.last_reload.at > 0
            and (rejections(caplog) or store.snapshot.version != before)
        )
    )
    if where is None:
        assert store.snapshot.version != before
        assert rejections(caplog) == []
        return
    [line] = rejections(caplog)
    assert problem is not None
    assert str(fleet_file) in line["where"]
    assert where in line["where"]
    assert problem in line["problem"]
    assert store.snapshot.version == before
    assert await text(metadata, "/latest/containers/shop-db-1/primary_ip") == "127.0.0.21"


@pytest.mark.parametrize(
    ("mutate", "where", "problem"),
    [
        (
            lambda d: d["containers"][3].update(service_name="nosuch"),
            "containers[3] name=Shop-db-1 (line 2",
            "service 'nosuch' does not exist in stack 'Shop'",
        ),
        (
            lambda d: d["containers"][4].update(uuid="c-web-1"),
            "containers[4] name=infra-cache-1",
            "duplicate container uuid 'c-web-1'",
        ),
        (
            lambda d: d["containers"][0].update(primary_ip="not-an-ip"),
            "containers[0] name=Shop-Web-1",
            "not an IP address",
        ),
        (
            lambda d: d["services"][0]["links"].update({"Shop/gone": "x"}),
            "services[0] name=Web",
            "link target 'Shop/gone' is not a service",
        ),
    ],
    ids=["missing-service", "duplicate-uuid", "bad-ip", "dangling-link"],
)
async def test_invalid_fleet_is_refused_and_old_data_served(
    metadata: RunningMetadata, fleet_file: Path, caplog: pytest.LogCaptureFixture, mutate, where: str, problem: str
) -> None:
    store = metadata.app[STORE]
    before = store.snapshot.version
    data = yaml.safe_load(fleet_file.read_text())
    mutate(data)
    fleet_file.write_text(yaml.safe_dump(data, default_flow_style=False))
    await wait_for(lambda: bool(rejections(caplog)))
    [line] = rejections(caplog)
    assert line["where"].startswith(f"{fleet_file} {where.split(' (')[0]}")
    if "(line" in where:
        assert "(line " in line["where"]
    assert problem in line["problem"]
    assert store.snapshot.version == before
    assert await text(metadata, "/latest/self/container/name", "127.0.0.11") == "shop-web-1"
    assert "REJECTED" in await text(metadata, "/status")


async def test_restart_serves_the_kept_copy_when_the_source_is_unreadable(fleet_file: Path, tmp_path: Path) -> None:
    kept = tmp_path / "kept" / "metadata.json"
    async with run_metadata(fleet_file, kept) as md:
        version = await text(md, "/latest/version")
    assert kept.exists()
    fleet_file.write_text("containers: [this is not: valid")
    async with run_metadata(fleet_file, kept) as md:
        assert await text(md, "/latest/version") == version  # same data, same version
        assert await text(md, "/latest/containers/shop-web-1/primary_ip") == "127.0.0.11"
    fleet_file.unlink()
    async with run_metadata(fleet_file, kept) as md:
        assert await text(md, "/latest/version") == version


async def test_versions_move_forward_across_restarts(fleet_file: Path, tmp_path: Path) -> None:
    kept = tmp_path / "kept.json"
    async with run_metadata(fleet_file, kept) as md:
        first = int((await text(md, "/latest/version")).split("-")[0])
    data = yaml.safe_load(fleet_file.read_text())
    data["containers"].pop()
    fleet_file.write_text(yaml.safe_dump(data))
    async with run_metadata(fleet_file, kept) as md:
        async with asyncio.timeout(10):  # the kept copy is served at once, the file read next
            while (second := int((await text(md, "/latest/version")).split("-")[0])) == first:
                await asyncio.sleep(0.01)
    assert second > first
