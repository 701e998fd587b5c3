"""``metadns fleet status``: which host serves which revision, and which are behind.

Every host's metadata service reports what it serves in ``<prefix>status/hosts/<host>``
(``metadata_svc/host_status.py``). This reads those reports and the revision the fleet's content
last changed at, all at one etcd revision, without listing the content: the newest content key
comes from a range sorted by ``mod_revision`` with a limit of one, on each side of ``status/``
(the reports are not content, and their writes would otherwise always be "newest"). A delete
leaves no key behind, so the newest revision any host serves counts too.

How far behind a host is:

- in revisions: the newest content revision minus the one it serves (a distance in etcd's
  revision counter, which every write to the cluster advances, not a count of changes);
- in seconds: how long it has been behind. A host that reports says so itself (from when it
  first knew of a revision it had not seen through its watch). A host that serves older content
  than another has been behind at least since the first host that serves newer content applied
  it. A host that has missed its heartbeats (silent: stopped, hung, cut off from etcd) and serves
  older content is counted as behind since its last report, the last moment it said anything.

Clocks: the seconds compare the hosts' wall clocks with this machine's; keep them in NTP.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.etcd import EtcdClient, prefix_end
from shared.etcd_fleet import HOST_STATUS_PREFIX, STATUS_PREFIX, key_names

SILENT_AFTER_HEARTBEATS = 2  # a host is silent once this many heartbeats (and a second) went unwritten


@dataclass(frozen=True)
class FleetStatus:
    """What etcd holds, at ``etcd_revision``: the newest content revision, each host's report
    (or why it cannot be read), and the fleet's hosts that have none."""

    etcd_revision: int
    content_revision: int
    reports: dict[str, dict[str, Any]]
    unreadable: dict[str, str] = field(default_factory=dict)
    fleet_hosts: tuple[str, ...] = ()

    @property
    def newest(self) -> int:
        """The newest content revision: the last key changed, or a delete some host has served."""
        return max([self.content_revision, *(_int(r.get("revision")) for r in self.reports.values())])

    @property
    def not_reporting(self) -> list[str]:
        return sorted(set(self.fleet_hosts) - set(self.reports) - set(self.unreadable))


@dataclass(frozen=True)
class HostState:
    host: str
    revision: int
    behind_revisions: int
    lag_s: float
    last_heard_s: float
    silent: bool
    report: Mapping[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "revision": self.revision,
            "behind_revisions": self.behind_revisions,
            "lag_s": round(self.lag_s, 3),
            "last_heard_s": round(self.last_heard_s, 3),
            "silent": self.silent,
            "report": dict(self.report),
        }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


async def read_status(client: EtcdClient, prefix: bytes) -> FleetStatus:
    """Every host's report and the newest content revision, read at one revision."""
    status = prefix + STATUS_PREFIX.encode()
    before, revision = await client.newest(prefix, status)
    after, _ = await client.newest(prefix_end(status), prefix_end(prefix), revision=revision)
    content = max((kv.mod_revision for kv in (before, after) if kv is not None), default=0)
    reports_at = prefix + HOST_STATUS_PREFIX.encode()
    kvs, _, _ = await client.range(reports_at, prefix_end(reports_at), revision=revision)
    reports: dict[str, dict[str, Any]] = {}
    unreadable: dict[str, str] = {}
    for kv in kvs:
        host = key_names(kv.key[len(reports_at) :].decode("utf-8", "replace"))[0]
        try:
            report = json.loads(kv.value)
        except (ValueError, UnicodeDecodeError) as exc:
            unreadable[host] = f"not JSON: {exc}"
            continue
        if not isinstance(report, dict):
            unreadable[host] = f"not a JSON object but {type(report).__name__}"
            continue
        reports[host] = report
    hosts_at = prefix + b"hosts/"
    host_kvs, _, _ = await client.range(hosts_at, prefix_end(hosts_at), revision=revision)
    fleet_hosts = tuple(key_names(kv.key[len(hosts_at) :].decode("utf-8", "replace"))[0] for kv in host_kvs)
    return FleetStatus(revision, content, reports, unreadable, fleet_hosts)


def assess(status: FleetStatus, now: float | None = None) -> list[HostState]:
    """Each reporting host: what it serves, how far behind (see the module's docstring)."""
    now = time.time() if now is None else now
    newest = status.newest
    out = []
    for host, report in sorted(status.reports.items()):
        served = _int(report.get("revision"))
        written_at = _float(report.get("written_at")) or 0.0
        heartbeat = _float(report.get("heartbeat_s")) or 10.0
        last_heard = max(now - written_at, 0.0)
        silent = last_heard > SILENT_AFTER_HEARTBEATS * heartbeat + 1.0
        behind_since = _float(report.get("behind_since"))
        lag = max(now - behind_since, 0.0) if behind_since is not None else 0.0
        behind = max(newest - served, 0)
        if behind:
            newer = [
                at
                for r in status.reports.values()
                if _int(r.get("revision")) > served and (at := _float(r.get("applied_at"))) is not None
            ]
            since = written_at if silent else min(newer, default=now)
            lag = max(lag, now - since)
        out.append(HostState(host, served, behind, lag, last_heard, silent, report))
    return out


def _seconds(value: float) -> str:
    return f"{value:.1f}s"


def render_table(status: FleetStatus, states: list[HostState]) -> str:
    """One line per host, as ``fleet status`` prints it."""
    rows = [("HOST", "SERVED", "BEHIND", "LAG", "LAST HEARD", "METADNS", "NOTE")]
    for state in states:
        notes = []
        if state.silent:
            notes.append(
                f"silent: no report for {_seconds(state.last_heard_s)} (heartbeat {state.report.get('heartbeat_s')}s)"
            )
        if state.report.get("following") is False:
            notes.append(f"not following etcd: {state.report.get('problem') or 'unreachable'}")
        rows.append(
            (
                state.host,
                str(state.revision),
                str(state.behind_revisions),
                _seconds(state.lag_s),
                f"{_seconds(state.last_heard_s)} ago",
                str(state.report.get("metadns") or "-"),
                "; ".join(notes),
            )
        )
    for host, problem in sorted(status.unreadable.items()):
        rows.append((host, "-", "-", "-", "-", "-", f"unreadable report: {problem}"))
    for host in status.not_reporting:
        rows.append((host, "-", "-", "-", "never", "-", "no report: no metadata service on etcd, or its lease expired"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows
    ]
    lines = [line.rstrip() for line in lines]
    lines.append(f"newest content revision {status.newest} (etcd at revision {status.etcd_revision})")
    return "\n".join(lines)


def render_json(status: FleetStatus, states: list[HostState], now: float) -> str:
    return json.dumps(
        {
            "checked_at": round(now, 3),
            "etcd_revision": status.etcd_revision,
            "newest_revision": status.newest,
            "hosts": [state.as_json() for state in states],
            "unreadable": status.unreadable,
            "not_reporting": status.not_reporting,
        },
        indent=2,
    )
