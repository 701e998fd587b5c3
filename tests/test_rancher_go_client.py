"""A real Rancher client (go-rancher-metadata from Debian, built with Debian's Go in GOPATH mode)
talks to the metadata service unchanged: NewClientAndWait, GetSelfContainer, GetServices, OnChange."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.metadata import run_metadata
from tests.support.tools import require_tool

pytestmark = pytest.mark.external_tool

GOPATH = "/usr/share/gocode"
SOURCE = Path(__file__).parent / "go" / "rancherclient" / "main.go"


@pytest.fixture(scope="module")
def client_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = require_tool("go")
    library = Path(GOPATH) / "src/github.com/rancher/go-rancher-metadata/metadata"
    if not library.exists():
        require_tool("go-rancher-metadata", str(library))
    work = tmp_path_factory.mktemp("goclient")
    shutil.copy(SOURCE, work / "main.go")
    env = {**os.environ, "GOPATH": GOPATH, "GO111MODULE": "off", "GOCACHE": str(work / "cache")}
    subprocess.run(
        [go, "build", "-o", str(work / "client"), str(work / "main.go")],
        env=env,
        check=True,
        cwd=work,
        capture_output=True,
        timeout=300,
    )
    return work / "client"


async def test_go_rancher_metadata_client_works_unchanged(client_binary: Path, tmp_path: Path) -> None:
    fleet = yaml.safe_load((Path(__file__).parent / "data" / "fleet.yaml").read_text())
    fleet["containers"][0]["primary_ip"] = "127.0.0.1"  # the Go client connects from 127.0.0.1
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump(fleet))
    async with run_metadata(fleet_file) as md:
        proc = await asyncio.create_subprocess_exec(
            str(client_binary), f"{md.url}/2016-07-29", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        try:
            facts: dict[str, Any] = {}
            versions: list[str] = []

            async def read_until(kind: str, count: int = 1) -> None:
                async with asyncio.timeout(30):
                    while kind not in facts or (kind == "version" and len(versions) < count):
                        line = await proc.stdout.readline()  # type: ignore[union-attr]
                        if not line:
                            err = await proc.stderr.read()  # type: ignore[union-attr]
                            raise AssertionError(f"client exited: {err.decode()[-2000:]}")
                        fact = json.loads(line)
                        facts[fact["kind"]] = fact["value"]
                        if fact["kind"] == "version":
                            versions.append(fact["value"])

            await read_until("version")
            assert "error" not in facts
            assert facts["self"] == {
                "name": "shop-web-1",
                "ip": "127.0.0.1",
                "stack": "shop",
                "service": "web",
                "host": "host-a",
            }
            assert facts["self_service"] == {"name": "web", "token": "web-secret", "containers": 2}
            assert sorted(facts["services"]) == sorted(
                ["shop/web=", "shop/log=", "shop/db=", "infra/cache=", "shop/payments="]
            )
            assert facts["web_containers"] == 2
            async with md.client() as s, s.get("/latest/version") as r:
                assert versions == [await r.text()]

            fleet["containers"][1]["primary_ip"] = "127.0.0.15"
            fleet_file.write_text(yaml.safe_dump(fleet))
            await read_until("version", 2)  # OnChange fires after a fleet change
            async with md.client() as s, s.get("/latest/version") as r:
                assert versions[1] == await r.text() != versions[0]
        finally:
            proc.kill()
            await proc.wait()
