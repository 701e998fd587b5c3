"""A metadata path builds only what it reaches (``metadata_svc/lazy_tree.py``), and answers exactly
what walking the whole tree answered: the same element when names repeat, the same 404s, the
same bytes in every format."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from metadata_svc.keys import STORE
from metadata_svc.lookup import MISSING, walk
from metadata_svc.render import JSON, TEXT, YAML
from metadata_svc.store import Snapshot
from metadata_svc.tree import API_VERSIONS, ClientTree, Tree, TreeBuilder
from shared.model import Fleet
from tests.support.metadata import run_metadata


def walk_as_before(tree: Any, segments: Sequence[str]) -> Any:
    """``lookup.walk`` as it was before the tree became lazy, kept here as the reference."""

    def step(value: Any, segment: str) -> Any:
        if isinstance(value, Mapping):
            return value.get(segment, MISSING)
        if isinstance(value, Sequence) and not isinstance(value, str):
            if segment.isascii() and segment.isdigit():
                if len(segment) > 9:
                    return MISSING
                index = int(segment)
                return value[index] if index < len(value) else MISSING
            for item in value:
                if isinstance(item, Mapping) and segment in (item.get("name"), item.get("uuid")):
                    return item
        return MISSING

    def once(path: Sequence[str]) -> Any:
        value = tree
        for segment in path:
            value = step(value, segment)
            if value is MISSING:
                break
        return value

    value = once(segments)
    lowered = [s.lower() for s in segments]
    if value is MISSING and lowered != list(segments):
        value = once(lowered)
    return value


def whole_tree_as_before(snapshot: Snapshot, api: str, client_ip: str) -> ClientTree | Tree:
    """The tree a client saw before: built whole, ``self`` and all."""
    base = snapshot.default_tree(api)
    container = snapshot.fleet.container_by_ip(client_ip)
    if container is None:
        return base
    builder = TreeBuilder(snapshot.fleet, api, snapshot.version, snapshot.self_host_uuid)
    return ClientTree(base, {key: make() for key, make in builder.self_parts(container).items()})


def tricky_fleet() -> dict[str, Any]:
    """Names that repeat, differ only in case, look like indexes or equal another object's uuid."""
    return {
        "environment": {"name": "Lazy-Env"},
        "hosts": [
            {"uuid": "host-a", "name": "Host-A", "agent_ip": "127.0.9.1", "labels": {"zone": "a"}},
            {"uuid": "host-b", "name": "Host-A", "agent_ip": "127.0.9.2"},
            {"uuid": "HOST-C", "name": "host-c"},
            {"uuid": "host-d", "name": "host-b"},  # named like the uuid of the host before it
        ],
        "stacks": [
            {"name": "weird", "uuid": "infra"},  # its uuid is a later stack's name: it comes first
            {"name": "Shop"},
            {"name": "infra"},
            {"name": "7"},
        ],
        "services": [
            {"name": "web", "stack_name": "Shop", "ports": ["80:8080/tcp"], "token": "shop-web-token"},
            {"name": "API", "stack_name": "Shop", "metadata": {"k": [1, {"deep": "v"}]}},
            {"name": "web", "stack_name": "infra", "token": "infra-web-token"},  # the name repeats
            {"name": "Web", "stack_name": "weird"},
            {"name": "42", "stack_name": "infra"},
        ],
        "containers": [
            {
                "name": "Shop-Web-1",
                "stack_name": "Shop",
                "service_name": "web",
                "primary_ip": "127.0.8.1",
                "host_uuid": "host-a",
                "ports": ["80:8080/tcp", "9090/udp"],
                "labels": {"Tier": "Front"},
            },
            {"name": "shop-web-1", "stack_name": "infra", "service_name": "web", "primary_ip": "127.0.8.2"},
            {"name": "dup", "uuid": "C-Dup-1", "stack_name": "Shop", "service_name": "API", "primary_ip": "127.0.8.3"},
            {"name": "dup", "uuid": "c-dup-2", "primary_ip": "127.0.8.4", "host_uuid": "host-b"},
            {"name": "c-dup-2", "primary_ip": "127.0.8.5"},  # its name is the uuid of the one before
            {"name": "x", "uuid": "Uuid-7", "stack_name": "weird", "service_name": "Web", "primary_ip": "127.0.8.6"},
            {"name": "3", "primary_ip": "127.0.8.7", "host_uuid": "HOST-C"},
            {"name": "Ünïcode-İ", "stack_name": "7", "primary_ip": "127.0.8.8"},
            {"name": "lonely", "primary_ip": "127.0.8.9", "host_uuid": "host-d", "dns": ["127.0.0.53"]},
        ],
    }


def selectors(index: int, item: Any, *, every_case: bool) -> list[str]:
    """The ways a path may pick ``item`` out of its list: position, name, uuid, in other cases."""
    out = [str(index), f"{index:02d}"] if every_case else [str(index)]
    if isinstance(item, Mapping):
        for text in (item.get("name"), item.get("uuid")):
            if isinstance(text, str) and text:
                out += [text, text.upper(), text.lower(), text.swapcase()] if every_case else [text]
    return list(dict.fromkeys(out))


def paths_into(tree: Any, depth: int = 0) -> Iterator[list[str]]:
    """Paths into ``tree`` up to four deep; near the top (where the lazy parts are), keys and
    list items in other cases too."""
    if depth >= 4:
        return
    near_top = depth <= 1
    if isinstance(tree, Mapping):
        children = [([key], value) for key, value in tree.items()]
        if near_top:
            children += [([key.upper()], value) for key, value in tree.items() if key.upper() != key]
    elif isinstance(tree, list):
        children = [([s], item) for i, item in enumerate(tree) for s in selectors(i, item, every_case=near_top)]
    else:
        return
    for head, value in children:
        yield head
        for rest in paths_into(value, depth + 1):
            yield head + rest


MISSES = [
    ["nothing"],
    ["containers", "nobody"],
    ["containers", "9"],
    ["containers", "-1"],
    ["containers", "\uff11"],  # FULLWIDTH DIGIT ONE: isdigit(), but looked up by name
    ["containers", "9999999999"],
    ["containers", "9" * 5000],
    ["containers", "dup", "nothing"],
    ["services", "web", "containers", "nobody"],
    ["stacks", "Nope", "services"],
    ["hosts", "host-z"],
    ["self", "nothing"],
    ["Self", "Container", "Nothing"],
    ["version", "0"],
]
DEEP_IN_OTHER_CASES = [
    ["CONTAINERS", "Shop-Web-1", "Labels", "Tier"],
    ["containers", "dup", "PORTS", "0"],
    ["Self", "Service", "Token"],
    ["SELF", "STACK", "SERVICES", "WEB", "CONTAINERS", "0", "NAME"],
    ["Stacks", "Shop", "Services", "API", "Metadata", "k", "1", "deep"],
    ["services", "Web", "containers", "X", "stack_name"],
]


def every_path(tree: Any) -> list[list[str]]:
    return [[], *paths_into(tree), *MISSES, *DEEP_IN_OTHER_CASES]


CLIENTS = {
    "a container in a service": "127.0.8.1",
    "a container alone": "127.0.8.9",
    "no container": "127.0.0.1",
}
# The clients whose ``self`` --self-host changes: no container (``self/host`` alone), and a
# container without a host of its own (its ``self/host``). The others' trees do not depend on it.
SELF_HOST_CLIENTS = {
    "no container": "127.0.0.1",
    "a container without a host": "127.0.8.2",
}


# Coverage is measured on one of the six (it reaches every line the other five do), which run
# with it paused (pytest-cov's no_cover): under its line tracer each takes 3-4 times as long.
@pytest.mark.slow
@pytest.mark.parametrize(
    "api", [pytest.param(api, marks=[] if api == "2016-07-29" else [pytest.mark.no_cover]) for api in API_VERSIONS]
)
@pytest.mark.parametrize("self_host", ["", pytest.param("host-b", marks=pytest.mark.no_cover)])
def test_lazy_paths_answer_what_the_whole_tree_did(api: str, self_host: str) -> None:
    """Every path of a tricky fleet, as every kind of client (with --self-host, those whose ``self``
    it changes): the same value (or the same miss),
    the same text, JSON and YAML bytes, the same gzip and long-poll ``value=`` form."""
    fleet = Fleet.from_mapping(tricky_fleet())
    lazy, eager = Snapshot(fleet, 3, self_host), Snapshot(fleet, 3, self_host)
    checked = Counter[str]()
    for client in (SELF_HOST_CLIENTS if self_host else CLIENTS).values():
        whole = whole_tree_as_before(eager, api, client)
        for segments in every_path(whole):
            found = walk(lazy.tree_for(api, client), segments)
            expected = walk_as_before(whole, segments)
            assert (found is MISSING) == (expected is MISSING), (client, segments)
            checked["miss" if expected is MISSING else "found"] += 1
            if expected is MISSING:
                continue
            assert type(found) is type(expected), (client, segments)
            assert found == expected, (client, segments)
            # Every format where the lazy parts are built whole; below them, the text (the same
            # code renders every format of a plain value).
            formats = (TEXT, JSON, YAML) if len(segments) <= 2 else (TEXT,)
            for fmt in formats:
                assert lazy.body(api, segments, fmt, found) == eager.body(api, segments, fmt, expected), (
                    client,
                    segments,
                    fmt.name,
                )
                assert lazy.gzipped(api, segments, fmt, found) == eager.gzipped(api, segments, fmt, expected)
            assert lazy.comparable(api, segments, found) == eager.comparable(api, segments, expected)
    assert checked["found"] > 3000, checked
    assert checked["miss"] > 200, checked


def test_the_first_match_wins_where_names_repeat() -> None:
    """The cases the table above must include, spelled out."""
    fleet = Fleet.from_mapping(tricky_fleet())
    snapshot = Snapshot(fleet, 1)

    def ask(api: str, path: str) -> Any:
        found = walk(snapshot.tree_for(api, "127.0.0.1"), path.split("/"))
        return MISSING if found is MISSING else found

    assert ask("2016-07-29", "containers/Shop-Web-1/stack_name") == "shop"  # the first of the two, lowered
    assert ask("2015-12-19", "containers/shop-web-1/stack_name") == "infra"  # case kept: the second
    assert ask("2015-12-19", "containers/Shop-Web-1/stack_name") == "Shop"
    assert ask("2016-07-29", "containers/dup/uuid") == "C-Dup-1"
    assert ask("2016-07-29", "containers/c-dup-2/name") == "dup"  # the uuid match comes first
    assert ask("2016-07-29", "containers/3/uuid") == "c-dup-2"  # an index, not the name "3"
    assert ask("2016-07-29", "stacks/infra/name") == "weird"  # uuid "infra" comes before the name
    assert ask("2016-07-29", "services/web/stack_name") == "shop"
    assert ask("2016-07-29", "services/Web/stack_name") == "shop"  # retried in lower case
    assert ask("2015-12-19", "services/Web/stack_name") == "weird"
    assert ask("2015-07-25", "hosts/host-b/host_id") == 2  # the uuid, before the host named so
    assert ask("2016-07-29", "hosts/Host-A/uuid") == "host-a"
    assert ask("2016-07-29", "containers/Nobody") is MISSING


def large_fleet(containers: int, *, moved: bool = False) -> dict[str, Any]:
    stacks, services = 4, 40
    return {
        "hosts": [{"uuid": f"host-{h}", "name": f"host-{h}", "agent_ip": f"127.0.9.{h + 1}"} for h in range(10)],
        "stacks": [{"name": f"stack-{s}"} for s in range(stacks)],
        "services": [{"name": f"svc-{j}", "stack_name": f"stack-{j % stacks}"} for j in range(services)],
        "containers": [
            {
                "name": f"app-{i}",
                "stack_name": f"stack-{i % services % stacks}",
                "service_name": f"svc-{i % services}",
                "primary_ip": "127.0.99.1" if moved and i == 0 else f"127.0.{10 + i // 250}.{i % 250 + 1}",
                "host_uuid": f"host-{i % 10}",
            }
            for i in range(containers)
        ],
    }


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times each of TreeBuilder's builders ran (a cached element asked again counts)."""
    counts = Counter[str]()

    def counting(name: str) -> None:
        original: Callable[..., Any] = getattr(TreeBuilder, name)

        def wrapper(self: TreeBuilder, *args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return original(self, *args, **kwargs)

        monkeypatch.setattr(TreeBuilder, name, wrapper)

    for name in ("default_tree", "container", "service", "stack", "host"):
        counting(name)
    return counts


async def test_one_container_after_a_change_builds_that_container_only(tmp_path: Path, built: Counter[str]) -> None:
    """After a change on a 5,000-container fleet: a container's own ``self`` and one container by
    name build that container alone, never the whole tree; a whole list builds the tree once."""
    fleet_file = tmp_path / "fleet.json"
    fleet_file.write_text(json.dumps(large_fleet(5000)))
    async with run_metadata(fleet_file) as md:
        store = md.app[STORE]

        async def get(path: str, source_ip: str = "127.0.0.1", **headers: str) -> str:
            async with md.client(source_ip) as s, s.get(path, headers=headers) as r:
                assert r.status == 200, path
                return await r.text()

        before = store.index
        fleet_file.write_text(json.dumps(large_fleet(5000, moved=True)))
        for _ in range(400):
            if store.index != before:
                break
            await asyncio.sleep(0.05)
        assert store.index != before
        built.clear()

        assert await get("/latest/self/container/name", source_ip="127.0.13.27") == "app-776"
        assert built == {"container": 1}, built
        assert await get("/2015-07-25/containers/App-4321/primary_ip") == "127.0.27.72"
        assert await get("/latest/containers/App-4321/primary_ip") == "127.0.27.72"
        assert await get("/latest/containers/4999/name") == "app-4999"
        assert built == {"container": 4}, built
        assert await get("/latest/hosts/host-3/name") == "host-3"
        assert await get("/latest/self/host/agent_ip", source_ip="127.0.13.27") == "127.0.9.7"
        assert built == {"container": 4, "host": 2}, built
        # A service holds its containers, a stack its services: built, but nothing else.
        assert await get("/latest/services/svc-7/scale") == "125"
        assert (built["service"], built["container"]) == (1, 4 + 125), built
        assert await get("/latest/self/stack/name", source_ip="127.0.13.27") == "stack-0"
        assert (built["stack"], built["service"]) == (1, 1 + 10), built

        assert built["default_tree"] == 0
        await get("/latest/containers")
        await get("/latest", **{"Accept": "application/json"})
        await get("/latest", source_ip="127.0.13.27")
        assert built["default_tree"] == 1, built
