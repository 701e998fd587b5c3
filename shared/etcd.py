"""A small etcd v3 client over etcd's JSON gateway (``/v3/kv/range``, ``/v3/kv/txn``,
``/v3/watch``, ``/v3/lease/*``), with aiohttp; the same API in etcd 3.4 and 3.5+.

Written rather than taken: the asyncio etcd clients on PyPI either drop progress
notifications and hide the header revision of a watch response (aetcd), or no longer import on
current protobuf (etcd3), and following a prefix reliably needs exactly those (see
``metadata_svc/sources/etcd.py``). Keys and values are bytes on our side, base64 on the wire.

Several endpoints may be given; a request that cannot reach one (or finds it without a
leader) moves to the next, and the one that answered is tried first next time.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

COMPACTED = 11  # gRPC OUT_OF_RANGE: "mvcc: required revision has been compacted"


class EtcdError(Exception):
    """etcd answered with an error, or no endpoint could be reached."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int

    @classmethod
    def parse(cls, kv: dict[str, Any]) -> KeyValue:
        return cls(
            unb64(kv.get("key")),
            unb64(kv.get("value")),
            int(kv.get("mod_revision", 0)),
            int(kv.get("create_revision", 0)),
            int(kv.get("lease", 0)),
        )


@dataclass(frozen=True)
class WatchEvent:
    deleted: bool
    kv: KeyValue


@dataclass(frozen=True)
class WatchResult:
    """One watch response: applied as a unit, then ``revision`` is where we are."""

    revision: int
    events: tuple[WatchEvent, ...]
    compact_revision: int = 0
    canceled: bool = False
    created: bool = False


@dataclass(frozen=True)
class EtcdEndpoints:
    """``HOST:PORT[,HOST:PORT...]``, with TLS and user/password when given."""

    urls: tuple[str, ...]
    username: str = ""
    password: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    @classmethod
    def parse(cls, text: str, *, tls: bool = False, **options: str) -> EtcdEndpoints:
        scheme = "https" if tls or options.get("ca_file") or options.get("cert_file") else "http"
        urls = []
        for item in text.split(","):
            item = item.strip()
            if not item:
                continue
            if "://" in item:
                urls.append(item.rstrip("/"))
            else:
                urls.append(f"{scheme}://{item}")
        if not urls:
            raise ValueError("no etcd endpoint given")
        return cls(tuple(urls), **options)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not any(u.startswith("https://") for u in self.urls):
            return None
        context = ssl.create_default_context(cafile=self.ca_file or None)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file or None)
        return context


def add_etcd_flags(p: Any) -> None:
    """The etcd connection options every command that talks to etcd takes (a ``FlagParser``)."""
    p.flag("--etcd-tls", action="store_true", help="talk HTTPS to etcd (implied by --etcd-ca/--etcd-cert)")
    p.flag("--etcd-ca", default="", help="CA bundle that signed etcd's certificates")
    p.flag("--etcd-cert", default="", help="client certificate for etcd")
    p.flag("--etcd-key", default="", help="client certificate's key")
    p.flag("--etcd-user", default="", help="etcd user (with --etcd-password)")
    p.flag("--etcd-password", default="", help="etcd password")


def endpoints_from_flags(hosts: str, ns: Any) -> EtcdEndpoints:
    return EtcdEndpoints.parse(
        hosts,
        tls=ns.etcd_tls,
        username=ns.etcd_user,
        password=ns.etcd_password,
        ca_file=ns.etcd_ca,
        cert_file=ns.etcd_cert,
        key_file=ns.etcd_key,
    )


class EtcdClient:
    def __init__(self, endpoints: EtcdEndpoints, timeout: float = 5.0) -> None:
        self.endpoints = endpoints
        self.timeout = timeout
        self._order = list(endpoints.urls)
        self._session: aiohttp.ClientSession | None = None
        self._token = ""

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.endpoints.ssl_context() or False)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def endpoint(self) -> str:
        """The endpoint tried first (the one that answered last)."""
        return self._order[0]

    def rotate(self) -> None:
        """Try the next endpoint first from now on."""
        self._order.append(self._order.pop(0))

    def _headers(self, require_leader: bool) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if require_leader:
            headers["Grpc-Metadata-hasleader"] = "true"
        if self._token:
            headers["Authorization"] = self._token
        return headers

    async def _authenticate(self, url: str) -> None:
        if not self.endpoints.username or self._token:
            return
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        body = {"name": self.endpoints.username, "password": self.endpoints.password}
        async with self.session().post(f"{url}/v3/auth/authenticate", json=body, timeout=timeout) as r:
            doc = await r.json(content_type=None)
            if r.status != 200 or "token" not in doc:
                raise EtcdError(f"{url}: authentication failed: {doc.get('error') or doc.get('message')}")
            self._token = str(doc["token"])

    async def call(self, path: str, body: dict[str, Any], *, require_leader: bool = True) -> dict[str, Any]:
        """POST ``body`` to ``path`` on the first endpoint that answers; etcd's own errors are
        raised as they are (they would be the same on another member)."""
        problems = []
        for _ in range(len(self._order)):
            url = self._order[0]
            try:
                await self._authenticate(url)
                timeout = aiohttp.ClientTimeout(total=self.timeout)
                async with self.session().post(
                    f"{url}{path}", data=json.dumps(body), headers=self._headers(require_leader), timeout=timeout
                ) as r:
                    doc = await r.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
                problems.append(f"{url}: {type(exc).__name__}: {exc}")
                self.rotate()
                continue
            error = _error_of(doc)
            if error is not None:
                code, message = error
                if code in (14, 4) or "no leader" in message:  # unavailable here: another member may do
                    problems.append(f"{url}: {message}")
                    self.rotate()
                    continue
                raise EtcdError(message, code)
            if not isinstance(doc, dict):
                raise EtcdError(f"{url}{path}: not a JSON object in reply")
            return doc
        raise EtcdError("no etcd endpoint answered: " + "; ".join(problems))

    async def range(
        self, key: bytes, range_end: bytes = b"", *, revision: int = 0, limit: int = 0, serializable: bool = False
    ) -> tuple[list[KeyValue], int, bool]:
        """(key-values, header revision, more)."""
        body: dict[str, Any] = {"key": b64(key)}
        if range_end:
            body["range_end"] = b64(range_end)
        if revision:
            body["revision"] = revision
        if limit:
            body["limit"] = limit
        if serializable:
            body["serializable"] = True
        doc = await self.call("/v3/kv/range", body, require_leader=not serializable)
        kvs = [KeyValue.parse(kv) for kv in doc.get("kvs") or ()]
        return kvs, int(doc.get("header", {}).get("revision", 0)), bool(doc.get("more"))

    async def list_prefix(self, prefix: bytes, page: int = 500) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` at one revision, read in pages pinned to the first's."""
        out: list[KeyValue] = []
        start, end, revision = prefix, prefix_end(prefix), 0
        while True:
            kvs, header, more = await self.range(start, end, revision=revision, limit=page)
            revision = revision or header
            out.extend(kvs)
            if not more or not kvs:
                return out, revision
            start = kvs[-1].key + b"\0"

    async def txn(
        self,
        compare: Sequence[dict[str, Any]],
        success: Sequence[dict[str, Any]],
        failure: Sequence[dict[str, Any]] = (),
    ) -> tuple[bool, int, list[dict[str, Any]]]:
        """(succeeded, header revision, responses)."""
        doc = await self.call(
            "/v3/kv/txn", {"compare": list(compare), "success": list(success), "failure": list(failure)}
        )
        return (
            bool(doc.get("succeeded")),
            int(doc.get("header", {}).get("revision", 0)),
            list(doc.get("responses") or ()),
        )

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = lease
        doc = await self.call("/v3/kv/put", body)
        return int(doc.get("header", {}).get("revision", 0))

    async def compact(self, revision: int) -> None:
        await self.call("/v3/kv/compaction", {"revision": revision, "physical": True})

    async def lease_grant(self, ttl: int) -> int:
        doc = await self.call("/v3/lease/grant", {"TTL": ttl})
        return int(doc["ID"])

    async def lease_keepalive(self, lease: int) -> int:
        """The lease's remaining TTL; 0 when it has expired (etcd then omits the field)."""
        doc = await self.call("/v3/lease/keepalive", {"ID": lease})
        return int(doc.get("result", doc).get("TTL", 0))

    async def lease_revoke(self, lease: int) -> None:
        await self.call("/v3/lease/revoke", {"ID": lease})

    async def watch(
        self, key: bytes, range_end: bytes, start_revision: int, idle_timeout: float
    ) -> AsyncIterator[WatchResult]:
        """Watch ``key``..``range_end`` from ``start_revision`` on the first endpoint, with
        progress notifications and the leader required, until the stream ends, an error comes,
        or nothing (not even a progress notification) arrives for ``idle_timeout`` seconds."""
        url = self._order[0]
        await self._authenticate(url)
        body = {
            "create_request": {
                "key": b64(key),
                "range_end": b64(range_end),
                "start_revision": start_revision,
                "progress_notify": True,
            }
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=idle_timeout)
        async with self.session().post(
            f"{url}/v3/watch", data=json.dumps(body), headers=self._headers(True), timeout=timeout
        ) as r:
            if r.status != 200:
                raise EtcdError(f"{url}: watch refused: HTTP {r.status} {(await r.text())[:200]}")
            buffer = b""
            async for chunk in r.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield _watch_result(json.loads(line))


def _error_of(doc: dict[str, Any]) -> tuple[int, str] | None:
    err = doc.get("error")
    if isinstance(err, dict):
        return int(err.get("grpc_code") or err.get("code") or 2), str(err.get("message", err))
    if "code" in doc and "message" in doc and "header" not in doc:  # 3.5's gateway shape
        return int(doc["code"]), str(doc["message"])
    return None


def _watch_result(doc: dict[str, Any]) -> WatchResult:
    error = _error_of(doc)
    if error is not None:
        raise EtcdError(error[1], error[0])
    result = doc.get("result", doc)
    events = tuple(
        WatchEvent(e.get("type") == "DELETE", KeyValue.parse(e.get("kv") or {})) for e in result.get("events") or ()
    )
    return WatchResult(
        int(result.get("header", {}).get("revision", 0)),
        events,
        int(result.get("compact_revision", 0)),
        bool(result.get("canceled")),
        bool(result.get("created")),
    )
