"""The /metadns/v1/fleet contract, as both services use it (shared/fleet_document.py)."""

from __future__ import annotations

import json
from pathlib import Path

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
