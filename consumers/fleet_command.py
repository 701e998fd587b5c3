"""``metadns fleet apply|put|get|delete``: the fleet in etcd, written from a fleet file.

``apply`` validates the file exactly as the file source does (a file that fails writes nothing
and exits 1 with the same one-line reason), reads what is under the prefix, and writes only the
difference: new and changed objects put, objects no longer in the file deleted, in
transactions of at most 128 operations (etcd's default ``--max-txn-ops``; a larger change is
several transactions, each applied whole, and followers may see the steps between them).
Keys held by a lease are an agent's registrations (``metadns register``): ``apply`` never
changes or removes them. ``--dry-run`` prints the difference and writes nothing. ``put``
(``consumers/fleet_put.py``) writes only the objects a file names, validated with what etcd
holds, and deletes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from consumers.fleet_put import put, read_put_file
from consumers.fleet_status import assess, read_status, render_json, render_table
from metadata_svc.sources.file import parse_fleet_text
from shared.collector import collector_paused
from shared.etcd import (
    MAX_TXN_OPS,
    EtcdClient,
    EtcdError,
    RequestOp,
    add_etcd_flags,
    delete_op,
    endpoints_from_flags,
    put_op,
)
from shared.etcd_fleet import fleet_keys
from shared.etcd_objects import fleet_from_keys
from shared.model import Fleet, FleetError
from shared.settings import FlagParser

T = TypeVar("T")

FLEET_HELP = """\
The fleet in etcd, for every host's metadata service (metadata-svc --source etcd://HOST:PORT/PREFIX):

  metadns fleet apply --etcd 127.0.0.1:2379 --prefix /metadns/v1/ fleet.yaml [--dry-run]
  metadns fleet put   --etcd 127.0.0.1:2379 --prefix /metadns/v1/ some-objects.yaml [--dry-run]
  metadns fleet get   --etcd 127.0.0.1:2379 --prefix /metadns/v1/ > fleet.yaml
  metadns fleet delete --etcd 127.0.0.1:2379 --prefix /metadns/v1/ containers/host-a/c-web-1
  metadns fleet status --etcd 127.0.0.1:2379 --prefix /metadns/v1/ [--max-lag 30] [--json]
"""

STATUS_HELP = """Which host serves which revision of the fleet, and which are behind: one line per host, from the
report every host's metadata service keeps in etcd (<prefix>status/hosts/<host>, every
--status-interval seconds and whenever what it serves changes):

  HOST    SERVED  BEHIND  LAG    LAST HEARD  METADNS  NOTE
  host-a  1042    0       0.0s   3.1s ago    0.1.0
  host-b  1031    11      41.2s  41.9s ago   0.1.0    silent: no report for 41.9s (heartbeat 10.0s)

SERVED is the etcd revision at which the content it serves last changed (its version index);
BEHIND the newest content revision minus that (etcd revisions, not changes); LAG how long it has
been behind, in seconds; LAST HEARD the age of its report. A host that misses two heartbeats is
"silent" (stopped, hung, or cut off from etcd); a host of the fleet without a report is listed as
"never" (no metadata service on etcd, or its lease expired). Exit status: 0; 1 when a host has
been behind for more than --max-lag seconds (each is named on stderr); 2 when etcd cannot be read.

  metadns fleet status --etcd 127.0.0.1:2379 --prefix /metadns/v1/ --max-lag 30
"""


def _parser(command: str, env: str = "METADNS_FLEET", description: str = FLEET_HELP) -> FlagParser:
    """A parser with the etcd connection flags every etcd command takes."""
    p = FlagParser(env, prog=f"metadns {command}", description=description)
    p.flag("--etcd", default="127.0.0.1:2379", help="etcd endpoints, HOST:PORT[,HOST:PORT...]")
    p.flag("--prefix", default="/metadns/v1/", help="where the fleet's keys are")
    add_etcd_flags(p)
    return p


def _client(ns: argparse.Namespace) -> EtcdClient:
    return EtcdClient(endpoints_from_flags(ns.etcd, ns))


def _prefix(text: str) -> bytes:
    return ("/" + text.strip("/") + "/").encode() if text.strip("/") else b"/"


async def apply(client: EtcdClient, prefix: bytes, wanted: dict[str, bytes], dry_run: bool) -> list[tuple[str, str]]:
    """Write the difference between ``wanted`` and what is under ``prefix``; the changes as
    (sign, key): ``+`` new, ``~`` changed, ``-`` deleted."""
    kvs, _ = await client.list_prefix(prefix)
    current = {kv.key[len(prefix) :].decode(): kv for kv in kvs}
    # What the agents hold must still stand after the change: a stack or service they use
    # cannot be taken away under them.
    leased = {key: kv.value for key, kv in current.items() if kv.lease}
    # (Without registrations, the file's own validation stands: validating it again as keys
    # would cost a 100,000-container apply as much again.)
    _, conflicts = fleet_from_keys({**wanted, **leased}) if leased else (None, {})
    if conflicts:  # the file alone is valid: what clashes, clashes with an agent's registration
        key, problem = next(iter(sorted(conflicts.items())))
        whose = "agent-registered " if key in leased else ""
        raise FleetError(f"{whose}{prefix.decode()}{key}", f"clashes with what the agents registered: {problem}")
    changes: list[tuple[str, str]] = []
    ops: list[RequestOp] = []
    for key, value in sorted(wanted.items()):
        old = current.get(key)
        if old is not None and old.lease:
            continue  # an agent's registration: not ours to change
        if old is None or old.value != value:
            changes.append(("+" if old is None else "~", key))
            ops.append(put_op(prefix + key.encode(), value))
    for key, kv in sorted(current.items()):
        if key not in wanted and not kv.lease:
            changes.append(("-", key))
            ops.append(delete_op(prefix + key.encode()))
    if not dry_run:
        # A few transactions in flight at once: etcd applies them one by one either way, and a
        # 100,000-container fleet is a thousand of them, each otherwise a round trip alone.
        batches = [ops[start : start + MAX_TXN_OPS] for start in range(0, len(ops), MAX_TXN_OPS)]
        in_flight = asyncio.Semaphore(TXNS_IN_FLIGHT)

        async def send(batch: list[RequestOp]) -> None:
            async with in_flight:
                await client.write(batch)

        try:
            async with asyncio.TaskGroup() as group:  # the first failure stops the rest
                for batch in batches:
                    group.create_task(send(batch))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
    return changes


# 16 rather than 8: 122,000 puts (the 100k bench fleet) took 3.4 s with 8 in flight, 2.9 s with 16,
# and no less with 32 (one etcd member on loopback, sharing two cores with the client).
TXNS_IN_FLIGHT = 16


async def current_fleet(client: EtcdClient, prefix: bytes) -> tuple[Mapping[str, Any], dict[str, str]]:
    kvs, _ = await client.list_prefix(prefix)
    fleet, bad = fleet_from_keys({kv.key[len(prefix) :].decode(): kv.value for kv in kvs})
    return fleet.raw, bad


REGISTER_HELP = """\
The per-host agent: keep this host and its containers in etcd under a lease (they vanish from
every host's answers within --lease-ttl seconds when the agent stops or the host dies).

  metadns register --etcd 127.0.0.1:2379 --prefix /metadns/v1/ --host host-a --containers host-a.yaml
"""


def register_main(argv: list[str]) -> int:
    from consumers.register import Agent
    from shared.logs import setup_logging

    p = _parser("register", "METADNS_REGISTER", REGISTER_HELP)
    p.flag("--host", default="", help="this host's uuid (its hosts[] entry is found by uuid or name)")
    p.flag("--containers", default="", help="file with this host's hosts[] entry and its containers[]")
    p.flag("--lease-ttl", default=10, type=int, help="seconds a dead host's containers stay registered")
    p.flag("--poll-interval", default=1.0, type=float, help="seconds between checks of --containers for changes")
    p.flag("--log-level", default="info", choices=("debug", "info", "warning", "error"), help="how much to log")
    ns = p.parse_flags(argv)
    if not ns.host or not ns.containers:
        p.error("--host and --containers are required")
    if ns.lease_ttl < 2:
        p.error("--lease-ttl must be at least 2 seconds")
    setup_logging(ns.log_level)

    async def run(client: EtcdClient) -> int:
        return await Agent(
            client, _prefix(ns.prefix), ns.host, Path(ns.containers), ns.lease_ttl, ns.poll_interval
        ).run()

    try:
        return asyncio.run(_run(ns, run))
    except (FleetError, EtcdError) as exc:
        return _refused("register", "nothing registered", exc)


FLEET_COMMANDS = ("apply", "put", "get", "delete", "status")


def _fleet_parser(command: str) -> FlagParser:
    p = _parser(f"fleet {command}", description=STATUS_HELP if command == "status" else FLEET_HELP)
    if command == "apply":
        p.add_argument("file", help="the fleet file (YAML or JSON), as the file source reads it")
        p.flag("--dry-run", action="store_true", help="print the difference, write nothing")
    elif command == "put":
        p.add_argument(
            "file",
            help="the objects to add or replace (hosts, stacks, services, containers, environment), "
            "in the fleet file's layout",
        )
        p.flag("--dry-run", action="store_true", help="print what would be written, write nothing")
    elif command == "delete":
        p.add_argument("keys", nargs="+", help="keys below the prefix, as 'fleet get --keys' prints them")
    elif command == "status":
        p.flag(
            "--max-lag",
            default=0.0,
            type=float,
            help="exit 1 when a host has been behind for more than this many seconds; 0: never",
        )
        p.flag("--json", action="store_true", help="print one JSON document (the hosts' reports included)")
    else:
        p.flag("--keys", action="store_true", help="print the keys and their values instead of a fleet file")
    return p


def fleet_main(argv: list[str]) -> int:
    if not argv or argv[0] not in FLEET_COMMANDS:
        print(f"usage: metadns fleet {{{','.join(FLEET_COMMANDS)}}} [--help]\n\n" + FLEET_HELP, file=sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    ns = _fleet_parser(command).parse_flags(rest)
    prefix = _prefix(ns.prefix)
    if command == "status":
        return _status(ns, prefix)
    try:
        if command in ("apply", "put"):
            # A command's whole run is one fleet read, validated, encoded and written: the
            # collector would walk it again and again for nothing (``collector_paused``).
            with collector_paused():
                if command == "apply":
                    keys = fleet_keys(_read_fleet(ns.file))
                    changes = asyncio.run(_run(ns, lambda c: apply(c, prefix, keys, ns.dry_run)))
                else:
                    wanted = _read_put(ns.file)
                    changes = asyncio.run(_run(ns, lambda c: put(c, prefix, wanted, ns.file, ns.dry_run)))
            for sign, key in changes:
                print(f"{sign} {prefix.decode()}{key}")
            print(f"{'would change' if ns.dry_run else 'changed'} {len(changes)} key(s)", file=sys.stderr)
        elif command == "get":
            _get(ns, prefix)
        else:

            async def delete(c: EtcdClient) -> None:
                ops = [delete_op(prefix + k.strip("/").encode()) for k in ns.keys]
                for start in range(0, len(ops), MAX_TXN_OPS):
                    await c.write(ops[start : start + MAX_TXN_OPS])

            asyncio.run(_run(ns, delete))
    except (FleetError, EtcdError) as exc:
        return _refused(f"fleet {command}", "nothing written", exc)
    return 0


def _status(ns: argparse.Namespace, prefix: bytes) -> int:
    """Print the hosts' status; 1 when one has been behind for over --max-lag, 2 when etcd
    cannot be read (1 is taken: a monitor tells "a host lags" from "cannot tell")."""
    try:
        status = asyncio.run(_run(ns, lambda c: read_status(c, prefix)))
    except EtcdError as exc:
        print(f"metadns fleet status: etcd: {exc}", file=sys.stderr)
        return 2
    now = time.time()
    states = assess(status, now)
    print(render_json(status, states, now) if ns.json else render_table(status, states))
    late = [s for s in states if ns.max_lag > 0 and s.lag_s > ns.max_lag]
    for state in late:
        print(
            f"metadns fleet status: {state.host} has been behind for {state.lag_s:.1f} s (more than --max-lag"
            f" {ns.max_lag:g}): serves revision {state.revision}, {state.behind_revisions} behind"
            + (f", silent for {state.last_heard_s:.1f} s" if state.silent else ""),
            file=sys.stderr,
        )
    return 1 if late else 0


def _get(ns: argparse.Namespace, prefix: bytes) -> None:
    if ns.keys:
        kvs = asyncio.run(_run(ns, lambda c: c.list_prefix(prefix)))[0]
        for kv in kvs:
            print(f"{kv.key.decode()} {kv.value.decode('utf-8', 'replace')}")
        return
    raw, bad = asyncio.run(_run(ns, lambda c: current_fleet(c, prefix)))
    for key, problem in bad.items():
        print(f"held back: {prefix.decode()}{key}: {problem}", file=sys.stderr)
    print(yaml.safe_dump(json.loads(json.dumps(raw)), sort_keys=False, allow_unicode=True), end="")


def _read_fleet(path: str) -> Fleet:
    try:
        return parse_fleet_text(Path(path).read_text(encoding="utf-8"), path)
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetError(path, f"cannot read: {exc}") from None


def _read_put(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetError(path, f"cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise FleetError(path, f"does not parse: {str(exc).splitlines()[0]}") from None
    return read_put_file(data, path)


def _refused(command: str, outcome: str, exc: FleetError | EtcdError) -> int:
    """One line on stderr saying why, and the exit code 1."""
    if isinstance(exc, FleetError):
        print(f"metadns {command}: refused, {outcome}: {exc.where}: {exc.problem}", file=sys.stderr)
    else:
        print(f"metadns {command}: etcd: {exc}", file=sys.stderr)
    return 1


async def _run(ns: argparse.Namespace, work: Callable[[EtcdClient], Awaitable[T]]) -> T:
    async with _client(ns) as client:
        return await work(client)
