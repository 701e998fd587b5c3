"""The deployment files are what the README says they are: compose.yaml (and its etcd variant)
valid against the Compose Specification schema and a correct single-host shape; the Kubernetes
manifest valid against the Kubernetes OpenAPI schemas; the entrypoint refusing, in one line, to
start without the link-local address. No Docker engine or cluster runs here, so the schemas
are the judges: the Compose one vendored in tests/data (SOURCES.md says from where), the
Kubernetes ones from ``kubernetes-validate`` (its schemas, strict: unknown fields fail)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.tools import require_root, require_tool

ROOT = Path(__file__).resolve().parent.parent
ADDRESS = "169.254.169.250"
KUBERNETES = "1.30.0"


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    return json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())  # type: ignore[no-any-return]


def validate_compose(schema: dict[str, Any], document: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(schema).validate(document)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())  # type: ignore[no-any-return]


def test_the_vendored_schema_is_the_compose_specification(compose_schema: dict[str, Any]) -> None:
    assert compose_schema["$id"] == "compose_spec.json"
    assert compose_schema["title"] == "Compose Specification"
    assert "compose-spec.json" in (ROOT / "tests" / "data" / "SOURCES.md").read_text()


def test_compose_file_matches_the_specification(compose_schema: dict[str, Any], compose: dict[str, Any]) -> None:
    validate_compose(compose_schema, compose)


def test_schema_rejects_a_broken_compose_file(compose_schema: dict[str, Any], compose: dict[str, Any]) -> None:
    for service, key, bad in (
        ("dns", "network_mode", ["not", "a", "string"]),
        ("metadata", "restrat", "always"),
        ("metadata", "healthcheck", {"test": "x", "interval": 10, "bogus": 1}),
    ):
        broken = json.loads(json.dumps(compose))
        broken["services"][service][key] = bad
        with pytest.raises(jsonschema.ValidationError):
            validate_compose(compose_schema, broken)


def test_single_host_shape(compose: dict[str, Any]) -> None:
    services = compose["services"]
    metadata, dns = services["metadata"], services["dns"]
    assert f"--listen={ADDRESS}:80" in metadata["command"]
    assert f"--listen={ADDRESS}:53" in dns["command"]
    for name, service in services.items():
        # the host's network: containers reach the address through their default route with their own
        # source address, and recreating one service never strands the other in a dead namespace
        assert service["network_mode"] == "host", name
        assert "deploy" not in service, f"{name}: deploy.* is Swarm's; Compose on one host ignores it"
        assert service["restart"] == "unless-stopped", name
        assert service["user"].split(":")[0] not in ("0", "root"), name
        assert service["cap_drop"] == ["ALL"], name
        assert service["cap_add"] == ["NET_BIND_SERVICE"], name
        assert service["read_only"] is True, name
        test = " ".join(service["healthcheck"]["test"])
        assert "/healthz" in test, name
    assert "http://127.0.0.1:9153/healthz" in " ".join(dns["healthcheck"]["test"])
    assert "--http-listen=127.0.0.1:9153" in dns["command"]
    assert dns["image"] == metadata["image"]
    assert metadata["build"]["dockerfile"] == "Dockerfile"
    # the fleet's directory is mounted, not the file (a bind-mounted file never sees a rename),
    # from the host's /etc, not from the source tree's examples
    data = next(arg.split("=", 1)[1] for arg in metadata["command"] if arg.startswith("--data="))
    fleet_mount = next(v for v in metadata["volumes"] if v["target"] == data.rsplit("/", 1)[0])
    assert fleet_mount["read_only"] is True
    assert fleet_mount["source"].startswith("/etc/metadns")
    text = (ROOT / "compose.yaml").read_text()
    assert "ip addr add 169.254.169.250/32 dev metadns0" in text  # the host setup, spelled out
    for unit in ("metadns0.netdev", "metadns0.network"):
        assert (ROOT / "deploy" / "host" / unit).is_file()
    assert ADDRESS in (ROOT / "deploy" / "host" / "metadns0.network").read_text()


def test_dockerfile_runs_as_an_unprivileged_user_and_installs_the_console_scripts() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for path in ("shared", "metadata_svc", "dns_svc", "consumers", "pyproject.toml"):
        assert f"COPY {path}" in dockerfile
        assert (ROOT / path).exists()
    user_lines = [line for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert user_lines
    assert user_lines[-1].split()[1] not in ("root", "0")
    assert "setcap cap_net_bind_service=+ep" in dockerfile
    for path in ("setup.py", "scripts/gen_etcd_api.py"):  # the build generates etcd's API modules
        assert path in dockerfile
        assert (ROOT / path).exists()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'metadata-svc = "metadata_svc.__main__:main"' in pyproject
    assert 'dns-svc = "dns_svc.__main__:main"' in pyproject


def test_the_etcd_variant_matches_the_specification(compose_schema: dict[str, Any]) -> None:
    """compose.etcd.yaml, merged over compose.yaml as `docker compose -f ... -f ...` does (a
    service's keys replaced one by one): valid, following etcd, with an agent per host."""
    base = yaml.safe_load((ROOT / "compose.yaml").read_text())
    variant = yaml.safe_load((ROOT / "compose.etcd.yaml").read_text())
    validate_compose(compose_schema, variant)
    merged = json.loads(json.dumps(base))
    for name, service in variant["services"].items():
        merged["services"][name] = {**merged["services"].get(name, {}), **service}
    validate_compose(compose_schema, merged)
    assert any(a.startswith("--source=etcd://") for a in merged["services"]["metadata"]["command"])
    agent = merged["services"]["agent"]
    assert agent["command"][:2] == ["metadns", "register"]
    assert agent["user"].split(":")[0] != "0"


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "metadns.yaml").read_text()))


def test_kubernetes_manifests_match_the_openapi_schemas(manifests: list[dict[str, Any]]) -> None:
    assert {m["kind"] for m in manifests} == {"Namespace", "ConfigMap", "DaemonSet"}
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)


def test_kubernetes_schemas_reject_a_broken_daemonset(manifests: list[dict[str, Any]]) -> None:
    daemonset = next(m for m in manifests if m["kind"] == "DaemonSet")
    for mutate in (
        lambda d: d["spec"]["template"]["spec"].update(hostNetwrok=True),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(livenessProbe={"httpGet": {}}),
        lambda d: d["spec"].pop("selector"),
    ):
        broken = json.loads(json.dumps(daemonset))
        mutate(broken)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_daemonset_is_node_local_on_the_link_local_address(manifests: list[dict[str, Any]]) -> None:
    daemonset = next(m for m in manifests if m["kind"] == "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    containers = {c["name"]: c for c in pod["containers"]}
    assert f"--listen={ADDRESS}:80" in containers["metadata"]["args"]
    assert f"--listen={ADDRESS}:53" in containers["dns"]["args"]
    for container in containers.values():
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["capabilities"]["add"] == ["NET_BIND_SERVICE"]
        assert {m["name"] for m in container["volumeMounts"]} >= {"state"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"]["hostPath"]["path"] == "/var/lib/metadns"
    assert volumes["fleet"]["configMap"]["name"] == "metadns-fleet"
    [init] = pod["initContainers"]
    assert "NET_ADMIN" in init["securityContext"]["capabilities"]["add"]
    config = next(m for m in manifests if m["kind"] == "ConfigMap")
    assert yaml.safe_load(config["data"]["fleet.yaml"])["containers"]  # a fleet the service accepts


def _in_own_netns(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run in a network namespace of this test's own (unshare -n): only its loopback exists, and
    no address the test adds or fails to add touches the machine."""
    require_root("a network namespace of the test's own")
    require_tool("unshare")
    return subprocess.run(
        ["unshare", "-n", *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=20, check=False
    )


@pytest.mark.needs_root
@pytest.mark.external_tool
def test_the_entrypoint_refuses_without_the_address_in_one_line() -> None:
    entrypoint = str(ROOT / "deploy" / "entrypoint.sh")
    script = f"ip link set lo up; {entrypoint} echo started"
    refused = _in_own_netns(["sh", "-c", script], {"METADNS_LINK_DEV": "nosuchdev"})
    assert refused.returncode == 1
    assert "started" not in refused.stdout
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1
    assert ADDRESS in lines[0]
    assert "nosuchdev" in lines[0]
    added = _in_own_netns(["sh", "-c", script], {"METADNS_LINK_DEV": "lo"})
    assert added.returncode == 0
    assert added.stdout.strip() == "started"
    present = _in_own_netns(
        ["sh", "-c", f"ip link set lo up; ip addr add {ADDRESS}/32 dev lo; {entrypoint} echo started"],
        {"METADNS_LINK_DEV": "nosuchdev"},
    )
    assert present.returncode == 0
    assert present.stdout.strip() == "started"
