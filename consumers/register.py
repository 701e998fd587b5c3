"""``metadns register``: the per-host agent that keeps this host and its containers in etcd.

It reads a file with this host's ``hosts[]`` entry and its ``containers[]`` (the fleet file's
format), validates them against the fleet in etcd (as the file source would: a dangling stack or
service refuses the file, with the same one-line reason), and writes them under one lease that it
keeps alive every TTL/3. When the agent stops, its lease is revoked; when its host dies, the
lease expires after TTL seconds: either way its containers *vanish* from the fleet, and from
the service answers on every host, within TTL (plus a second or two for the followers).

A container is its uuid: the agent first claims ``claims/uuid/<uuid>`` (only if nobody holds it,
or this host already does), so two agents can never register the same container; the one that
comes second is refused for it, with one log line, and keeps the others.
The file is followed: containers added, changed or removed are written as they change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from shared.etcd import EtcdClient, EtcdError, b64
from shared.etcd_fleet import object_key
from shared.etcd_objects import fleet_from_keys
from shared.logs import log_event
from shared.model import Fleet, FleetError

log = logging.getLogger("register")


@dataclass
class Registration:
    """What this agent holds in etcd: keys (below the prefix) and their values."""

    lease: int = 0
    keys: dict[str, bytes] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def _dump(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class Agent:
    def __init__(
        self, client: EtcdClient, prefix: bytes, host: str, path: Path, ttl: int = 10, poll: float = 1.0
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.host = host
        self.path = path
        self.ttl = ttl
        self.poll = poll
        self.held = Registration()
        self.taken: dict[str, str] = {}  # uuid -> the host that holds it

    def wanted(self, fleet_values: dict[str, bytes]) -> dict[str, bytes]:
        """The keys of this host from the file, validated together with the fleet in etcd."""
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise FleetError(str(self.path), f"cannot read: {' '.join(str(exc).split())}") from None
        if not isinstance(data, dict) or "containers" not in data:
            raise FleetError(str(self.path), "expected a mapping with 'containers' (and this host under 'hosts')")
        hosts = [
            h for h in data.get("hosts") or () if isinstance(h, dict) and self.host in (h.get("uuid"), h.get("name"))
        ]
        if not hosts:
            raise FleetError(str(self.path), f"no hosts[] entry for host {self.host!r}")
        hosts = [{**hosts[0], "uuid": self.host}]  # --host is the uuid the keys carry
        current, _ = fleet_from_keys(fleet_values)
        raw = current.raw
        containers = [{**c, "host_uuid": c.get("host_uuid") or self.host} for c in data.get("containers") or ()]
        if any(c["host_uuid"] != self.host for c in containers):
            raise FleetError(str(self.path), f"a container of another host than {self.host!r}")
        taken = {c["uuid"]: c.get("host_uuid") for c in raw.get("containers", ()) if c.get("host_uuid") != self.host}
        for c in [c for c in containers if c.get("uuid") in taken]:
            containers.remove(c)  # another host's agent holds it: refused below, the rest goes on
            self.taken[str(c["uuid"])] = str(taken[c["uuid"]])
        merged = {
            "environment": raw.get("environment") or {},
            "hosts": [h for h in raw.get("hosts", ()) if h["uuid"] != self.host] + hosts,
            "stacks": list(raw.get("stacks", ())),
            "services": list(raw.get("services", ())),
            "containers": [c for c in raw.get("containers", ()) if c.get("host_uuid") != self.host] + containers,
        }
        fleet = Fleet.from_mapping(merged, lambda kind, i: f"{self.path} {kind}[{i}]")
        out: dict[str, bytes] = {}
        for h in fleet.raw["hosts"]:
            if h["uuid"] == self.host:
                out[object_key("hosts", h)] = _dump(h)
        for c in fleet.raw["containers"]:
            if c.get("host_uuid") == self.host:
                out[object_key("containers", c)] = _dump(c)
        return out

    async def register(self) -> None:
        """Bring etcd in line with the file: claim and put what is new or changed, delete what went."""
        kvs, _ = await self.client.list_prefix(self.prefix)
        values = {kv.key[len(self.prefix) :].decode(): kv.value for kv in kvs}
        self.taken = {}
        wanted = self.wanted(values)
        for uuid, holder in self.taken.items():
            key = f"claims/uuid/{uuid}"
            problem = f"container uuid {uuid} is registered by host {holder!r}"
            if self.held.refused.get(key) != problem:
                log_event(log, logging.ERROR, "registration_refused", key=self.prefix.decode() + key, problem=problem)
            self.held.refused[key] = problem
        if not self.held.lease:
            self.held = Registration(lease=await self.client.lease_grant(self.ttl))
        lease = self.held.lease
        for key, value in wanted.items():
            if self.held.keys.get(key) == value:
                continue
            problem = await self._claim_and_put(key, value, lease)
            if problem:
                if self.held.refused.get(key) != problem:
                    log_event(
                        log, logging.ERROR, "registration_refused", key=self.prefix.decode() + key, problem=problem
                    )
                self.held.refused[key] = problem
                continue
            self.held.refused.pop(key, None)
            self.held.keys[key] = value
        for key in [k for k in self.held.keys if k not in wanted]:
            ops = [{"request_delete_range": {"key": b64(self.prefix + key.encode())}}]
            uuid = _uuid_of(key)
            if uuid:
                ops.append({"request_delete_range": {"key": b64(self.prefix + f"claims/uuid/{uuid}".encode())}})
            await self.client.txn([], ops)
            del self.held.keys[key]
        log_event(
            log,
            logging.INFO,
            "registered",
            host=self.host,
            keys=len(self.held.keys),
            refused=len(self.held.refused),
            lease=lease,
            ttl_s=self.ttl,
        )

    async def _claim_and_put(self, key: str, value: bytes, lease: int) -> str:
        """Put ``key`` under the lease, with its uuid's claim; a problem when another holds it."""
        put = {"request_put": {"key": b64(self.prefix + key.encode()), "value": b64(value), "lease": lease}}
        uuid = _uuid_of(key)
        if not uuid:
            await self.client.txn([], [put])
            return ""
        claim = self.prefix + f"claims/uuid/{uuid}".encode()
        claim_put = {"request_put": {"key": b64(claim), "value": b64(self.host.encode()), "lease": lease}}
        for compare in (
            {"key": b64(claim), "target": "CREATE", "result": "EQUAL", "create_revision": "0"},
            {"key": b64(claim), "target": "VALUE", "result": "EQUAL", "value": b64(self.host.encode())},
        ):
            ok, _, _ = await self.client.txn([compare], [claim_put, put])
            if ok:
                return ""
        kvs, _, _ = await self.client.range(claim)
        holder = kvs[0].value.decode() if kvs else "?"
        return f"container uuid {uuid} is registered by host {holder!r}"

    async def keep_alive(self) -> None:
        """Renew every TTL/3; a lease found expired (TTL 0) is granted anew and all re-registered."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                if await self.client.lease_keepalive(self.held.lease) <= 0:
                    log_event(log, logging.WARNING, "lease_expired", lease=self.held.lease, action="registering again")
                    self.held = Registration()
                    await self.register()
            except (EtcdError, FleetError, OSError) as exc:
                log_event(log, logging.WARNING, "keepalive_failed", problem=str(exc))

    async def follow(self) -> None:
        """Register again when the file changes."""

        def stamp() -> tuple[int, int] | None:
            try:
                st = self.path.stat()
            except OSError:
                return None
            return st.st_mtime_ns, st.st_size

        last = stamp()
        while True:
            await asyncio.sleep(self.poll)
            now = stamp()
            if now != last:
                last = now
                try:
                    await self.register()
                except FleetError as exc:
                    log_event(
                        log,
                        logging.ERROR,
                        "containers_file_refused",
                        where=exc.where,
                        problem=exc.problem,
                        keeping="the last good registration",
                    )
                except EtcdError as exc:
                    log_event(log, logging.WARNING, "register_failed", problem=str(exc))

    async def run(self) -> int:
        await self.register()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(self.keep_alive()), asyncio.create_task(self.follow())]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(EtcdError, OSError):
                await self.client.lease_revoke(self.held.lease)  # leave at once, not after the TTL
            log_event(log, logging.INFO, "unregistered", host=self.host, lease=self.held.lease)
        return 0


def _uuid_of(key: str) -> str:
    parts = key.split("/")
    return parts[2] if parts[0] == "containers" and len(parts) == 3 else ""
