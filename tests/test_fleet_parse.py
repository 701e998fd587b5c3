"""The fleet file's parse: the fast construction of plain documents gives exactly what PyYAML's
safe constructor gives, and leaves everything else (anchors, merge keys, other tags, keys that
cannot be keys) to it, errors included; the collector pause always ends where it began."""

from __future__ import annotations

import gc
import threading

import pytest
import yaml

from metadata_svc.sources.file import _construct, _Loader, parse_fleet_text
from shared.collector import collector_paused
from shared.model import FleetError

DOCUMENTS = [
    "containers: []\n",
    "a: 1\nb: [1, 2.5, .inf, .nan, true, no, ~, '', 0x1f, 0o17, 1_000, '007', 1e3]\nc: {d: {e: [f]}}\n",
    "t: 2001-12-14\nu: 2001-12-14t21:59:43.10-05:00\n",  # timestamps: PyYAML's
    "x: &a {p: 1}\ny: *a\n",  # an alias: one shared object, as PyYAML makes it
    "base: &b {k: 1}\nd:\n  <<: *b\n  j: 2\n",  # a merge key
    "s: !!set {a, b}\nk: !!binary aGVsbG8=\no: !!omap [{a: 1}]\n",
    "'1': x\n1: y\n1.0: z\nnull: q\ntrue: r\n",
    "a: 1\na: 2\n",  # a repeated key: the last wins, as PyYAML has it
    "e:\n",
    "- 1\n- [2, {3: 4}]\n",
    "n: !!str 12\nm: !!int '12'\n",
]


def _reference(text: str) -> object:
    loader = _Loader(text)
    try:
        return loader.construct_document(loader.get_single_node())
    finally:
        loader.dispose()


def _fast(text: str) -> object:
    loader = _Loader(text)
    try:
        return _construct(loader, loader.get_single_node())
    finally:
        loader.dispose()


@pytest.mark.parametrize("text", DOCUMENTS)
def test_fast_construction_is_pyyamls(text: str) -> None:
    reference, fast = _reference(text), _fast(text)
    assert repr(fast) == repr(reference)
    if isinstance(reference, dict) and "y" in reference and isinstance(reference["y"], dict):
        assert fast["x"] is fast["y"]  # type: ignore[index]


@pytest.mark.parametrize("text", ["? [1, 2]\n: v\n", "n: " + "[" * 2000 + "]" * 2000 + "\n", "a: !!int x\n"])
def test_documents_pyyaml_refuses_are_refused_alike(text: str) -> None:
    with pytest.raises((yaml.YAMLError, ValueError)) as reference:
        _reference(text)
    with pytest.raises((yaml.YAMLError, ValueError)) as fast:
        _fast(text)
    assert type(fast.value) is type(reference.value)
    assert str(fast.value) == str(reference.value)


def test_an_aliased_container_is_the_duplicate_it_was() -> None:
    with pytest.raises(FleetError, match=r"containers\[1\] name=a \(line 2\): duplicate container uuid"):
        parse_fleet_text("containers:\n- &c {name: a, primary_ip: 10.0.0.1}\n- *c\n", "f.yaml")


def test_collector_pause_ends_as_it_began() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # it was off: it stays off
    finally:
        gc.enable()


def test_collector_pause_across_threads() -> None:
    started, release = threading.Barrier(2), threading.Event()

    def hold() -> None:
        with collector_paused():
            started.wait()
            release.wait(5)

    other = threading.Thread(target=hold)
    other.start()
    started.wait()
    with collector_paused():
        pass
    assert not gc.isenabled()  # the other thread's pause still holds
    release.set()
    other.join(5)
    assert gc.isenabled()


def test_yaml_module_is_unchanged() -> None:
    """The fast path is ours: PyYAML's own loaders are left as they are."""
    assert yaml.safe_load("x: &a [1]\ny: *a\n") == {"x": [1], "y": [1]}
