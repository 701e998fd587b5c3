"""compose.yaml is valid against the Compose specification's JSON schema and has the production
shape: DNS in the metadata service's network namespace, 169.254.169.250 on ports 80 and 53, the
fleet mounted read-only, built from the project's Dockerfile. No Docker engine runs here, so the
schema (shipped inside docker-compose's wheel on PyPI) is the judge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "compose-spec"


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    wheels = sorted(CACHE.glob("docker_compose-*.whl"))
    if not wheels:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(CACHE),
                        "docker-compose==1.29.2"], check=True, timeout=300)
        wheels = sorted(CACHE.glob("docker_compose-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        return json.loads(wheel.read("compose/config/compose_spec.json"))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())  # type: ignore[no-any-return]


def test_compose_file_matches_the_specification(compose_schema: dict[str, Any], compose: dict[str, Any]) -> None:
    jsonschema.Draft201909Validator(compose_schema).validate(compose)


def test_schema_rejects_a_broken_compose_file(compose_schema: dict[str, Any], compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["dns"]["network_mode"] = ["not", "a", "string"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft201909Validator(compose_schema).validate(broken)


def test_production_shape(compose: dict[str, Any]) -> None:
    metadata, dns = compose["services"]["metadata"], compose["services"]["dns"]
    assert dns["network_mode"] == "service:metadata"
    assert "--listen=169.254.169.250:80" in metadata["command"]
    assert "--listen=169.254.169.250:53" in dns["command"]
    assert metadata["build"]["dockerfile"] == "Dockerfile" and (ROOT / "Dockerfile").exists()
    assert dns["image"] == metadata["image"]
    # the fleet's directory is mounted, not the file: a bind-mounted file never sees a rename
    data = next(arg.split("=", 1)[1] for arg in metadata["command"] if arg.startswith("--data="))
    fleet_mount = next(v for v in metadata["volumes"] if v["target"] == data.rsplit("/", 1)[0])
    assert fleet_mount["read_only"] is True and (ROOT / fleet_mount["source"]).is_dir()
    assert (ROOT / fleet_mount["source"] / data.rsplit("/", 1)[1]).is_file()
    assert "NET_ADMIN" in metadata["cap_add"]
    entrypoint = ROOT / "deploy" / "entrypoint.sh"
    assert os.access(entrypoint, os.X_OK) and "169.254.169.250" in entrypoint.read_text()


def test_dockerfile_installs_the_package_and_its_console_scripts() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for path in ("shared", "metadata_svc", "dns_svc", "consumers", "pyproject.toml"):
        assert f"COPY {path}" in dockerfile and (ROOT / path).exists()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'metadata-svc = "metadata_svc.__main__:main"' in pyproject
    assert 'dns-svc = "dns_svc.__main__:main"' in pyproject


def test_the_etcd_variant_matches_the_specification(compose_schema: dict[str, Any]) -> None:
    """compose.etcd.yaml, merged over compose.yaml as `docker compose -f ... -f ...` does (a
    service's keys replaced one by one): valid, following etcd, with an agent per host."""
    base = yaml.safe_load((ROOT / "compose.yaml").read_text())
    variant = yaml.safe_load((ROOT / "compose.etcd.yaml").read_text())
    jsonschema.Draft201909Validator(compose_schema).validate(variant)
    merged = json.loads(json.dumps(base))
    for name, service in variant["services"].items():
        merged["services"][name] = {**merged["services"].get(name, {}), **service}
    jsonschema.Draft201909Validator(compose_schema).validate(merged)
    assert any(a.startswith("--source=etcd://") for a in merged["services"]["metadata"]["command"])
    assert merged["services"]["agent"]["command"][:2] == ["metadns", "register"]
