"""``metadns render`` against the real metadata service, the real DNS service and unbound."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumers.render.command import RenderLoop, RenderSettings
from consumers.render.pools import check_mcrouter, pool_template
from metadata_svc.keys import STORE
from tests.support.logs import logged_fields

pytestmark = pytest.mark.external_tool


def settings_for(fleet_stack, tmp_path: Path, template: object, **overrides: object) -> RenderSettings:
    md, server = fleet_stack
    path = tmp_path / "template.json"
    path.write_text(json.dumps(template) if not isinstance(template, str) else template)
    values: dict[str, object] = {
        "output": str(tmp_path / "out.json"),
        "template": str(path),
        "dns": (f"{server.address[0]}:{server.address[1]}",),
        "metadata_url": f"{md.url}/2016-07-29",
        "once": True,
        "poll_interval": 0.05,
    }
    values.update(overrides)
    return RenderSettings(**values)  # type: ignore[arg-type]


def servers(path: str) -> list[str]:
    return json.loads(Path(path).read_text())["pools"]["A"]["servers"]  # type: ignore[no-any-return]


def failures(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    return [f for f in logged_fields(caplog) if f.get("event") == "render_failed"]


async def test_every_token_kind_expands_in_place(fleet_stack, tmp_path: Path) -> None:
    template = {
        "pools": {
            "A": {
                "servers": [
                    "dns://shop-db-1.rancher.internal",
                    "10.9.9.9:1234",
                    "dns+5432://db.shop.rancher.internal",
                    "dnssrv://_web._tcp.shop.rancher.internal",
                    "metadata://shop/web",
                    "metadata://infra/cache:9999",
                    "dns://shop-db-1.rancher.internal",
                ]
            }
        },
        "route": "PoolRoute|A",
    }
    s = settings_for(fleet_stack, tmp_path, template)
    assert await RenderLoop(s).run() == 0
    assert servers(s.output) == [
        "127.0.0.21:11211",
        "10.9.9.9:1234",
        "127.0.0.21:5432",
        "127.0.0.11:8080",
        "127.0.0.12:8080",  # SRV: priority, then target name
        "127.0.0.11:8080",
        "127.0.0.12:8080",  # healthy containers only, the service's port
        "127.0.0.31:9999",
        "127.0.0.21:11211",
    ]  # no de-duplication
    assert json.loads(Path(s.output).read_text())["route"] == "PoolRoute|A"


async def test_order_is_stable_whatever_the_resolver_returns(fleet_stack, tmp_path: Path) -> None:
    template = {"pools": {"A": {"servers": ["dns://many.infra.rancher.internal"]}}, "route": "PoolRoute|A"}
    outputs = []
    for i in range(4):  # the DNS service rotates the 40 A records on every answer
        s = settings_for(fleet_stack, tmp_path, template, output=str(tmp_path / f"out{i}.json"))
        assert await RenderLoop(s).run() == 0
        outputs.append(servers(s.output))
    assert all(o == outputs[0] for o in outputs)
    assert outputs[0] == [f"127.0.1.{i}:11211" for i in range(1, 41)]


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("dns+abc://db.shop.rancher.internal", "port 'abc' is not a number"),
        ("dns+70000://db.shop.rancher.internal", "port '70000' is not a number"),
        ("dns://nope.rancher.internal", "does not exist (NXDOMAIN)"),
        ("dns://web.shop.rancher.internal.", None),  # control: a good token renders
        ("dnssrv://_nope._tcp.shop.rancher.internal", "does not exist (NXDOMAIN)"),
        ("metadata://shop/nosuch", "no service shop/nosuch"),
        ("metadata://just-a-stack", "expected metadata://stack/service"),
    ],
    ids=["port-abc", "port-70000", "nxdomain", "good", "srv-nxdomain", "no-service", "bad-metadata"],
)
async def test_bad_tokens_leave_the_output_untouched(
    fleet_stack, tmp_path: Path, caplog: pytest.LogCaptureFixture, token: str, problem: str | None
) -> None:
    output = tmp_path / "out.json"
    output.write_text("previous\n")
    template = {"pools": {"A": {"servers": [token]}}, "route": "PoolRoute|A"}
    code = await RenderLoop(settings_for(fleet_stack, tmp_path, template)).run()
    if problem is None:
        assert code == 0
        assert servers(str(output)) == ["127.0.0.11:11211", "127.0.0.12:11211"]
        return
    assert code == 1
    assert output.read_text() == "previous\n"
    [line] = failures(caplog)
    assert token in line["problem"]
    assert problem in line["problem"]


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{not json", "line 1 column 2"),
        ("", "empty template"),
        (
            {"pools": {"A": {"servers": "dns://web.shop.rancher.internal"}}, "route": "PoolRoute|A"},
            "must be inside a list",
        ),
        ({"pools": {}, "route": "PoolRoute|A"}, "not a valid mcrouter config"),
        ({"pools": {"A": {"servers": ["nonsense"]}}, "route": "PoolRoute|A"}, "is not host:port"),
    ],
    ids=["bad-json", "empty", "token-outside-list", "no-pools", "bad-server"],
)
async def test_template_errors(
    fleet_stack, tmp_path: Path, caplog: pytest.LogCaptureFixture, template: object, problem: str
) -> None:
    s = settings_for(fleet_stack, tmp_path, template)
    assert await RenderLoop(s).run() == 1
    assert not Path(s.output).exists()
    [line] = failures(caplog)
    assert problem in line["problem"]


async def test_fleet_change_is_rendered_by_the_long_poll(fleet_stack, dns_fleet_file: Path, tmp_path: Path) -> None:
    """The DNS schedule is set to a minute, so only the metadata long-poll can trigger the re-render."""
    md, _ = fleet_stack
    marker = tmp_path / "changed"
    template = {"pools": {"A": {"servers": ["metadata://shop/web"]}}, "route": "PoolRoute|A"}
    s = settings_for(
        fleet_stack,
        tmp_path,
        template,
        once=False,
        ttl_min=60.0,
        ttl_max=60.0,
        mode=0o640,
        on_change=f"echo x >> {marker}",
    )
    loop = RenderLoop(s)
    task = asyncio.create_task(loop.run())
    try:
        async with asyncio.timeout(10):
            while not Path(s.output).exists():
                await asyncio.sleep(0.02)
        assert servers(s.output) == ["127.0.0.11:8080", "127.0.0.12:8080"]
        assert stat.S_IMODE(os.stat(s.output).st_mode) == 0o640
        data = yaml.safe_load(dns_fleet_file.read_text())
        next(c for c in data["containers"] if c["name"] == "shop-web-1")["primary_ip"] = "127.0.0.16"
        dns_fleet_file.write_text(yaml.safe_dump(data))
        async with asyncio.timeout(5):
            while "127.0.0.16:8080" not in Path(s.output).read_text():
                await asyncio.sleep(0.02)
        assert servers(s.output) == ["127.0.0.16:8080", "127.0.0.12:8080"]  # container order, not address order
        async with asyncio.timeout(5):  # --on-change after each new output
            while marker.read_text().count("x") < 2:
                await asyncio.sleep(0.02)
        # a fleet change that does not touch these servers re-renders the same text: no write
        writes, renders = loop.output.writes, loop.renders
        store = md.app[STORE]
        index = store.index
        data["containers"][-1]["labels"] = {"unrelated": "yes"}
        dns_fleet_file.write_text(yaml.safe_dump(data))
        async with asyncio.timeout(5):
            while store.index == index:
                await asyncio.sleep(0.02)
        async with asyncio.timeout(5):
            while loop.renders == renders:
                await asyncio.sleep(0.02)
        assert loop.output.writes == writes
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_template_change_is_rendered(fleet_stack, tmp_path: Path) -> None:
    first = ["dns://shop-db-1.rancher.internal"]
    template: dict[str, Any] = {"pools": {"A": {"servers": first}}, "route": "PoolRoute|A"}
    s = settings_for(fleet_stack, tmp_path, template, once=False, ttl_min=60.0, ttl_max=60.0)
    loop = RenderLoop(s)
    task = asyncio.create_task(loop.run())
    try:
        async with asyncio.timeout(10):
            while not Path(s.output).exists():
                await asyncio.sleep(0.02)
        template["pools"]["A"]["servers"].append("dns+6379://shop-web-3.rancher.internal")
        Path(s.template).write_text(json.dumps(template))
        async with asyncio.timeout(5):
            while servers(s.output) != ["127.0.0.21:11211", "127.0.0.13:6379"]:
                await asyncio.sleep(0.02)
        failures = loop.failures
        Path(s.template).write_text("{broken")  # a broken edit keeps the last good output
        async with asyncio.timeout(5):  # until the broken template has been read and refused
            while loop.failures == failures:
                await asyncio.sleep(0.02)
        assert servers(s.output) == ["127.0.0.21:11211", "127.0.0.13:6379"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


class EditedDuringFirstRender(RenderLoop):
    """The template is edited while the first render runs (after it was read): an operator's
    edit right after the start."""

    def __init__(self, settings: RenderSettings, edited: dict[str, Any]) -> None:
        super().__init__(settings)
        self.edited = edited

    async def render_once(self, renderer):
        rendered = await super().render_once(renderer)
        if self.renders == 1:
            Path(self.settings.template).write_text(json.dumps(self.edited))
        return rendered


async def test_a_template_edited_during_the_first_render_is_rendered(fleet_stack, tmp_path: Path) -> None:
    template: dict[str, Any] = {"pools": {"A": {"servers": ["dns://shop-db-1.rancher.internal"]}}}
    edited = {
        "pools": {"A": {"servers": ["dns://shop-db-1.rancher.internal", "dns+6379://shop-web-3.rancher.internal"]}}
    }
    s = settings_for(fleet_stack, tmp_path, template, once=False, ttl_min=60.0, ttl_max=60.0)
    loop = EditedDuringFirstRender(s, edited)
    task = asyncio.create_task(loop.run())
    try:
        async with asyncio.timeout(10):  # the edit is noticed and rendered (renders counts before the write)
            while not Path(s.output).exists() or servers(s.output) != ["127.0.0.21:11211", "127.0.0.13:6379"]:
                await asyncio.sleep(0.02)
        assert loop.renders >= 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_pool_setups_are_valid_mcrouter_configs() -> None:
    sharded = pool_template("sharded", "10.0.0.1:11211")
    replicated = pool_template("replicated", "10.0.0.1:11211")
    assert check_mcrouter(sharded) == []
    assert check_mcrouter(replicated) == []
    assert sharded["route"] == "PoolRoute|A"
    policies = replicated["route"]["operation_policies"]
    assert policies["get"] == "LatestRoute|Pool|A"
    assert policies["set"] == "AllSyncRoute|Pool|A"
    assert check_mcrouter({"pools": {"A": {"servers": ["10.0.0.1:99999"]}}, "route": "x"})
    assert check_mcrouter({"pools": {"A": {"servers": ["10.0.0.1:1"]}}})


async def test_pool_setup_from_metadata(fleet_stack, tmp_path: Path) -> None:
    s = settings_for(fleet_stack, tmp_path, {}, pool_setup="replicated", servers="metadata://infra/cache")
    s = RenderSettings(**{**s.__dict__, "template": ""})
    assert await RenderLoop(s).run() == 0
    config = json.loads(Path(s.output).read_text())
    assert config["pools"]["A"]["servers"] == ["127.0.0.31:11211"]
    assert config["route"]["type"] == "OperationSelectorRoute"


def test_render_command_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = Path(sys.executable).parent / "metadns"  # the console script the package installs
    result = subprocess.run([str(script), "render", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "dnssrv://" in result.stdout
    assert "METADNS_RENDER_OUTPUT" in result.stdout
    repair_help = subprocess.run([str(script), "redis-repair", "--help"], capture_output=True, text=True)
    assert repair_help.returncode == 0
    assert "--nodes-conf" in repair_help.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "consumers",
            "render",
            "--template",
            "t.json",
            "--output",
            str(tmp_path / "x.json"),
            "--mode",
            "0999",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    logging.getLogger().debug("ok")
