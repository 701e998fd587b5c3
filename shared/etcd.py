"""A small etcd v3 client over etcd's native gRPC API (``grpc.aio``); the same API in etcd 3.4
and 3.5+.

gRPC rather than etcd's JSON gateway: production etcd runs mutual TLS with client certificates
that carry a Common Name, which the gateway refuses (CVE-2018-16886: "CommonName of client
sending a request against gateway will be ignored"), so CN-as-user authentication cannot work
through it; a cluster may run with the gateway off (``--enable-grpc-gateway=false``); and the
gateway's errors are HTTP bodies of several shapes where gRPC has one status.

Written rather than taken: the asyncio etcd clients on PyPI either drop progress notifications
and hide the header revision of a watch response (aetcd), or no longer import on current
protobuf (etcd3), and following a prefix reliably needs exactly those (see
``metadata_svc/sources/etcd.py``). The message classes are generated from the ``.proto`` files
in ``shared/etcd_api`` at install time (``scripts/gen_etcd_api.py``); the methods are called by
their gRPC paths (``/etcdserverpb.KV/Range``), so no generated service stubs are needed.

Several endpoints may be given; a request that cannot reach one (or finds it without a
leader) moves to the next, and the one that answered is tried first next time. Every error is
raised as an ``EtcdError`` whose message is one line saying what is wrong (an unknown CA, a
refused certificate, a wrong password, a permission denied on a named key or range, no leader,
unreachable), never a decode error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

# gRPC's C core logs a failed handshake on stderr by itself, in lines of its own format; our
# one line per problem says it instead (set before grpc is first imported; a setting given wins).
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import grpc
import grpc.aio
from google.protobuf import json_format
from google.protobuf.message import Message

from shared.logs import log_event

try:
    from shared.etcd_api import kv_pb2, rpc_pb2
except ImportError as exc:  # pragma: no cover (an install without the generated modules)
    raise ImportError(
        f"etcd's API modules are not generated ({exc}): run scripts/bootstrap.sh, or scripts/gen_etcd_api.py"
    ) from exc

RequestOp = rpc_pb2.RequestOp  # one operation of a transaction, as ``put_op`` and ``delete_op`` make it
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops: comparisons, and operations, in one transaction
COMPACTED = grpc.StatusCode.OUT_OF_RANGE.value[0]  # 11: "mvcc: required revision has been compacted"
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]

# Status codes after which another member may well answer: it cannot be reached, has no
# leader, or did not answer in time.
_ELSEWHERE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNKNOWN}
# etcd's messages for a token it no longer knows (expired, or issued by a restarted member) and
# for a token older than a change of users or roles: authenticate again, then retry.
_STALE_TOKEN = ("invalid auth token", "revision of auth store is old")
_ELSEWHERE_CODES = {c.value[0] for c in _ELSEWHERE}

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 2**31 - 1),  # a page of a big prefix; etcd bounds what it sends
    ("grpc.enable_http_proxy", 0),  # etcd is reached directly, whatever http_proxy says
    # A member that was down is tried again soon after it is back (gRPC's default backoff grows to 2 min).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Not grpc.min_reconnect_backoff_ms: gRPC takes it as the time a connection attempt has to
    # complete (TCP, TLS and etcd's first HTTP/2 SETTINGS frame), 20 s by default. At 200 ms a
    # busy etcd or machine failed calls with "connection attempt timed out before receiving
    # SETTINGS frame"; each call's own deadline bounds the wait anyway.
]

log = logging.getLogger("etcd")

M = TypeVar("M", bound=Message)
T = TypeVar("T")


class EtcdError(Exception):
    """etcd answered with an error, or no endpoint could be reached; ``code`` is the gRPC status
    code's number when etcd gave one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def b64(data: bytes) -> str:
    """Bytes as etcd's JSON mapping writes them (the transaction operations of ``txn``)."""
    return base64.b64encode(data).decode()


def put_op(key: bytes, value: bytes) -> rpc_pb2.RequestOp:
    """A put for ``EtcdClient.write``, made as the message: parsing etcd's JSON form of 120,000 operations
    (base64 and all) cost ``fleet apply`` seconds that this does not."""
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))


def delete_op(key: bytes) -> rpc_pb2.RequestOp:
    """A delete of one key for ``EtcdClient.write``, made as the message (``put_op`` says why)."""
    return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key))


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def describe_range(key: bytes, range_end: bytes = b"") -> str:
    """A key or range as an operator would name it in ``etcdctl role grant-permission``."""
    text = key.decode("utf-8", "replace")
    if not range_end:
        return f"key {text}"
    if range_end == prefix_end(key):
        return f"prefix {text}"
    return f"range [{text}, {range_end.decode('utf-8', 'replace')})"


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int

    @classmethod
    def of(cls, kv: kv_pb2.KeyValue) -> KeyValue:
        return cls(kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.lease)


@dataclass(frozen=True)
class WatchEvent:
    deleted: bool
    kv: KeyValue


@dataclass(frozen=True)
class WatchResult:
    """One watch response: applied as a unit, then ``revision`` (its header's) is where we are;
    a progress notification is a result without events."""

    revision: int
    events: tuple[WatchEvent, ...]
    compact_revision: int = 0
    canceled: bool = False
    created: bool = False


@dataclass(frozen=True)
class EtcdEndpoints:
    """``HOST:PORT[,HOST:PORT...]``, with TLS and user/password when given. An endpoint is kept
    as ``http://HOST:PORT`` or ``https://HOST:PORT`` (TLS), the form etcd's flags use."""

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

    def credentials(self) -> grpc.ChannelCredentials:
        """TLS credentials for the ``https://`` endpoints: the CA (the system's when none is
        given) and the client certificate; a file that cannot be read is said by its flag."""

        def read(flag: str, path: str) -> bytes | None:
            if not path:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise EtcdError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None

        cert, key = read("--etcd-cert", self.cert_file), read("--etcd-key", self.key_file)
        if cert is not None and key is None:
            key = cert  # a PEM file holding both
        return grpc.ssl_channel_credentials(
            root_certificates=read("--etcd-ca", self.ca_file), private_key=key, certificate_chain=cert
        )


def add_etcd_flags(p: Any) -> None:
    """The etcd connection options every command that talks to etcd takes (a ``FlagParser``)."""
    p.flag("--etcd-tls", action="store_true", help="talk TLS to etcd (implied by --etcd-ca/--etcd-cert)")
    p.flag("--etcd-ca", default="", help="CA bundle that signed etcd's certificates")
    p.flag(
        "--etcd-cert", default="", help="client certificate for etcd (its CN is the etcd user with --client-cert-auth)"
    )
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


def _host(url: str) -> str:
    return url.split("://", 1)[-1]


class EtcdClient:
    def __init__(self, endpoints: EtcdEndpoints, timeout: float = 5.0) -> None:
        self.endpoints = endpoints
        self.timeout = timeout
        self._order = list(endpoints.urls)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._token = ""
        self._auth_off = False  # etcd said its authentication is off: no token to ask for
        self._auth_lock = asyncio.Lock()

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    @property
    def endpoint(self) -> str:
        """The endpoint tried first (the one that answered last)."""
        return self._order[0]

    def rotate(self) -> None:
        """Try the next endpoint first from now on."""
        self._order.append(self._order.pop(0))

    def _channel(self, url: str) -> grpc.aio.Channel:
        channel = self._channels.get(url)
        if channel is None:
            if url.startswith("https://"):
                channel = grpc.aio.secure_channel(_host(url), self.endpoints.credentials(), options=_CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.insecure_channel(_host(url), options=_CHANNEL_OPTIONS)
            self._channels[url] = channel
        return channel

    async def _drop_channel(self, url: str) -> None:
        """Forget a channel that failed: the next call connects afresh instead of waiting out
        gRPC's reconnect backoff."""
        channel = self._channels.pop(url, None)
        if channel is not None:
            await channel.close()

    def _metadata(self, require_leader: bool) -> list[tuple[str, str]]:
        metadata = []
        if require_leader:
            metadata.append(("hasleader", "true"))
        if self._token:
            metadata.append(("token", self._token))
        return metadata

    async def _authenticate(self, url: str, stale: str = "") -> None:
        """Get a token for the user and password, once for all calls (and again when etcd said
        ``stale`` was no longer valid). Without a password there is none to get: etcd then
        takes the user from the client certificate's CN (``--client-cert-auth``)."""
        if not self.endpoints.username or not self.endpoints.password or (self._auth_off and not stale):
            return
        async with self._auth_lock:
            if self._token and self._token != stale:
                return
            self._token, self._auth_off = "", False
            request = rpc_pb2.AuthenticateRequest(name=self.endpoints.username, password=self.endpoints.password)
            call = self._channel(url).unary_unary(
                "/etcdserverpb.Auth/Authenticate",
                request_serializer=rpc_pb2.AuthenticateRequest.SerializeToString,
                response_deserializer=rpc_pb2.AuthenticateResponse.FromString,
            )
            try:
                reply = await call(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as exc:
                if "authentication is not enabled" in (exc.details() or ""):
                    self._auth_off = True
                    return
                raise self._error(url, exc, f"authenticate as {self.endpoints.username}") from None
            self._token = reply.token
            if stale:  # the first token is not news; a renewal is
                log_event(log, logging.INFO, "etcd_token_renewed", endpoint=_host(url), user=self.endpoints.username)

    def _error(self, url: str, exc: grpc.aio.AioRpcError, what: str) -> EtcdError:
        return EtcdError(f"{_host(url)}: {explain(exc, self.endpoints, what)}", exc.code().value[0])

    async def _call(self, what: str, attempt: Callable[[str], Awaitable[T]]) -> T:
        """Run ``attempt(url)`` on the first endpoint that answers; etcd's own errors are raised
        as they are (they would be the same on another member), once explained. A stale token
        is renewed and the call made once more on the same endpoint."""
        problems = []
        for _ in range(len(self._order)):
            url = self._order[0]
            stale = ""
            for _try in range(2):
                try:
                    await self._authenticate(url, stale)
                    return await attempt(url)
                except grpc.aio.AioRpcError as exc:
                    if _stale_token(exc) and not stale:
                        stale = self._token or "-"
                        continue
                    if exc.code() not in _ELSEWHERE:
                        raise self._error(url, exc, what) from None
                    problems.append(f"{_host(url)}: {explain(exc, self.endpoints, what)}")
                except EtcdError as exc:  # from authenticating
                    if exc.code not in _ELSEWHERE_CODES:
                        raise
                    problems.append(str(exc))
                break
            await self._drop_channel(url)
            self.rotate()
        raise EtcdError("no etcd endpoint answered: " + "; ".join(problems), UNAVAILABLE)

    async def _unary(
        self, method: str, request: Message, reply_type: type[M], what: str, *, require_leader: bool = True
    ) -> M:
        async def attempt(url: str) -> M:
            call = self._channel(url).unary_unary(
                method, request_serializer=type(request).SerializeToString, response_deserializer=reply_type.FromString
            )
            reply: M = await call(request, timeout=self.timeout, metadata=self._metadata(require_leader))
            return reply

        return await self._call(what, attempt)

    async def range(
        self, key: bytes, range_end: bytes = b"", *, revision: int = 0, limit: int = 0, serializable: bool = False
    ) -> tuple[list[KeyValue], int, bool]:
        """(key-values, header revision, more)."""
        request = rpc_pb2.RangeRequest(
            key=key, range_end=range_end, revision=revision, limit=limit, serializable=serializable
        )
        reply = await self._unary(
            "/etcdserverpb.KV/Range",
            request,
            rpc_pb2.RangeResponse,
            f"read {describe_range(key, range_end)}",
            require_leader=not serializable,
        )
        return [KeyValue.of(kv) for kv in reply.kvs], reply.header.revision, reply.more

    async def newest(self, key: bytes, range_end: bytes, *, revision: int = 0) -> tuple[KeyValue | None, int]:
        """(the key of the range changed last, header revision): sorted by ``mod_revision`` with
        a limit of one, so a range of 100,000 keys sends one (etcd still reads them all to
        sort them); None for an empty range."""
        request = rpc_pb2.RangeRequest(
            key=key,
            range_end=range_end,
            revision=revision,
            limit=1,
            sort_order=rpc_pb2.RangeRequest.DESCEND,
            sort_target=rpc_pb2.RangeRequest.MOD,
        )
        reply = await self._unary(
            "/etcdserverpb.KV/Range", request, rpc_pb2.RangeResponse, f"read {describe_range(key, range_end)}"
        )
        return (KeyValue.of(reply.kvs[0]) if reply.kvs else None), reply.header.revision

    async def list_prefix(self, prefix: bytes, page: int = 5000) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` at one revision, read in pages pinned to the first's. etcd
        counts the rest of the range for every page, so pages of 5,000 list 100,000 objects four
        times faster than pages of 500 (bench/RESULTS.md); a page of 5,000 objects of a few KB is
        well under the receive limit the channel sets, and etcd bounds no response below 2 GB."""
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
        """(succeeded, header revision, responses). The comparisons and operations are written
        in etcd's JSON form of its messages (``{"request_put": {"key": b64(...), ...}}``, as
        ``etcdctl txn`` and the gateway take them), turned into the messages here."""
        request = json_format.ParseDict(
            {"compare": list(compare), "success": list(success), "failure": list(failure)}, rpc_pb2.TxnRequest()
        )
        reply = await self._unary("/etcdserverpb.KV/Txn", request, rpc_pb2.TxnResponse, _txn_what(request))
        responses = [json_format.MessageToDict(r, preserving_proto_field_name=True) for r in reply.responses]
        return reply.succeeded, reply.header.revision, responses

    async def write(self, ops: Sequence[rpc_pb2.RequestOp]) -> int:
        """Apply ``ops`` (``put_op``, ``delete_op``) in one transaction without conditions; the
        header revision. The many-key writer's form of ``txn``: the operations are messages
        already, and the responses (one per operation) are not turned into dicts, which was
        most of the client's time in a 100,000-container ``fleet apply``."""
        request = rpc_pb2.TxnRequest(success=ops)
        reply = await self._unary("/etcdserverpb.KV/Txn", request, rpc_pb2.TxnResponse, _txn_what(request))
        return reply.header.revision

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        request = rpc_pb2.PutRequest(key=key, value=value, lease=lease)
        reply = await self._unary("/etcdserverpb.KV/Put", request, rpc_pb2.PutResponse, f"write {describe_range(key)}")
        return reply.header.revision

    async def compact(self, revision: int) -> None:
        request = rpc_pb2.CompactionRequest(revision=revision, physical=True)
        await self._unary("/etcdserverpb.KV/Compact", request, rpc_pb2.CompactionResponse, "compact the history")

    async def lease_grant(self, ttl: int) -> int:
        request = rpc_pb2.LeaseGrantRequest(TTL=ttl)
        reply = await self._unary(
            "/etcdserverpb.Lease/LeaseGrant", request, rpc_pb2.LeaseGrantResponse, "grant a lease"
        )
        return reply.ID

    async def lease_keepalive(self, lease: int) -> int:
        """The lease's remaining TTL; 0 when it has expired. One request on etcd's keep-alive
        stream, which is then closed: a renewal every TTL/3 needs no stream kept open."""

        async def attempt(url: str) -> int:
            call = self._channel(url).stream_stream(
                "/etcdserverpb.Lease/LeaseKeepAlive",
                request_serializer=rpc_pb2.LeaseKeepAliveRequest.SerializeToString,
                response_deserializer=rpc_pb2.LeaseKeepAliveResponse.FromString,
            )(timeout=self.timeout, metadata=self._metadata(True))
            try:
                await call.write(rpc_pb2.LeaseKeepAliveRequest(ID=lease))
                reply = await call.read()
            finally:
                call.cancel()
            if not isinstance(reply, rpc_pb2.LeaseKeepAliveResponse):  # the stream ended at once
                raise EtcdError(f"{_host(url)}: keep-alive stream closed without an answer", UNAVAILABLE)
            return int(reply.TTL)

        return await self._call(f"keep lease {lease:x} alive", attempt)

    async def lease_revoke(self, lease: int) -> None:
        request = rpc_pb2.LeaseRevokeRequest(ID=lease)
        await self._unary(
            "/etcdserverpb.Lease/LeaseRevoke", request, rpc_pb2.LeaseRevokeResponse, f"revoke lease {lease:x}"
        )

    async def watch(
        self, key: bytes, range_end: bytes, start_revision: int, idle_timeout: float
    ) -> AsyncIterator[WatchResult]:
        """Watch ``key``..``range_end`` from ``start_revision`` on the first endpoint, with
        progress notifications and the leader required, until the stream ends, an error comes,
        or nothing (not even a progress notification) arrives for ``idle_timeout`` seconds.

        A watch etcd refuses to create (canceled at once, without a compaction revision) is a
        permission denied, or a token that expired: the token is renewed and the watch asked for
        once more before that is raised."""
        url = self._order[0]
        what = f"watch {describe_range(key, range_end)}"
        create = rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(
                key=key, range_end=range_end, start_revision=start_revision, progress_notify=True
            )
        )
        stale, delivered = "", False
        for _attempt in range(2):
            await self._authenticate(url, stale)
            call = self._channel(url).stream_stream(
                "/etcdserverpb.Watch/Watch",
                request_serializer=rpc_pb2.WatchRequest.SerializeToString,
                response_deserializer=rpc_pb2.WatchResponse.FromString,
            )(metadata=self._metadata(True))
            refused = ""
            try:
                await call.write(create)
                while True:
                    try:
                        async with asyncio.timeout(idle_timeout):
                            reply = await call.read()
                    except TimeoutError:
                        raise EtcdError(
                            f"{_host(url)}: no watch message for {idle_timeout:g} s (not even a progress notification)",
                            UNAVAILABLE,
                        ) from None
                    if reply is grpc.aio.EOF:
                        return
                    assert isinstance(reply, rpc_pb2.WatchResponse)
                    if reply.canceled and not reply.compact_revision:
                        refused = reply.cancel_reason or "etcdserver: permission denied"
                        break
                    delivered = True
                    yield _watch_result(reply)
            except grpc.aio.AioRpcError as exc:
                if _stale_token(exc) and not stale and not delivered:
                    stale = self._token or "-"
                    continue
                if exc.code() in _ELSEWHERE:
                    await self._drop_channel(url)
                raise self._error(url, exc, what) from None
            finally:
                call.cancel()
            if self._token and not stale and not delivered:
                stale = self._token
                continue
            break
        raise EtcdError(f"{_host(url)}: {explain_message(refused, self.endpoints, what)}", PERMISSION_DENIED)


def _stale_token(exc: grpc.aio.AioRpcError) -> bool:
    """A token etcd no longer takes; or none, where one was not needed before and is now
    (authentication turned on while we ran with a user and password)."""
    details = exc.details() or ""
    return any(s in details for s in _STALE_TOKEN) or "user name is empty" in details


def _txn_what(request: rpc_pb2.TxnRequest) -> str:
    """What a transaction touches, for a permission denied: its keys, the first few."""
    keys = []
    for op in [*request.success, *request.failure]:
        kind = op.WhichOneof("request")
        if kind == "request_put":
            keys.append(op.request_put.key)
        elif kind == "request_delete_range":
            keys.append(op.request_delete_range.key)
        elif kind == "request_range":
            keys.append(op.request_range.key)
    keys += [c.key for c in request.compare]
    unique = list(dict.fromkeys(k.decode("utf-8", "replace") for k in keys))
    shown = ", ".join(unique[:3]) + (f" and {len(unique) - 3} more" if len(unique) > 3 else "")
    return f"write {shown or 'nothing'} (in one transaction)"


def _watch_result(reply: rpc_pb2.WatchResponse) -> WatchResult:
    events = tuple(WatchEvent(e.type == kv_pb2.Event.DELETE, KeyValue.of(e.kv)) for e in reply.events)
    return WatchResult(reply.header.revision, events, reply.compact_revision, reply.canceled, reply.created)


def explain(exc: grpc.aio.AioRpcError, endpoints: EtcdEndpoints, what: str) -> str:
    """One line for an RPC that failed: what is wrong, in terms of the flags that fix it."""
    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer in time (to {what}): the member is overloaded, or cut off from its cluster"
    return explain_message(exc.details() or exc.code().name, endpoints, what)


def explain_message(details: str, endpoints: EtcdEndpoints, what: str) -> str:
    """Etcd's or gRPC's message, said in terms of the flags that fix it (the first case whose
    words it has); a message no case knows is passed on as it is, on one line."""
    text = _GRPC_PREFIX.sub("", " ".join(details.split()))
    lower = text.lower()
    for needles, say in _CASES:
        if any(n in lower for n in needles):
            return say(text, endpoints, what)
    return text


def _untrusted_server(text: str, e: EtcdEndpoints, what: str) -> str:
    ca = f"--etcd-ca {e.ca_file}" if e.ca_file else "the system's CAs (no --etcd-ca given)"
    return f"TLS: etcd's certificate is not trusted: not signed by {ca}, or not valid for this address"


def _closed(text: str, e: EtcdEndpoints, what: str) -> str:
    hint = " (does it expect TLS? --etcd-tls, --etcd-ca)" if not e.ca_file else ""
    return f"connection closed by etcd{hint}: {text}"


_NEED_AUTH = (
    "etcd requires authentication: give --etcd-user and --etcd-password, or a client certificate"
    " whose CN is an etcd user (--etcd-cert, with etcd's --client-cert-auth)"
)
_CASES: tuple[tuple[tuple[str, ...], Callable[[str, EtcdEndpoints, str], str]], ...] = (
    (
        ("permission denied",),
        lambda t, e, w: f"permission denied: etcd user {etcd_user(e)} may not {w}",
    ),
    (
        ("authentication failed", "invalid user id or password"),
        lambda t, e, w: f"authentication failed: wrong password for etcd user {e.username}, or no such user",
    ),
    (("user name is empty",), lambda t, e, w: _NEED_AUTH),
    (("user name not found",), lambda t, e, w: f"no such etcd user {etcd_user(e)}"),
    (("no leader",), lambda t, e, w: "the member has no leader (no quorum): etcdserver: no leader"),
    (("certificate_verify_failed", "certificate verify failed"), _untrusted_server),
    (
        ("certificate_expired", "certificate expired"),
        lambda t, e, w: f"TLS: etcd refused the client certificate (--etcd-cert {e.cert_file}): it has expired",
    ),
    # etcd's "bad certificate" alert; with TLS 1.3 it arrives after the handshake, as a record
    # gRPC cannot decrypt (TSI_DATA_CORRUPTED)
    (
        ("bad_certificate", "bad certificate", "unknown_ca", "unknown ca", "tsi_data_corrupted", "unwrap failed"),
        lambda t, e, w: _refused_certificate(e),
    ),
    (
        ("certificate_required", "certificate required"),
        lambda t, e, w: "TLS: etcd requires a client certificate (--etcd-cert and --etcd-key)",
    ),
    (
        ("wrong_version_number", "wrong version number"),
        lambda t, e, w: "TLS to an endpoint that does not speak TLS (leave out --etcd-tls/--etcd-ca, or use http://)",
    ),
    (
        ("handshake read failed",),
        lambda t, e, w: "TLS handshake failed: the endpoint closed the connection (does it speak TLS at all?)",
    ),
    (("connection refused",), lambda t, e, w: "unreachable: connection refused"),
    (("ssl", "handshake"), lambda t, e, w: f"TLS handshake failed: {t}"),
    (("socket closed", "connection reset", "end of tcp stream", "connection closed"), _closed),
    (
        ("failed to connect", "unreachable", "no route", "timed out", "dns resolution"),
        lambda t, e, w: f"unreachable: {t}",
    ),
)


# What gRPC puts before the reason a connection failed.
_GRPC_PREFIX = re.compile(r"^failed to connect to all addresses; last error: \w+: (?:ipv[46]:)?\S+: ")


def _refused_certificate(endpoints: EtcdEndpoints) -> str:
    """One TLS alert, "bad certificate", is what etcd sends for an expired client certificate and
    for one from a CA it does not trust: the certificate's own dates tell them apart."""
    if not endpoints.cert_file:
        return "TLS: etcd requires a client certificate (--etcd-cert and --etcd-key)"
    why = "not signed by a CA etcd trusts (etcd's --trusted-ca-file)"
    expires = _not_after(endpoints.cert_file)
    if expires is not None and expires < time.time():
        why = f"it expired on {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(expires))}"
    return f"TLS: etcd refused the client certificate (--etcd-cert {endpoints.cert_file}): {why}"


def _decoded_certificate(path: str) -> dict[str, Any] | None:
    """A PEM certificate's fields, read with the ssl module's decoder (it has no public one);
    None when it cannot be read."""
    import ssl

    decode: Callable[[str], dict[str, Any]] | None = getattr(ssl._ssl, "_test_decode_cert", None)  # type: ignore[attr-defined]
    if decode is None or not path:
        return None
    with contextlib.suppress(Exception):
        return decode(path)
    return None


def _not_after(path: str) -> float | None:
    import ssl

    fields = _decoded_certificate(path)
    with contextlib.suppress(Exception):
        return float(ssl.cert_time_to_seconds(fields["notAfter"])) if fields else None
    return None


def etcd_user(endpoints: EtcdEndpoints) -> str:
    """Who etcd takes us for: the user given, else the client certificate's CN (with etcd's
    ``--client-cert-auth``), else nobody."""
    if endpoints.username:
        return endpoints.username
    fields = _decoded_certificate(endpoints.cert_file) or {}
    for rdn in fields.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return f"{value} (the client certificate's CN)"
    return "(none given)"
