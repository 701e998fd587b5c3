"""``GET /metadns/v1/fleet``: the one document the metadata service hands the DNS service.

Both sides use this module, so the contract lives in one place: the path, the shape
(``{"version", "index", "fleet"}``, the fleet in the model's normalised form) and the rule that
service tokens never leave the metadata service this way (a token belongs to its own
containers' ``self`` only, and any client may read this document).

The fleet was validated by the metadata service, so the reader trusts its structure
(``FleetIndex.of_document``, the trusted constructors) but not its syntax: a document that is
not this shape is an error, and the DNS service keeps what it had.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from shared import json_codec
from shared.fleet_changes import KINDS, ObjectChange, identity
from shared.fleet_index import FleetIndex, FleetView
from shared.fleet_lines import read_lines, taken, write_lines
from shared.model import (
    TRUSTED,
    Environment,
    object_raw,
    trusted_environment,
)

FLEET_PATH = "/metadns/v1/fleet"


def encode_fleet_document(fleet: FleetView, version: str, index: int) -> bytes:
    """The document, one object per line (``shared.fleet_lines``), tokens blanked."""
    return fleet_document_writer(fleet, version, index)()


def fleet_document_writer(fleet: FleetView, version: str, index: int) -> Callable[[], bytes]:
    """``encode_fleet_document`` in two steps: what is written is taken now (references to the
    records, cheap, on the thread that changes an index), the encoding (about a second at
    100,000 containers) when the result is called, in a worker thread if need be."""
    head = {"version": version, "index": index}
    environment, objects, raw_of = taken(fleet, sort=True)

    def public(kind: str, obj: Any) -> Mapping[str, Any]:
        raw = raw_of(kind, obj)
        return {**raw, "token": ""} if kind == "services" else raw

    return lambda: write_lines(head, environment, objects, public)


def decode_fleet_document(body: bytes, version: str = "") -> tuple[str, FleetIndex]:
    """The version and fleet of a document, as the index the reader keeps up to date with the
    deltas after it; ``version`` stands in when it names none. Raises ValueError when it is not
    a fleet document."""
    try:
        lines = read_lines(body)
        if lines is not None:
            return str(lines[0].get("version") or version), lines[1]
        doc: Any = json_codec.loads(body)  # not laid out by line: another writer's
    except ValueError as exc:
        raise ValueError(f"metadata fleet document is not JSON: {exc}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"metadata fleet document is malformed: {exc!r}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("fleet"), dict):
        raise ValueError("metadata fleet document is not an object with a fleet")
    applied = str(doc.get("version") or version)
    try:
        return applied, FleetIndex.of_document(doc["fleet"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"metadata fleet document is malformed: {exc!r}") from None


def encode_fleet_delta(
    version: str, index: int, since: str, changes: list[ObjectChange], *, public: bool = True, applied: str = ""
) -> bytes:
    """``?since=V``: what changed between version ``since`` and ``version``, each object once in
    its final state: ``put`` (kind -> normalised objects, tokens blanked) and ``deleted``
    (kind -> identities, ``shared.fleet_changes``), plus the ``environment`` when it changed.
    ``applied``: for a kept copy's line, the version of the source it was applied at."""
    put: dict[str, list[dict[str, Any]]] = {}
    deleted: dict[str, list[str]] = {}
    doc: dict[str, Any] = {"version": version, "index": index, "since": since, "put": put, "deleted": deleted}
    if applied:
        doc["applied"] = applied
    for change in changes:
        new = change.new
        if isinstance(new, Environment):
            doc["environment"] = {"name": new.name, "uuid": new.uuid}
        elif new is None:
            deleted.setdefault(change.kind, []).append(change.ident)
        else:
            raw = object_raw(change.kind, new)
            if public and change.kind == "services":
                raw["token"] = ""
            put.setdefault(change.kind, []).append(raw)
    return json_codec.dumps(doc)


def decode_fleet_delta(body: bytes, fleet: FleetView) -> tuple[str, list[ObjectChange]]:
    """The version and the ``ObjectChange``s of a delta document, against ``fleet`` (what the
    reader serves now: the objects before). Raises ValueError when it is not a delta."""
    try:
        doc: Any = json_codec.loads(body)
    except ValueError as exc:
        raise ValueError(f"metadata fleet delta is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("put"), dict) or not isinstance(doc.get("deleted"), dict):
        raise ValueError("metadata fleet delta is not an object with put and deleted")
    changes: list[ObjectChange] = []
    try:
        if isinstance(doc.get("environment"), dict):
            changes.append(ObjectChange("environment", "", fleet.environment, trusted_environment(doc["environment"])))
        for kind in KINDS[1:]:
            for raw in doc["put"].get(kind, ()):
                new = TRUSTED[kind](raw)
                ident = identity(kind, new)
                changes.append(ObjectChange(kind, ident, _current(fleet, kind, ident), new))
            for ident in doc["deleted"].get(kind, ()):
                changes.append(ObjectChange(kind, str(ident), _current(fleet, kind, str(ident)), None))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"metadata fleet delta is malformed: {exc!r}") from None
    return str(doc.get("version") or ""), [c for c in changes if c.old != c.new]


def _current(fleet: FleetView, kind: str, ident: str) -> Any:
    if kind == "hosts":
        return fleet.host(ident)
    if kind == "stacks":
        return fleet.stack(ident)
    if kind == "services":
        stack, _, name = ident.partition("/")
        return fleet.service(stack, name)
    return fleet.container(ident)
