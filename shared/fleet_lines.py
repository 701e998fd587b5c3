"""A whole fleet as one JSON document with one object per line.

The fleet document (``GET /metadns/v1/fleet``) and the kept copies' snapshots hold every object
of the fleet. Parsed in one piece, 100,000 containers are half a gigabyte of dicts for a moment,
and the process keeps most of that memory afterwards (freed, but fragmented); made in one piece,
the same on the writer's side. Written with one object per line, the document is still plain
JSON for any reader, and ours reads and writes it an object at a time:

    {"version":"7-ab..","index":7,"fleet":{"environment":{..}
    ,"hosts":[
    {..}
    ,{..}
    ]
    ,"stacks":[
    ...
    ]}}

``read_lines`` returns None for a document not laid out this way (another writer's, an older
one): the caller parses it whole.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from shared import json_codec
from shared.fleet_index import FleetIndex, FleetView
from shared.model import object_raw

KINDS = ("hosts", "stacks", "services", "containers")


RawOf = Callable[[str, Any], Mapping[str, Any]]
"""An object's normalised form, from what ``taken`` holds of it."""


def taken(fleet: FleetView, *, sort: bool = False) -> tuple[Mapping[str, Any], Mapping[str, Iterable[Any]], RawOf]:
    """What ``write_lines`` writes of ``fleet``, taken now: references to an index's records
    (cheap, on the thread that changes it; encoded later, anywhere), or a ``Fleet``'s lists."""
    if isinstance(fleet, FleetIndex):
        return object_raw("environment", fleet.environment), fleet.records(sort=sort), object_raw
    raw = fleet.raw
    return raw.get("environment") or {}, raw, _as_written


def _as_written(_kind: str, raw: Any) -> Mapping[str, Any]:
    return raw  # type: ignore[no-any-return]


def write_lines(
    head: Mapping[str, Any],
    environment: Mapping[str, Any],
    objects: Mapping[str, Iterable[Any]],
    raw_of: RawOf,
) -> bytes:
    """``head``'s fields (non-empty), then ``"fleet"``: the environment and each kind's objects
    (``raw_of(kind, obj)``: an object's normalised form, made one at a time).

    Each object's encoding is copied into one buffer and dropped at once: kept until a final
    join, 100,000 of orjson's results made in a worker thread (where kept copies are written)
    left about 1 GB of the process's memory fragmented (``bench/RESULTS.md``)."""
    dumps = json_codec.dumps
    out = bytearray(dumps(dict(head))[:-1])
    out += b',"fleet":{"environment":'
    out += dumps(environment)
    for kind in KINDS:
        out += b'\n,"' + kind.encode() + b'":['
        separator = b"\n"
        for obj in objects.get(kind, ()):
            out += separator
            out += dumps(raw_of(kind, obj))
            separator = b"\n,"
        out += b"\n]"
    out += b"}}\n"
    return bytes(out)


def read_lines(body: bytes) -> tuple[dict[str, Any], FleetIndex] | None:
    """The head (every field but ``fleet``) and the fleet of a document ``write_lines`` laid
    out, read an object at a time; None when it is not laid out so, or does not read (the
    caller's whole parse then says what is wrong)."""
    try:
        return _read(body)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _read(body: bytes) -> tuple[dict[str, Any], FleetIndex] | None:
    lines = io.BytesIO(body)
    first = lines.readline()
    if not first.startswith(b"{") or b',"fleet":{"environment":' not in first:
        return None
    head = json_codec.loads(first.rstrip(b"\n") + b"}}")
    if not isinstance(head, dict) or not isinstance(head.get("fleet"), dict):
        return None
    index = FleetIndex()
    index.put_trusted("environment", head.pop("fleet").get("environment") or {})
    kind = ""
    ended = False
    for line in lines:
        line = line.rstrip(b"\n")
        if line.startswith(b',"') and line.endswith(b'":[') and not kind:
            kind = line[2:-3].decode()
            if kind not in KINDS:
                return None
        elif kind and line.startswith((b"{", b",{")):
            index.put_trusted(kind, json_codec.loads(line[1:] if line[0] == 44 else line))  # 44: ","
        elif kind and line in (b"]", b"]}}"):
            kind, ended = "", line == b"]}}"
        elif line or not ended:
            return None
    return (head, index) if ended else None
