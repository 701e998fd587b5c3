"""A whole fleet with one object per line: plain JSON for any reader, read an object at a time
by ours, and anything else left to a whole parse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from shared.fleet_index import FleetIndex
from shared.fleet_lines import read_lines, write_lines
from shared.model import Fleet, object_raw

DATA = Path(__file__).parent / "data" / "fleet.yaml"


def index() -> FleetIndex:
    return FleetIndex.of(Fleet.from_mapping(yaml.safe_load(DATA.read_text())))


def written(fleet: FleetIndex) -> bytes:
    return write_lines(
        {"index": 3, "digest": fleet.digest},
        object_raw("environment", fleet.environment),
        fleet.records(sort=True),
        object_raw,
    )


def test_the_layout_is_plain_json_and_reads_back_object_by_object() -> None:
    fleet = index()
    body = written(fleet)
    whole = json.loads(body)  # any JSON reader takes it whole
    assert whole["index"] == 3
    assert whole["fleet"] == json.loads(json.dumps(fleet.raw_lists()))
    assert body.count(b"\n") == sum(len(v) for v in fleet.records().values()) + 2 * 4 + 1
    read = read_lines(body)
    assert read is not None
    head, back = read
    assert head == {"index": 3, "digest": fleet.digest}
    assert back.digest == fleet.digest
    assert back.raw_lists() == fleet.raw_lists()


def test_an_empty_fleet_reads_back() -> None:
    empty = FleetIndex()
    read = read_lines(written(empty))
    assert read is not None
    assert read[1].digest == empty.digest
    assert len(read[1].containers) == 0


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        json.dumps({"index": 3, "fleet": {"environment": {}, "containers": []}}).encode(),  # spaced
        json.dumps({"index": 3, "fleet": {"environment": {}, "hosts": []}}, separators=(",", ":")).encode(),
    ],
)
def test_another_layout_is_left_to_a_whole_parse(body: bytes) -> None:
    assert read_lines(body) is None


def test_a_document_cut_short_or_with_a_line_out_of_place_is_not_taken() -> None:
    body = written(index())
    lines = body.split(b"\n")
    assert read_lines(b"\n".join(lines[:-3])) is None  # cut before its end
    assert read_lines(b"\n".join([*lines[:3], b'{"oops"', *lines[3:]])) is None
    assert read_lines(b"\n".join([lines[0], b',"volumes":[', b"]}}", b""])) is None
