"""``metadns redis-repair``: point a redis-cluster ``nodes.conf`` at the nodes' current addresses.

After a full restart every node comes back with a new IP, and each ``nodes.conf`` still lists the
old ones, so the nodes never find each other again. Each node ID maps to a stable container
name (a mapping file, or a container label carrying the node ID), each name to the container's
current ``primary_ip`` in the fleet; the file is rewritten with those IPs (ports kept) before the
node starts. Lines that cannot be mapped stay as they are and are reported; the original is kept
as a backup; a malformed file is refused without any change.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from shared.atomic_file import write_atomically
from shared.logs import log_event

log = logging.getLogger("redis-repair")
NODE_ID = re.compile(r"^[0-9a-f]{40}$")
ADDRESS = re.compile(r"^(?P<ip>\[?[0-9a-fA-F:.]*\]?):(?P<port>\d+)(?P<rest>@\d+(,.*)?)?$")
DEFAULT_LABEL = "io.metadns.redis.node-id"


class NodesConfError(ValueError):
    """nodes.conf is not in the format redis writes; nothing was changed."""


@dataclass
class Repair:
    text: str
    changed: dict[str, tuple[str, str]]  # node id -> (old address, new address)
    unmapped: dict[str, str]  # node id -> why


def parse_nodes_conf(text: str) -> list[list[str]]:
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "vars":
            lines.append(fields)
            continue
        if len(fields) < 8 or not NODE_ID.match(fields[0]) or not ADDRESS.match(fields[1]):
            raise NodesConfError(f"line {number}: not a redis cluster node line: {line[:80]!r}")
        lines.append(fields)
    if not any(f[0] != "vars" for f in lines):
        raise NodesConfError("no node lines")
    return lines


def repair(text: str, names: Mapping[str, str], addresses: Mapping[str, str]) -> Repair:
    """``names``: node id -> container name; ``addresses``: container name -> current IP."""
    lines = parse_nodes_conf(text)
    changed: dict[str, tuple[str, str]] = {}
    unmapped: dict[str, str] = {}
    out = []
    for fields in lines:
        if fields[0] != "vars":
            node = fields[0]
            name = names.get(node)
            ip = addresses.get(name) if name else None
            if name is None:
                unmapped[node] = "no container name for this node id"
            elif ip is None:
                unmapped[node] = f"container {name} is not in the fleet"
            else:
                match = ADDRESS.match(fields[1])
                assert match is not None
                new = f"{ip}:{match.group('port')}{match.group('rest') or ''}"
                if new != fields[1]:
                    changed[node] = (fields[1], new)
                    fields = [fields[0], new, *fields[2:]]
        out.append(" ".join(fields))
    return Repair("\n".join(out) + "\n", changed, unmapped)


def load_mapping(path: str) -> dict[str, str]:
    """Node ID to container name: YAML/JSON (``node_id: name``), or the redis-cluster seed's own
    ConfigMap form, ``<node-id> <pod-name>`` per line (``#`` comments and blank lines skipped)."""
    text = Path(path).read_text(encoding="utf-8")
    plain = _two_columns(text)
    if plain is not None:
        return plain
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise NodesConfError(f"{path}: neither '<node-id> <name>' lines nor a mapping: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise NodesConfError(f"{path}: expected a mapping of node id to container name, or '<node-id> <name>' lines")
    return {k.lower(): v for k, v in data.items()}


def _two_columns(text: str) -> dict[str, str] | None:
    """The ``<node-id> <name>`` form, or None when the text is not in it (node IDs are 40 hex
    digits, which is what tells it from YAML)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2 or len(fields[0]) != 40 or any(c not in "0123456789abcdefABCDEF" for c in fields[0]):
            return None
        out[fields[0].lower()] = fields[1]
    return out or None


def fleet_names(containers: list[dict[str, object]], label: str) -> tuple[dict[str, str], dict[str, str]]:
    """(node id -> name from the label, name -> primary IP) from the metadata container list."""
    by_label: dict[str, str] = {}
    addresses: dict[str, str] = {}
    for c in containers:
        name = str(c.get("name", ""))
        addresses[name] = str(c.get("primary_ip", ""))
        labels = c.get("labels") or {}
        if isinstance(labels, dict) and isinstance(labels.get(label), str):
            by_label[labels[label].lower()] = name
    return by_label, addresses


def apply(path: Path, result: Repair, backup_suffix: str) -> None:
    if not result.changed:
        return
    shutil.copy2(path, path.with_name(path.name + backup_suffix))
    write_atomically(path, result.text, path.stat().st_mode & 0o777)


def report(path: Path, result: Repair) -> None:
    for node, (old, new) in result.changed.items():
        log_event(log, logging.INFO, "node_moved", file=str(path), node=node, old=old, new=new)
    for node, why in result.unmapped.items():
        log_event(log, logging.WARNING, "node_unmapped", file=str(path), node=node, reason=why)
