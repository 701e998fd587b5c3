"""HTTP handlers: the version index, metadata paths with long-poll, health and status."""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import hdrs, web

from metadata_svc.changes import delta_limit
from metadata_svc.connections import RETRY_AFTER_S
from metadata_svc.keys import COUNTERS, IDENTITY, LONGPOLLS, SETTINGS, SOURCE, STORE
from metadata_svc.lookup import MISSING, MalformedPath, split_path, walk
from metadata_svc.metrics import metrics_handler, path_kind
from metadata_svc.render import JSON, TEXT, Format, error_body, negotiate, render
from metadata_svc.store import Snapshot
from metadata_svc.tree import API_VERSIONS, LATEST
from shared.fleet_document import FLEET_PATH, encode_fleet_delta

VERSION_NAMES = (*API_VERSIONS, "latest")


def _headers(snapshot: Snapshot, fmt: Format) -> dict[str, str]:
    return {
        "X-Metadns-Index": str(snapshot.index),
        "X-Metadns-Version": snapshot.version,
        "Access-Control-Allow-Origin": "*",
        hdrs.CONTENT_TYPE: f"{fmt.content_type}; charset=utf-8",
        hdrs.CACHE_CONTROL: "no-store",
    }


def _error(status: int, message: str, fmt: Format, snapshot: Snapshot) -> web.Response:
    headers = _headers(snapshot, fmt)
    return web.Response(status=status, text=error_body(status, message, fmt), headers=headers)


def _too_many(reason: str, fmt: Format, snapshot: Snapshot) -> web.Response:
    """A long-poll over its limit: 429 with ``Retry-After``, as a client library expects to
    back off on (a reset would look like a broken server)."""
    response = _error(429, f"Too many requests: {reason}", fmt, snapshot)
    response.headers[hdrs.RETRY_AFTER] = str(RETRY_AFTER_S)
    return response


async def index(request: web.Request) -> web.Response:
    """``/``: the API versions, one per line, or a JSON/YAML map of version to path."""
    fmt = negotiate(request.headers.get(hdrs.ACCEPT))
    snapshot = request.app[STORE].snapshot
    value: Any = {name: f"/{name}" for name in VERSION_NAMES} if fmt is not TEXT else None
    body = render(value, fmt) if value is not None else "".join(f"{n}\n" for n in VERSION_NAMES)
    return web.Response(text=body, headers=_headers(snapshot, fmt))


class BadQuery(ValueError):
    """A query parameter that is not what it must be: 400, like a malformed path."""


def _wait_seconds(raw: str | None, default: float, cap: float) -> float:
    """``maxWait``: absent or 0 means Rancher's default; anything but a non-negative finite
    number is refused, as ``index=abc`` is."""
    if raw is None:
        return min(default, cap)
    try:
        seconds = float(raw)
    except ValueError:
        raise BadQuery("maxWait must be a number of seconds") from None
    if not 0 <= seconds < float("inf"):  # negative, NaN, infinite
        raise BadQuery("maxWait must be a non-negative number of seconds")
    return min(seconds or default, cap)


async def metadata(request: web.Request) -> web.StreamResponse:
    """Counted by path kind and status (``/metrics``), then answered by ``answer``."""
    response = await answer(request)
    parts = [p for p in request.path.split("/") if p]
    if parts and parts[0] in VERSION_NAMES:
        parts = parts[1:]
    request.app[COUNTERS].request(path_kind(parts), response.status)
    return response


def _unchanged_test(query: Mapping[str, str], api: str, segments: list[str]) -> Callable[[Snapshot, Any], bool] | None:
    """What a long-poll waits to become false: ``wait=true&value=V``, the value at the path is
    still V (or missing); ``index=N``, the store is still at index N. None: not a long-poll."""
    if query.get("wait", "").lower() == "true" and "value" in query:
        known = query["value"].encode()
        return lambda snapshot, value: value is MISSING or snapshot.comparable(api, segments, value) == known
    if "index" in query:
        try:
            known_index = int(query["index"])
        except ValueError:
            raise BadQuery("index must be an integer") from None
        if known_index > 0:
            return lambda snapshot, _value: snapshot.index == known_index
    return None


async def answer(request: web.Request) -> web.StreamResponse:
    """Any path into the tree. ``?wait=true&value=V`` blocks until the value there differs from V;
    ``?index=N`` blocks until the whole store moves past index N (Consul's blocking query)."""
    store = request.app[STORE]
    settings = request.app[SETTINGS]
    fmt = negotiate(request.headers.get(hdrs.ACCEPT))
    snapshot = store.snapshot
    try:
        segments = split_path(request.raw_path.split("?", 1)[0])
    except MalformedPath as exc:
        return _error(400, f"Bad request: {exc}", fmt, snapshot)
    api = LATEST
    if segments and segments[0] in VERSION_NAMES:
        api = LATEST if segments[0] == "latest" else segments[0]
        segments = segments[1:]
    client = _client_of(request)
    query = request.query
    loop_time = asyncio.get_running_loop().time
    try:
        wait = _wait_seconds(query.get("maxWait"), settings.default_wait, settings.max_wait)
    except BadQuery as exc:
        return _error(400, f"Bad request: {exc}", fmt, snapshot)

    try:
        unchanged = _unchanged_test(query, api, segments)
    except BadQuery as exc:
        return _error(400, f"Bad request: {exc}", fmt, snapshot)
    value = walk(snapshot.tree_for(api, client), segments)
    if unchanged is not None and unchanged(snapshot, value):
        longpolls = request.app[LONGPOLLS]
        refused = longpolls.take(client)
        if refused is not None:
            return _too_many(refused, fmt, snapshot)
        deadline = loop_time() + wait
        try:
            while unchanged(snapshot, value):
                remaining = deadline - loop_time()
                if remaining <= 0 or store.closed:
                    break
                snapshot = await store.wait_for_change(snapshot.index, remaining)
                value = walk(snapshot.tree_for(api, client), segments)
        finally:
            longpolls.give_back(client)

    if value is MISSING:
        return _error(404, "Not found", fmt, snapshot)
    headers = _headers(snapshot, fmt)
    compressed = snapshot.gzipped(api, segments, fmt, value) if _accepts_gzip(request) else None
    if compressed is not None:
        body = compressed
        headers[hdrs.CONTENT_ENCODING] = "gzip"
        headers[hdrs.VARY] = "Accept-Encoding"
    else:
        body = snapshot.body(api, segments, fmt, value)
    if len(body) <= BIG_BODY:
        return web.Response(body=body, headers=headers)
    return await _send_in_pieces(request, body, headers)


def _accepts_gzip(request: web.Request) -> bool:
    for part in request.headers.get(hdrs.ACCEPT_ENCODING, "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0")
    return False


BIG_BODY = 64 << 10


async def _send_in_pieces(request: web.Request, body: bytes, headers: dict[str, str]) -> web.StreamResponse:
    """A big body (the whole tree is megabytes) goes out a piece at a time, with the event loop
    free in between: one client fetching it in a loop must not hold up a small request for the
    length of a 2.6 MB copy."""
    response = web.StreamResponse(headers=headers)
    response.content_length = len(body)
    await response.prepare(request)
    view = memoryview(body)
    for start in range(0, len(body), BIG_BODY):
        await response.write(view[start : start + BIG_BODY])
        await asyncio.sleep(0)
    await response.write_eof()
    return response


async def fleet(request: web.Request) -> web.Response:
    """The whole normalised fleet in one compact document, for the DNS service: the
    2016-07-29 tree repeats every container three times (the list, its service, its stack).
    ``?since=V``: only what changed after version V (``metadata_svc/changes.py``), or 410 when
    V is not in the window of changes kept, and the follower takes the whole document. With
    ``wait=true`` it is a long-poll: while V is the current version it waits (``maxWait``) for
    the next, so a follower pays one request per version, not a ``/version`` wait and a fetch."""
    store = request.app[STORE]
    snapshot = store.snapshot
    since = request.query.get("since")
    if since is None:
        return web.Response(body=await snapshot.fleet_json(), headers={**_headers(snapshot, JSON)})
    if request.query.get("wait", "").lower() == "true" and since == snapshot.version and not store.closed:
        settings = request.app[SETTINGS]
        try:
            wait = _wait_seconds(request.query.get("maxWait"), settings.default_wait, settings.max_wait)
        except BadQuery as exc:
            return _error(400, f"Bad request: {exc}", JSON, snapshot)
        longpolls = request.app[LONGPOLLS]
        client = _client_of(request)
        refused = longpolls.take(client)
        if refused is not None:
            return _too_many(refused, JSON, snapshot)
        try:
            snapshot = await store.wait_for_change(snapshot.index, wait)
        finally:
            longpolls.give_back(client)
    fleet = snapshot.fleet
    objects = len(fleet.hosts) + len(fleet.stacks) + len(fleet.services) + len(fleet.containers)
    changes = store.changes.since(since, delta_limit(objects))
    if changes is None:
        request.app[COUNTERS].deltas["gone"] += 1
        reason = (
            "more objects changed since then than a delta carries"
            if since in store.changes
            else "not among the last versions' changes"
        )
        return _error(410, f"Gone: {since}: {reason}", JSON, snapshot)
    request.app[COUNTERS].deltas["served"] += 1
    body = encode_fleet_delta(snapshot.version, snapshot.index, since, changes)
    return web.Response(body=body, headers={**_headers(snapshot, JSON)})


def _client_of(request: web.Request) -> str:
    """Who is asking, as the long-poll slots count clients (``X-Forwarded-For`` from a trusted proxy)."""
    # Every X-Forwarded-For line, in order: a proxy appends its own line after the client's
    # (possibly forged) one, and only the combined list read from the right is the truth.
    peer = request.transport.get_extra_info("peername") if request.transport else None
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", ())) or None
    return request.app[IDENTITY].client_ip(peer[0] if peer else None, forwarded)


async def healthz(request: web.Request) -> web.Response:
    """200 while a fleet is being served, 503 before the first one loads. No fleet data."""
    store = request.app[STORE]
    ok = store.has_data
    body = {"status": "ok" if ok else "no data", "index": store.index}
    return web.json_response(body, status=200 if ok else 503)


async def status(request: web.Request) -> web.Response:
    """A small HTML page for people: version, counts, last reload, open long-polls."""
    store = request.app[STORE]
    snap = store.snapshot
    fleet = snap.fleet
    reload = store.last_reload
    reload_text = (
        "none yet"
        if reload is None
        else (
            f"{'ok' if reload.ok else 'REJECTED'} at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(reload.at))}Z: {reload.message}"
        )
    )
    rows = [
        ("version", snap.version),
        ("index", str(snap.index)),
        ("published", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(snap.published_at)) + "Z"),
        ("environment", fleet.environment.name),
        ("hosts", str(len(fleet.hosts))),
        ("stacks", str(len(fleet.stacks))),
        ("services", str(len(fleet.services))),
        ("containers", str(len(fleet.containers))),
        ("last reload", reload_text),
        ("waiting long-polls", str(store.waiting)),
        ("source", str(getattr(request.app[SOURCE], "name", ""))),
        (
            "kept copy",
            f"NOT WRITABLE ({store.kept_error}); indexes follow the clock"
            if store.kept_error
            else request.app[SETTINGS].state_file or "off",
        ),
    ]
    etcd = getattr(request.app[SOURCE], "status", None)
    if etcd is not None:
        rows += [
            (
                "etcd",
                f"{'connected to ' + etcd.endpoint if etcd.connected else 'UNREACHABLE: ' + etcd.problem}"
                f", at revision {etcd.revision}",
            ),
            *((f"held back: {key}", problem) for key, problem in sorted(etcd.held_back.items())),
        ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>metadns metadata</title></head>"
        f"<body><h1>metadns metadata</h1><table>{body}</table></body></html>"
    )
    return web.Response(text=page, content_type="text/html")


async def not_found(request: web.Request) -> web.Response:
    return _error(404, "Not found", TEXT, request.app[STORE].snapshot)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics_handler(app))
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
    app.router.add_get("/favicon.ico", not_found)
    app.router.add_get(FLEET_PATH, fleet)
    app.router.add_get("/{tail:.*}", metadata)
