"""Render a metadata value as text, JSON or YAML, chosen by the request's ``Accept`` header.

The text rules are rancher-metadata's, which shell scripts depend on: a scalar is printed bare
with no newline; a map lists its sorted keys, one per line, ``key/`` when the value is a map or a
list; a list prints ``i=name`` for named items, ``i/`` for other collections, ``i`` otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import yaml

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


@dataclass(frozen=True)
class Format:
    name: str
    content_type: str


TEXT = Format("text", "text/plain")
JSON = Format("json", "application/json")
YAML = Format("yaml", "application/yaml")


def negotiate(accept: str | None) -> Format:
    """Pick the format from ``Accept``: the first listed of JSON or YAML wins, text otherwise."""
    if not accept:
        return TEXT
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media == "application/json":
            return JSON
        if media in YAML_TYPES:
            return YAML
        if media == "text/plain":
            return TEXT
    return TEXT


def _is_collection(value: Any) -> bool:
    return isinstance(value, Mapping) or (isinstance(value, Sequence) and not isinstance(value, str))


def scalar_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value).rstrip("0").rstrip(".") if value != int(value) else str(int(value))
    return str(value)


def text(value: Any) -> str:
    if isinstance(value, Mapping):
        return "".join(f"{quote_plus(str(k))}{'/' if _is_collection(value[k]) else ''}\n" for k in sorted(value))
    if _is_collection(value):
        lines = []
        for i, item in enumerate(value):
            if isinstance(item, Mapping) and (item.get("name") or item.get("uuid")):
                lines.append(f"{i}={item.get('name') or item.get('uuid')}\n")
            elif _is_collection(item):
                lines.append(f"{i}/\n")
            else:
                lines.append(f"{i}\n")
        return "".join(lines)
    return scalar_text(value)


def plain(value: Any) -> Any:
    """Turn read-only mappings into dicts so that json and yaml can dump them."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if _is_collection(value):
        return [plain(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    """Read-only mappings (a client's tree, frozen labels) as dicts, without copying the rest."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot render {type(value).__name__}")


def render(value: Any, fmt: Format) -> str:
    if fmt is JSON:
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    if fmt is YAML:
        return yaml.safe_dump(plain(value), default_flow_style=False, allow_unicode=True, sort_keys=False)
    return text(value)


def comparable(value: Any) -> str:
    """The form a long-poll ``value=`` is compared with: text for scalars, canonical JSON otherwise."""
    if _is_collection(value):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)
    return scalar_text(value)


def with_self(base: str, own: str, fmt: Format) -> str:
    """A whole tree rendered without ``self`` (shared by every client) joined with one client's
    ``{"self": ...}``: the big part is rendered once per version, the small part per client."""
    if fmt is JSON:
        return own if base == "{}" else f"{base[:-1]},{own[1:]}"
    return base + own  # YAML: two block mappings of top-level keys make one


def error_body(code: int, message: str, fmt: Format) -> str:
    if fmt is TEXT:
        return f"{message}\n"
    return render({"code": code, "message": message, "type": "error"}, fmt)
