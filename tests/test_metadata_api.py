"""The metadata HTTP API against the real service: paths, formats, self, secrets, errors."""

from __future__ import annotations

import json

import yaml
from yarl import URL

from tests.support.metadata import RunningMetadata

JSON = {"Accept": "application/json"}
YAML = {"Accept": "application/yaml"}


async def get(md: RunningMetadata, path: str, source_ip: str = "127.0.0.1", **headers: str) -> tuple[int, str]:
    async with md.client(source_ip) as s, s.get(URL(path, encoded=True), headers=headers) as r:
        return r.status, await r.text()


async def test_index_lists_versions_in_text_and_json(metadata: RunningMetadata) -> None:
    assert await get(metadata, "/") == (200, "2015-07-25\n2015-12-19\n2016-07-29\nlatest\n")
    _status, body = await get(metadata, "/", **JSON)
    assert json.loads(body)["2015-12-19"] == "/2015-12-19"
    assert json.loads(body)["latest"] == "/latest"


async def test_latest_text_listing_marks_collections(metadata: RunningMetadata) -> None:
    status, body = await get(metadata, "/latest")
    assert status == 200
    lines = body.splitlines()
    assert lines == sorted(lines)
    assert {"containers/", "services/", "stacks/", "hosts/", "self/", "version", "name", "uuid"} <= set(lines)


async def test_scalar_text_has_no_newline_and_json_is_quoted(metadata: RunningMetadata) -> None:
    assert await get(metadata, "/latest/name") == (200, "test-env")
    assert await get(metadata, "/latest/name", **JSON) == (200, '"test-env"')
    assert await get(metadata, "/latest/name", **YAML) == (200, "test-env\n...\n")


async def test_arrays_by_index_name_and_uuid(metadata: RunningMetadata) -> None:
    by_index = await get(metadata, "/latest/stacks/shop/services/web/containers/0/primary_ip")
    by_name = await get(metadata, "/latest/containers/shop-web-1/primary_ip")
    by_uuid = await get(metadata, "/latest/containers/c-web-1/primary_ip")
    assert by_index == by_name == by_uuid == (200, "127.0.0.11")
    _, body = await get(metadata, "/latest/containers")
    assert body.splitlines()[:2] == ["0=shop-web-1", "1=shop-web-2"]
    _status, body = await get(metadata, "/latest/containers/0/ports")
    assert body == "0\n"
    assert await get(metadata, "/latest/containers/0/ports/0") == (200, "0.0.0.0:80:8080/tcp")


async def test_path_lookup_retries_in_lower_case(metadata: RunningMetadata) -> None:
    assert await get(metadata, "/latest/stacks/Shop/services/Web/name") == (200, "web")


async def test_json_and_yaml_of_a_subtree_agree(metadata: RunningMetadata) -> None:
    _, as_json = await get(metadata, "/latest/services/web", **JSON)
    _, as_yaml = await get(metadata, "/latest/services/web", **YAML)
    parsed = json.loads(as_json)
    assert parsed == yaml.safe_load(as_yaml)
    assert parsed["kind"] == "service"
    assert [c["name"] for c in parsed["containers"]] == ["shop-web-1", "shop-web-2"]
    assert parsed["sidekicks"] == ["log"]
    assert parsed["metadata"] == {"answer": 42}


async def test_dated_versions_differ_as_rancher_did(metadata: RunningMetadata) -> None:
    _, old = await get(metadata, "/2015-07-25/services/Web", **JSON)
    _, mid = await get(metadata, "/2015-12-19/services/Web", **JSON)
    _, new = await get(metadata, "/2016-07-29/services/web", **JSON)
    assert json.loads(old)["containers"] == ["Shop-Web-1", "Shop-Web-2"]  # name lists, case kept
    assert [c["name"] for c in json.loads(mid)["containers"]] == ["Shop-Web-1", "Shop-Web-2"]
    assert [c["name"] for c in json.loads(new)["containers"]] == ["shop-web-1", "shop-web-2"]
    # ports without an IP: the host's agent IP in 2015-07-25, 0.0.0.0 from 2016-07-29 on
    assert await get(metadata, "/2015-07-25/containers/Shop-Web-1/ports/0") == (200, "127.0.1.1:80:8080/tcp")
    assert await get(metadata, "/2016-07-29/containers/shop-web-1/ports/0") == (200, "0.0.0.0:80:8080/tcp")
    _, stacks_old = await get(metadata, "/2015-07-25/stacks/Shop/services", **JSON)
    assert json.loads(stacks_old) == ["Web", "log", "db", "payments"]


async def test_self_depends_on_the_source_address(metadata: RunningMetadata) -> None:
    assert await get(metadata, "/latest/self/container/name", "127.0.0.11") == (200, "shop-web-1")
    assert await get(metadata, "/latest/self/container/name", "127.0.0.31") == (200, "infra-cache-1")
    assert await get(metadata, "/latest/self/service/name", "127.0.0.31") == (200, "cache")
    assert await get(metadata, "/latest/self/stack/name", "127.0.0.11") == (200, "shop")
    assert await get(metadata, "/latest/self/host/name", "127.0.0.12") == (200, "host-b")
    assert await get(metadata, "/latest/self/host/name", "127.0.0.11") == (200, "host-a")


async def test_unknown_client_gets_only_the_host_in_self(metadata: RunningMetadata) -> None:
    assert await get(metadata, "/latest/self", "127.0.0.99") == (200, "host/\n")
    assert await get(metadata, "/latest/self/host/name", "127.0.0.99") == (200, "host-a")
    status, body = await get(metadata, "/latest/self/container", "127.0.0.99")
    assert (status, body) == (404, "Not found\n")


async def test_token_shows_only_under_the_owners_self_service(metadata: RunningMetadata) -> None:
    assert await get(metadata, "/latest/self/service/token", "127.0.0.11") == (200, "web-secret")
    assert await get(metadata, "/latest/self/service/token", "127.0.0.21") == (200, "db-secret")
    for ip in ("127.0.0.11", "127.0.0.21", "127.0.0.31", "127.0.0.99"):
        for path in ("/latest", "/2015-07-25", "/2015-12-19"):
            _status, body = await get(metadata, path, ip, **JSON)
            tree = json.loads(body)
            own = tree["self"].pop("service", {}).get("token")
            assert "web-secret" not in json.dumps(tree) or own == "web-secret"
            assert "db-secret" not in json.dumps(tree)
            assert own in (
                None,
                "web-secret" if ip == "127.0.0.11" else None,
                "db-secret" if ip == "127.0.0.21" else None,
            )
    # the client with token A never sees token B, even through its own stack
    _, stack = await get(metadata, "/latest/self/stack", "127.0.0.11", **JSON)
    assert "secret" not in stack


async def test_fleet_document_has_everything_but_secrets(metadata: RunningMetadata) -> None:
    status, body = await get(metadata, "/metadns/v1/fleet", "127.0.0.11")
    doc = json.loads(body)
    assert status == 200
    assert doc["version"] == (await get(metadata, "/latest/version"))[1]
    assert len(doc["fleet"]["containers"]) == 5
    assert "secret" not in body


async def test_not_found_in_each_format(metadata: RunningMetadata) -> None:
    assert await get(metadata, "/latest/nope") == (404, "Not found\n")
    status, body = await get(metadata, "/latest/nope", **JSON)
    assert (status, json.loads(body)) == (404, {"code": 404, "message": "Not found", "type": "error"})
    status, body = await get(metadata, "/latest/containers/99", **YAML)
    assert (status, yaml.safe_load(body)) == (404, {"code": 404, "message": "Not found", "type": "error"})
    assert (await get(metadata, "/favicon.ico"))[0] == 404


async def test_malformed_path_is_400(metadata: RunningMetadata) -> None:
    status, body = await get(metadata, "/latest/containers/%zz")
    assert status == 400
    assert body.startswith("Bad request")
    status, body = await get(metadata, "/latest/containers/%ff%fe", **JSON)
    assert status == 400
    assert json.loads(body)["code"] == 400
    status, _ = await get(metadata, "/latest/a%00b")
    assert status == 400


async def test_version_header_and_cors_on_every_answer(metadata: RunningMetadata) -> None:
    async with metadata.client() as s, s.get("/latest/version") as r:
        version = await r.text()
        assert r.headers["X-Metadns-Version"] == version
        assert int(r.headers["X-Metadns-Index"]) == int(version.split("-")[0])
        assert r.headers["Access-Control-Allow-Origin"] == "*"
    async with metadata.client() as s, s.head("/latest/version") as r:
        assert r.status == 200


async def test_xff_is_ignored_unless_enabled(metadata: RunningMetadata) -> None:
    headers = {"X-Forwarded-For": "127.0.0.21"}
    assert await get(metadata, "/latest/self/container/name", "127.0.0.11", **headers) == (200, "shop-web-1")


async def test_healthz_and_status(metadata: RunningMetadata) -> None:
    status, body = await get(metadata, "/healthz")
    assert status == 200
    assert json.loads(body)["status"] == "ok"
    assert "shop" not in body.lower()
    status, page = await get(metadata, "/status")
    assert status == 200
    assert "<table>" in page
    assert "<td>5</td>" in page
