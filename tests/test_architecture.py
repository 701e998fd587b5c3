"""ARCHITECTURE.md names real things: every module path it mentions exists, every name it puts in
backticks as ``Module.attribute`` or a function of ours is defined where it says."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "ARCHITECTURE.md").read_text()


def test_every_path_it_names_exists() -> None:
    paths = set(
        re.findall(r"`((?:shared|metadata_svc|dns_svc|consumers|tests|deploy|bench|examples)/[\w/.<>-]*)`", TEXT)
    )
    assert len(paths) > 15
    for path in paths:
        if "<" in path:  # a pattern such as steps/<name>/
            continue
        assert (ROOT / path).exists(), path


def test_every_class_and_method_it_names_is_defined() -> None:
    names = {(c, a) for c, a in re.findall(r"`([A-Z]\w+)\.(\w+)`", TEXT) if a not in ("md", "py", "yaml", "json")}
    assert len(names) > 10
    sources = "\n".join(p.read_text() for d in ("shared", "metadata_svc", "dns_svc") for p in (ROOT / d).rglob("*.py"))
    for cls, attr in names:
        assert re.search(rf"^class {cls}\b", sources, re.M), cls
        assert re.search(rf"def {attr}\b|^\s+{attr}\s*[:=]", sources, re.M), f"{cls}.{attr}"
