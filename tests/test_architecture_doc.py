"""docs/architecture.md names real code: every `file:function` it cites exists there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
CITED = re.compile(r"`(refreshd/[\w/]+\.py):([\w.]+)`")


def defined(path: Path, qualname: str) -> bool:
    """Whether the module at `path` defines `qualname` (a function, class, method or name)."""
    scope: list[ast.stmt] = ast.parse(path.read_text()).body
    for part in qualname.split("."):
        found = None
        for node in scope:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if node.name == part:
                    found = node
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == part for t in targets):
                    found = node
        if found is None:
            return False
        scope = found.body if isinstance(found, ast.ClassDef) else []
    return True


CITATIONS = sorted(set(CITED.findall(DOC.read_text())))


def test_the_map_cites_code() -> None:
    assert len(CITATIONS) >= 30  # both journeys, module by module


@pytest.mark.parametrize(("file", "qualname"), CITATIONS, ids=[f"{f}:{q}" for f, q in CITATIONS])
def test_every_cited_function_exists(file: str, qualname: str) -> None:
    path = ROOT / file
    assert path.is_file(), f"{file} does not exist"
    assert defined(path, qualname), f"{file} defines no {qualname}"


def test_the_map_is_one_page() -> None:
    assert len(DOC.read_text().splitlines()) <= 90
