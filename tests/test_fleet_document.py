"""The /metadns/v1/fleet contract, as both services use it (shared/fleet_document.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.fleet_document import decode_fleet_document, encode_fleet_document
from shared.model import Fleet

DATA = Path(__file__).parent / "data" / "fleet.yaml"


def test_a_document_reads_back_as_the_same_fleet_without_tokens() -> None:
    fleet = Fleet.from_mapping(yaml.safe_load(DATA.read_text()))
    assert any(s.token for s in fleet.services)  # the test fleet has a secret to keep
    body = encode_fleet_document(fleet, "7-abc", 7)
    assert json.loads(body)["index"] == 7
    version, back = decode_fleet_document(body)
    assert version == "7-abc"
    assert sorted((c.uuid, c.primary_ip) for c in back.containers) == sorted(
        (c.uuid, c.primary_ip) for c in fleet.containers
    )
    assert back.digest != fleet.digest  # the tokens are not in it
    assert back.to_mapping()["hosts"] == fleet.to_mapping()["hosts"]
    assert not any(s.token for s in back.services)
    for service in fleet.services:
        if service.token:
            assert service.token.encode() not in body


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"version": "1-a"}', b'{"fleet": []}', b'{"fleet": {"containers": 5}}'],
)
def test_anything_else_is_a_clear_error(body: bytes) -> None:
    with pytest.raises(ValueError, match="metadata fleet document"):
        decode_fleet_document(body, "1-a")


async def test_a_snapshots_document_is_encoded_once_in_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request for a snapshot's document gets the one encoding, made off the event loop
    (at 100,000 containers it takes about a second that every other request waited for)."""
    import asyncio
    import threading

    from metadata_svc.store import Snapshot
    from shared.fleet_document import fleet_document_writer
    from shared.fleet_index import FleetIndex

    encodings: list[int] = []

    def counting(*args: Any) -> Any:
        write = fleet_document_writer(*args)

        def encode() -> bytes:
            encodings.append(threading.get_ident())
            return write()

        return encode

    monkeypatch.setattr("metadata_svc.store.fleet_document_writer", counting)
    fleet = Fleet.from_mapping(yaml.safe_load(DATA.read_text()))
    snapshot = Snapshot(FleetIndex.of(fleet), 7)
    bodies = await asyncio.gather(*(snapshot.fleet_json() for _ in range(5)))
    assert len(set(bodies)) == 1
    assert json.loads(bodies[0])["index"] == 7
    assert len(encodings) == 1
    assert encodings[0] != threading.get_ident()
