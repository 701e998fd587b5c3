"""The fleet as etcd keys: one JSON object per key under a prefix, with the fleet file's field
names, so that a change to one container is one event and a watcher applies whole objects.

    <prefix>environment                      {"name", "uuid"}
    <prefix>hosts/<host uuid>                a hosts[] entry
    <prefix>stacks/<stack>                   a stacks[] entry
    <prefix>services/<stack>/<service>       a services[] entry, without its token
    <prefix>tokens/<stack>/<service>         {"token"}: a range of its own, for etcd's access control
    <prefix>containers/<host uuid>/<uuid>    a containers[] entry ("-" for no host)
    <prefix>claims/uuid/<uuid>               the host whose agent registered that container
    <prefix>status/hosts/<host uuid>         what that host's metadata service serves (under its lease)

``status/`` is never fleet content: the hosts' reports of what they serve (``metadata_svc/
host_status.py``, read by ``metadns fleet status``) are skipped by every reader of the fleet, and
a report never moves the revision the content last changed at (the version index), so a
heartbeat costs the followers no rebuild and the same data keeps one version on every host.

A follower reads every key and validates each object on its own: an object that is not JSON,
sits under the wrong key, or that validation refuses (a dangling reference, a malformed IP) is
held back and reported with its key, and never keeps the rest of the fleet from being served.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

from shared.model import Fleet

KINDS = ("environment", "hosts", "stacks", "services", "containers")
STATUS_PREFIX = "status/"  # below the fleet prefix: the hosts' reports, not content
HOST_STATUS_PREFIX = "status/hosts/"


_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*")  # what quote(..., safe="") leaves as it is


def _part(text: str) -> str:
    # Nearly every name and uuid is plain: one match instead of quote's work, 240,000 times
    # over in a 100,000-container fleet's keys.
    return text if _PLAIN.fullmatch(text) else quote(text, safe="")


def object_key(kind: str, obj: Mapping[str, Any]) -> str:
    """The key (below the prefix) of one object of a validated fleet."""
    if kind == "environment":
        return "environment"
    if kind == "hosts":
        return f"hosts/{_part(obj['uuid'])}"
    if kind == "stacks":
        return f"stacks/{_part(obj['name'])}"
    if kind == "services":
        return f"services/{_part(obj['stack_name'])}/{_part(obj['name'])}"
    return f"containers/{_part(obj.get('host_uuid') or '-')}/{_part(obj['uuid'])}"


def host_status_key(host: str) -> str:
    """The key (below the prefix) where ``host``'s metadata service reports what it serves."""
    return HOST_STATUS_PREFIX + _part(host)


def is_status_key(key: str) -> bool:
    """A key (below the prefix) of the hosts' reports: never part of the fleet."""
    return key.startswith(STATUS_PREFIX)


def fleet_keys(fleet: Fleet) -> dict[str, bytes]:
    """Every key and value that stores ``fleet`` (values as compact, sorted JSON)."""
    raw = fleet.raw
    out = {"environment": _dump(raw.get("environment") or {})}
    for kind in KINDS[1:]:
        for obj in raw.get(kind) or ():
            if kind == "services":
                token = obj.get("token") or ""
                obj = {k: v for k, v in obj.items() if k != "token"}
                if token:
                    out[f"tokens/{_part(obj['stack_name'])}/{_part(obj['name'])}"] = _dump({"token": token})
            out[object_key(kind, obj)] = _dump(obj)
    return out


_VALUE_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # one for all: dumps makes one per call


def _dump(obj: Any) -> bytes:
    return _VALUE_JSON.encode(obj).encode()


_KEY_FIELDS = {
    "hosts": ("uuid",),
    "stacks": ("name",),
    "services": ("stack_name", "name"),
    "containers": ("host_uuid", "uuid"),
}


def named_by_key(kind: str, key: str, obj: dict[str, Any]) -> str | None:
    """The key names the object: fields it leaves out are taken from it, fields that say
    otherwise make the object refused (two keys must never claim one object)."""
    parts = key_names(key)[1:]
    fields = _KEY_FIELDS[kind]
    if len(parts) != len(fields):
        return "not a key of the fleet layout"
    for field, part in zip(fields, parts, strict=True):
        if field == "host_uuid" and part == "-":
            part = ""
        value = obj.get(field)
        if value in (None, ""):
            if part:
                obj[field] = part
        elif str(value) != part:
            return f"its {field} {value!r} is not the {part!r} its key says"
    return None


def key_names(key: str) -> list[str]:
    """The decoded parts of a key below the prefix."""
    if "%" not in key:  # nothing quoted (almost every key): a cold list splits 100,000s of them
        return key.split("/")
    return [unquote(p) for p in key.split("/")]
