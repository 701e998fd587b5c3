"""ARCHITECTURE.md names real things: every module path it mentions exists, every name it puts in
backticks as ``Class.attribute`` is defined in that class (a method, a property, a class-level
or ``self.`` attribute, or a slot), not merely somewhere in the sources."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "ARCHITECTURE.md").read_text()
PACKAGES = ("shared", "metadata_svc", "dns_svc")


def test_every_path_it_names_exists() -> None:
    paths = set(
        re.findall(r"`((?:shared|metadata_svc|dns_svc|consumers|tests|deploy|bench|examples)/[\w/.<>-]*)`", TEXT)
    )
    assert len(paths) > 15
    for path in paths:
        if "<" in path:  # a pattern such as steps/<name>/
            continue
        assert (ROOT / path).exists(), path


def members(cls: ast.ClassDef) -> set[str]:
    """What a class defines: methods, class-level names, ``__slots__`` and ``self.x`` assignments."""
    found: set[str] = set()
    for node in cls.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found.add(node.target.id)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found.add(target.id)
                    if target.id == "__slots__" and isinstance(node.value, ast.Tuple | ast.List):
                        found.update(str(e.value) for e in node.value.elts if isinstance(e, ast.Constant))
    for inner in ast.walk(cls):
        targets: list[ast.expr] = []
        if isinstance(inner, ast.Assign):
            targets = list(inner.targets)
        elif isinstance(inner, ast.AnnAssign | ast.AugAssign):
            targets = [inner.target]
        for target in targets:
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                found.add(target.attr)
    return found


def classes() -> dict[str, list[set[str]]]:
    """Every class of the packages by name (a name may be used by more than one module)."""
    found: dict[str, list[set[str]]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    found.setdefault(node.name, []).append(members(node))
    return found


def test_every_class_and_method_it_names_is_defined_in_that_class() -> None:
    names = {(c, a) for c, a in re.findall(r"`([A-Z]\w+)\.(\w+)`", TEXT) if a not in ("md", "py", "yaml", "json")}
    assert len(names) > 10
    defined = classes()
    for cls, attr in sorted(names):
        assert cls in defined, cls
        assert any(attr in found for found in defined[cls]), f"{cls}.{attr} is not defined in class {cls}"


def test_members_are_read_from_the_class_itself() -> None:
    """The check above fails for a name defined in another class (what the old regex let pass)."""
    tree = ast.parse("class A:\n    def one(self): self.two = 1\nclass B:\n    def three(self): ...\n")
    a, b = (node for node in tree.body if isinstance(node, ast.ClassDef))
    assert members(a) == {"one", "two"}
    assert "one" not in members(b)
