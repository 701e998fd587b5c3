"""The metadata service as an attacker and an unlucky operator find it: half-written files,
forged X-Forwarded-For lines, garbage paths and parameters, an unwritable state directory."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
import yaml
from yarl import URL

from metadata_svc.identity import parse_networks
from metadata_svc.keys import STORE
from tests.support.metadata import RunningMetadata, run_metadata

SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


async def get(
    md: RunningMetadata, path: str, source_ip: str = "127.0.0.1", headers: dict[str, str] | None = None
) -> tuple[int, str]:
    url = URL(md.url + path, encoded=True)  # as written: no re-encoding of a bad escape
    async with md.client(source_ip) as s, s.get(url, headers=headers) as r:
        return r.status, await r.text()


async def wait_for(predicate, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("watch", ["auto", "poll"])
async def test_a_file_still_being_written_is_not_published(fleet_file: Path, watch: str) -> None:
    """A writer that stops half-way (here for 5 polls) must not get its first half served: with
    inotify the file is read once closed; with polling only, once unchanged over two polls."""
    data = yaml.safe_load(fleet_file.read_text())
    containers = data.pop("containers")
    extra = [
        {
            "name": f"late-{i}",
            "stack_name": "Shop",
            "service_name": "db",
            "primary_ip": f"127.0.0.{90 + i}",
            "host_uuid": "host-a",
        }
        for i in range(3)
    ]
    data["containers"] = containers + extra  # last in the file: the first half is a valid fleet too
    whole = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    half = whole[: whole.index("- name: late-1")]
    assert len(yaml.safe_load(half)["containers"]) == len(containers) + 1
    # polling: the pause (0.15 s) is well under one poll interval, so that a slow machine's
    # longer sleep still cannot let two polls see the half file
    poll = 0.05 if watch == "auto" else 1.0
    async with run_metadata(fleet_file, watch=watch, poll_interval=poll) as md:
        store = md.app[STORE]
        before = store.snapshot.version
        await asyncio.sleep(poll / 2)  # polling: the next poll falls inside the writer's pause
        with fleet_file.open("w") as writer:
            writer.write(half)
            writer.flush()
            os.fsync(writer.fileno())
            # inotify: eight polls see the half file unchanged, but it is still open; polling: a
            # pause shorter than one poll interval can never be seen twice
            await asyncio.sleep(0.4 if watch == "auto" else 0.15)
            assert store.snapshot.version == before, store.last_reload
            writer.write(whole[len(half) :])
        await wait_for(lambda: store.snapshot.version != before)
        assert (await get(md, "/latest/containers/late-2/primary_ip"))[1] == "127.0.0.92"
        assert len(store.snapshot.fleet.containers) == len(data["containers"])


async def test_a_file_replaced_by_rename_is_read_at_once(fleet_file: Path) -> None:
    async with run_metadata(fleet_file, poll_interval=3600) as md:  # only inotify can see it this soon
        store = md.app[STORE]
        before = store.snapshot.version
        data = yaml.safe_load(fleet_file.read_text())
        data["containers"][3]["primary_ip"] = "127.0.0.29"
        tmp = fleet_file.with_name(".fleet.yaml.tmp")
        tmp.write_text(yaml.safe_dump(data))
        tmp.rename(fleet_file)
        await wait_for(lambda: store.snapshot.version != before, 3)
        assert (await get(md, "/latest/containers/shop-db-1/primary_ip"))[1] == "127.0.0.29"


async def test_forged_x_forwarded_for_line_before_the_proxys_own(fleet_file: Path) -> None:
    """The db container sends its own X-Forwarded-For naming web-1; the proxy appends a second
    line with the real client. Only the first line was read: db got web's token."""
    from multidict import CIMultiDict

    async with run_metadata(fleet_file, xff=True, xff_trusted=parse_networks(["127.0.0.1/32"])) as md:
        headers = CIMultiDict([("X-Forwarded-For", "127.0.0.11"), ("X-Forwarded-For", "127.0.0.21")])
        async with md.client("127.0.0.1") as s:
            async with s.get("/latest/self/service/token", headers=headers) as r:
                assert await r.text() == "db-secret"
            async with s.get("/latest/self/container/name", headers=headers) as r:
                assert await r.text() == "shop-db-1"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/latest/containers/%C2%B2", 404),  # "²": isdigit() is true, int() refuses it
        ("/latest/containers/" + "9" * 5000, 404),  # int() refuses 5,000 digits
        ("/latest/containers/%C2%B2/name", 404),
        ("/latest/containers/%ZZ", 400),
        ("/latest/version?maxWait=abc", 400),
        ("/latest/version?wait=true&value=x&maxWait=-5", 400),
        ("/latest/version?wait=true&value=x&maxWait=nan", 400),
        ("/latest/version?index=abc", 400),
        ("/latest/version?maxWait=0", 200),
    ],
)
async def test_garbage_paths_and_parameters_are_400_or_404(fleet_file: Path, path: str, status: int) -> None:
    async with run_metadata(fleet_file) as md:
        got, body = await get(md, path)
        assert got == status, body
        assert "Traceback" not in body
        assert "Internal" not in body


async def test_indexes_never_repeat_when_the_kept_copy_cannot_be_written(fleet_file: Path, tmp_path: Path) -> None:
    """State directory unwritable (here: its path runs through a file, which even root cannot
    write below): a restart used to count again from the last copy written, and served index 2
    after having served 4, for other content."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    kept = blocker / "metadata.json"
    served: list[int] = []
    for change in range(3):
        data = yaml.safe_load(fleet_file.read_text())
        data["containers"][3]["primary_ip"] = f"127.0.0.{40 + change}"
        fleet_file.write_text(yaml.safe_dump(data))
        async with run_metadata(fleet_file, kept) as md:
            store = md.app[STORE]
            served.append(store.index)
            data["containers"][3]["primary_ip"] = f"127.0.0.{50 + change}"
            fleet_file.write_text(yaml.safe_dump(data))
            await wait_for(lambda: store.index != served[-1])  # noqa: B023
            served.append(store.index)
            status = (await get(md, "/status"))[1]
            assert "NOT WRITABLE" in status
            assert str(store.index) in status
    assert served == sorted(served), served
    assert len(set(served)) == len(served), served


@pytest.mark.no_cover
@pytest.mark.slow
async def test_the_isolation_audit(fleet_file: Path) -> None:
    """Every path of every API version, asked as every container from its own address, with and
    without --xff (and a header claiming another container): no other service's token, no other
    container's self. Text for every path; JSON and YAML for every collection near the top, whose
    rendering holds everything below it. Who is asking is decided once per request, before the
    path is read: with --xff, the paths near the top (``self`` among them) as text and JSON show
    whose identity was taken, and only without it is every path also asked one by one."""
    data = yaml.safe_load(fleet_file.read_text())
    containers = data["containers"]
    tokens = {(s["stack_name"].lower(), s["name"].lower()): s["token"] for s in data["services"] if s.get("token")}
    formats: tuple[dict[str, str], ...] = ({}, {"Accept": "application/json"}, {"Accept": "application/yaml"})
    checked = 0
    for xff in (False, True):
        async with run_metadata(fleet_file, xff=xff, xff_trusted=parse_networks(["127.0.0.1/32"])) as md:
            store = md.app[STORE]
            for api in ("2015-07-25", "2015-12-19", "2016-07-29", "latest"):
                tree = store.snapshot.default_tree("2016-07-29" if api == "latest" else api)
                # latest is 2016-07-29: its top only
                deep = all_paths(tree) if api != "latest" and not xff else []
                top = [
                    "",
                    "self",
                    "self/container",
                    "self/service",
                    "self/stack",
                    "self/host",
                    *[p for p in all_paths(tree) if p.count("/") <= 1],
                ]
                shown = formats[:2] if xff else formats  # the YAML holds what the JSON does
                asks = [(p, f) for p in top for f in shown] + [(p, formats[0]) for p in deep if p not in top]
                for c in containers:
                    own = (c["stack_name"].lower(), c["service_name"].lower())
                    foreign = [t for key, t in tokens.items() if key != own]
                    others = {o["name"].lower() for o in containers if o is not c}
                    claim = {"X-Forwarded-For": next(o["primary_ip"] for o in containers if o is not c)}
                    for chunk in range(0, len(asks), 200):
                        some = asks[chunk : chunk + 200]
                        requests = [(f"/{api}/{path}", {**accept, **claim}) for path, accept in some]
                        bodies = await pipelined(md.url, c["primary_ip"], requests)
                        for (path, _accept), body in zip(some, bodies, strict=True):
                            checked += 1
                            assert not any(t in body for t in foreign), (api, path, c["name"])
                            if path == "self/container/name":
                                assert body == c["name"].lower() or body == c["name"], (api, c["name"])
                                assert body.lower() not in others
    assert checked > 10000, checked


async def pipelined(url: str, source: str, requests: list[tuple[str, dict[str, str]]]) -> list[str]:
    """The bodies answered to ``requests`` (path, headers), sent at once on one keep-alive
    connection from ``source`` and read back in order, gzip undone; with the headers aiohttp's
    client sends (``Accept: */*``, ``Accept-Encoding: gzip, deflate``). For the audit's ten
    thousand requests: aiohttp's client costs about as much CPU per request as the server."""
    reader, writer = await asyncio.open_connection("127.0.0.1", URL(url).port, local_addr=(source, 0), limit=1 << 22)
    try:
        for path, headers in requests:
            lines = {"Host": "md", "Accept": "*/*", "Accept-Encoding": "gzip, deflate", **headers}
            head = "".join(f"{name}: {value}\r\n" for name, value in lines.items())
            writer.write(f"GET {quote(path)} HTTP/1.1\r\n{head}\r\n".encode())
        bodies = []
        for _ in requests:
            status, *fields = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
            assert status.startswith("HTTP/1.1 "), status
            got = {n.strip().lower(): v.strip() for n, _, v in (f.partition(":") for f in fields if ":" in f)}
            body = await reader.readexactly(int(got["content-length"]))
            bodies.append((gzip.decompress(body) if got.get("content-encoding") == "gzip" else body).decode())
        return bodies
    finally:
        writer.close()


def all_paths(tree: object, prefix: str = "", depth: int = 0) -> list[str]:
    """Every path into ``tree`` (list items by index and by name), bounded in depth."""
    out: list[str] = []
    if depth > 6:
        return out
    if isinstance(tree, dict):
        for key, value in tree.items():
            path = f"{prefix}{key}"
            out.append(path)
            out += all_paths(value, path + "/", depth + 1)
    elif isinstance(tree, list):
        for i, item in enumerate(tree):
            path = f"{prefix}{i}"
            out.append(path)
            if isinstance(item, dict) and item.get("name"):
                out.append(f"{prefix}{item['name']}")
            out += all_paths(item, path + "/", depth + 1)
    return out


async def test_idle_connections_cannot_exhaust_the_service(fleet_file: Path) -> None:
    """The real process under a small open-files limit (300, soft and hard): 300 idle connections
    from ten clients, then a normal request from an eleventh still gets its answer; the
    connections refused are logged. Without limits, accept() failed with EMFILE for everyone."""
    import socket

    from tests.support.metadata import start_metadata, stop

    proc, port = await start_metadata(fleet_file, open_files=300)
    idle: list[socket.socket] = []
    try:
        url = f"http://127.0.0.1:{port}/latest/containers/shop-db-1/primary_ip"
        async with aiohttp.ClientSession() as http, asyncio.timeout(20):
            while True:
                try:
                    async with http.get(url) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        for i in range(300):
            s = socket.socket()
            idle.append(s)  # closed in the finally, whatever happens next
            s.bind((f"127.0.6.{1 + i % 10}", 0))
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
        for _ in range(80):  # and more from one client: the total is taken by now
            s = socket.socket()
            idle.append(s)
            s.bind(("127.0.7.1", 0))
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
        await asyncio.sleep(1.3)  # the idle ones are now idle for more than a second
        connector = aiohttp.TCPConnector(local_addr=("127.0.8.1", 0), force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            for _ in range(5):
                async with http.get(url) as r:
                    assert r.status == 200
                    assert await r.text() == "127.0.0.21"
    finally:
        for s in idle:
            s.close()
        log = await stop(proc, fleet_file)
    assert "event=connection_refused" in log


async def test_one_client_gets_at_most_its_share_of_connections(fleet_file: Path) -> None:
    """Past its cap a client's connections are held, not reset: each one that sends a request is
    answered 429 with Retry-After; another client is served meanwhile."""
    from metadata_svc.keys import GATE

    async with run_metadata(fleet_file, max_connections_per_client=5) as md:
        _host, port = md.url.rsplit(":", 1)
        opened = [await asyncio.open_connection("127.0.0.1", int(port), local_addr=("127.0.9.1", 0)) for _ in range(12)]
        try:
            gate = md.app[GATE]
            await wait_for(lambda: gate.by_peer.get("127.0.9.1") == 5 and gate.refusing == 7)
            assert gate.refused.total == 7
            assert (await get(md, "/latest/containers/shop-db-1/primary_ip", "127.0.9.2"))[1] == "127.0.0.21"
            for reader, writer in opened[5:]:
                writer.write(b"GET /latest/version HTTP/1.1\r\nHost: x\r\n\r\n")
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                assert head.startswith("HTTP/1.1 429 "), head
                assert "Retry-After: 1" in head
                assert b"too many connections" in await reader.read()  # the body, then closed by the server
        finally:
            for _, writer in opened:
                writer.close()


@pytest.mark.no_cover
@pytest.mark.slow
async def test_the_whole_tree_is_rendered_once_and_each_client_sees_its_own_self(tmp_path: Path) -> None:
    """A big tree (sent in pieces, gzip when asked) is the same document for everyone but
    ``self``: rendered once per version, joined with each client's own ``self``."""
    import gzip
    import json

    containers = [
        {
            "name": f"app-{i}",
            "stack_name": "s",
            "service_name": "svc",
            "primary_ip": f"127.0.10.{i + 1}",
            "labels": {"filler": "x" * 1600},  # big in bytes, with few nodes for YAML to walk
        }
        for i in range(50)
    ]
    fleet = {
        "stacks": [{"name": "s"}],
        "services": [{"name": "svc", "stack_name": "s", "token": "svc-token"}],
        "containers": containers,
    }
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(fleet))
    async with run_metadata(path) as md:
        bodies = {}
        for ip in ("127.0.10.1", "127.0.10.2", "127.0.0.1"):
            for accept in ("application/json", "application/yaml"):
                async with md.client(ip) as s, s.get("/latest", headers={"Accept": accept}) as r:
                    raw = await r.read()
                # libyaml's parser where there is one: PyYAML's own takes half a minute on this
                doc = json.loads(raw) if "json" in accept else yaml.load(raw, Loader=SAFE_LOADER)
                assert len(raw) > 64 << 10
                assert len(doc["containers"]) == 50
                own = doc["self"].get("container", {}).get("name")
                assert own == (None if ip == "127.0.0.1" else f"app-{int(ip.rsplit('.', 1)[1]) - 1}")
                bodies[(ip, accept)] = doc
        assert bodies[("127.0.10.1", "application/json")]["self"]["service"]["token"] == "svc-token"
        assert "token" not in json.dumps(bodies[("127.0.0.1", "application/json")]["self"])
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.1", 0), force_close=True)
        async with aiohttp.ClientSession(md.url, connector=connector, auto_decompress=False) as s:
            async with s.get(
                "/latest/containers", headers={"Accept": "application/json", "Accept-Encoding": "gzip"}
            ) as r:
                assert r.headers["Content-Encoding"] == "gzip"
                zipped = await r.read()
            async with s.get(
                "/latest/containers", headers={"Accept": "application/json", "Accept-Encoding": "identity"}
            ) as r:
                assert "Content-Encoding" not in r.headers
                plain = await r.read()
        assert gzip.decompress(zipped) == plain
        assert len(zipped) < len(plain) / 5


async def test_metrics_count_requests_and_reloads_as_counters(fleet_file: Path) -> None:
    async with run_metadata(fleet_file) as md:
        for path in ("/latest/self/container/name", "/latest/containers/nosuch", "/latest/version"):
            await get(md, path, "127.0.0.11")
        text = (await get(md, "/metrics"))[1]
    assert "# TYPE metadns_metadata_requests_total counter" in text
    assert 'metadns_metadata_requests_total{kind="self",status="200"} 1.0' in text
    assert 'metadns_metadata_requests_total{kind="containers",status="404"} 1.0' in text
    assert 'metadns_metadata_reloads_total{result="published"} 1.0' in text
    assert 'metadns_metadata_fleet_objects{kind="containers"} 5.0' in text
