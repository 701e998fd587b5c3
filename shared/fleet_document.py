"""``GET /metadns/v1/fleet``: the one document the metadata service hands the DNS service.

Both sides use this module, so the contract lives in one place: the path, the shape
(``{"version", "index", "fleet"}``, the fleet in the model's normalised form) and the rule that
service tokens never leave the metadata service this way (a token belongs to its own
containers' ``self`` only, and any client may read this document).

The fleet was validated by the metadata service, so the reader trusts its structure
(``Fleet.from_trusted``) but not its syntax: a document that is not this shape is an error, and
the DNS service keeps what it had.
"""

from __future__ import annotations

import json
from typing import Any

from shared.model import Fleet

FLEET_PATH = "/metadns/v1/fleet"


def encode_fleet_document(fleet: Fleet, version: str, index: int) -> bytes:
    raw = fleet.raw
    public = {**raw, "services": [{**s, "token": ""} for s in raw.get("services", [])]}
    return json.dumps({"version": version, "index": index, "fleet": public}, separators=(",", ":")).encode()


def decode_fleet_document(body: bytes, version: str = "") -> tuple[str, Fleet]:
    """The version and fleet of a document; ``version`` stands in when it names none.
    Raises ValueError when it is not a fleet document."""
    try:
        doc: Any = json.loads(body)
    except ValueError as exc:
        raise ValueError(f"metadata fleet document is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("fleet"), dict):
        raise ValueError("metadata fleet document is not an object with a fleet")
    applied = str(doc.get("version") or version)
    try:
        return applied, Fleet.from_trusted(doc["fleet"], applied)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"metadata fleet document is malformed: {exc!r}") from None
