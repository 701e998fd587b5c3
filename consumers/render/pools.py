"""Whole mcrouter configs for one memcached service (the mcrouter operator's two setups), and
a check of any rendered config against mcrouter's documented shape.

- sharded: one pool, ``PoolRoute`` (consistent hashing, mcrouter's default ch3): each key on one server.
- replicated: writes to every server (``AllSyncRoute``), gets from one (``LatestRoute``, which
  fails over to the next server).
"""

from __future__ import annotations

import re
from typing import Any

POOL = "A"


def pool_template(setup: str, servers_token: str) -> dict[str, Any]:
    pools = {POOL: {"servers": [servers_token]}}
    if setup == "sharded":
        return {"pools": pools, "route": f"PoolRoute|{POOL}"}
    if setup == "replicated":
        all_servers = f"AllSyncRoute|Pool|{POOL}"
        return {
            "pools": pools,
            "route": {
                "type": "OperationSelectorRoute",
                "default_policy": all_servers,
                "operation_policies": {
                    "get": f"LatestRoute|Pool|{POOL}",
                    "gets": f"LatestRoute|Pool|{POOL}",
                    "set": all_servers,
                    "add": all_servers,
                    "delete": all_servers,
                },
            },
        }
    raise ValueError(f"unknown pool setup {setup!r}: sharded or replicated")


_SERVER = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^\s:\[\]]+):(\d{1,5})(:(ascii|caret|umbrella))?(:(plain|ssl))?$")


def check_mcrouter(config: Any) -> list[str]:
    """Problems that would make mcrouter refuse ``config``, by its documented format
    (github.com/facebook/mcrouter/wiki/Config-Files): ``pools`` maps names to ``servers`` lists
    of ``host:port[:protocol][:security]``, and there is a ``route`` or ``routes``."""
    problems: list[str] = []
    if not isinstance(config, dict):
        return ["$: a config is a JSON object"]
    pools = config.get("pools")
    if not isinstance(pools, dict) or not pools:
        problems.append("pools: must be a non-empty object")
        pools = {}
    for name, pool in pools.items():
        servers = pool.get("servers") if isinstance(pool, dict) else None
        if not isinstance(servers, list) or not servers:
            problems.append(f"pools/{name}/servers: must be a non-empty list")
            continue
        for i, server in enumerate(servers):
            match = _SERVER.match(server) if isinstance(server, str) else None
            if match is None or not 0 < int(match.group(2)) <= 65535:
                problems.append(f"pools/{name}/servers/{i}: {server!r} is not host:port")
    if not isinstance(config.get("route"), str | dict) and not isinstance(config.get("routes"), list):
        problems.append("route: a route (string or object) or routes (list) is required")
    return problems
