"""No function or block of six or more lines exists twice in refreshd/ beyond boilerplate.

How a copy is found (AST-based, names not kept):
- Every module is parsed; a *normalized line* is one simple statement, or the header of a
  compound one (`if …:`, `for …:`, `def …:`, `except …:`), as `ast.unparse` writes it: layout,
  comments, docstrings and imports do not count, and a statement spread over several physical
  lines is one line.
- Names are erased: every identifier, attribute and parameter name reads `_`, annotations are
  dropped; literals stay. So a block copied and renamed is still the same block, while two
  rules that differ in a constant are not.
- A *block* is a run of WINDOW consecutive normalized lines within one scope (a module's or a
  class's own statements, or a function's body, nested blocks included). A block that stands at
  two places that do not overlap is a copy; so is a whole function body of BODY_LINES or more
  lines that stands twice (a function copied whole is never boilerplate).
- Boilerplate, by construction: a block made only of declarations: dataclass fields
  (`name: T` or `name: T = literal`), enum members and constants (`NAME = literal`),
  constructor stores (`self.name = name` or `= literal`), and `pass`. Anything else judged
  boilerplate is named in ALLOWED with the reason.
"""

from __future__ import annotations

import ast
import copy
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "refreshd"
WINDOW = 6
BODY_LINES = 3
# (module, scope) -> why a block there that stands elsewhere too is not one piece of logic
# written twice. Scope: the qualified name of the function or class, or "<module>".
ALLOWED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Line:
    text: str  # normalized, relative depth added by the caller
    depth: int
    lineno: int
    declaration: bool


class _Erase(ast.NodeTransformer):
    """Every identifier becomes `_`, annotations go: what is left is the shape and literals."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        return ast.copy_location(ast.Name("_", node.ctx), node)

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        node.attr = "_"
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg, node.annotation = "_", None
        return node

    def visit_keyword(self, node: ast.keyword) -> ast.AST:
        self.generic_visit(node)
        node.arg = None if node.arg is None else "_"
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        self.generic_visit(node)
        node.name, node.returns = "_", None
        return node

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        self.generic_visit(node)
        node.name, node.returns = "_", None
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        self.generic_visit(node)
        node.name = "_"
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        self.generic_visit(node)
        node.annotation = ast.Name("_", ast.Load())
        return node


def _literal(node: ast.expr | None) -> bool:
    return node is None or isinstance(node, ast.Constant | ast.Name)


def _declaration(stmt: ast.stmt) -> bool:
    """A field, a constant or enum member, a constructor's store of its argument, or pass."""
    if isinstance(stmt, ast.Pass):
        return True
    if isinstance(stmt, ast.AnnAssign):
        return isinstance(stmt.target, ast.Name | ast.Attribute) and _literal(stmt.value)
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target = stmt.targets[0]
        stores = isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
        return (stores or isinstance(target, ast.Name)) and _literal(stmt.value)
    return False


def _docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _head(stmt: ast.AST) -> str:
    return ast.unparse(_Erase().visit(copy.deepcopy(stmt))).splitlines()[0]


def lines(body: list[ast.stmt], depth: int = 0) -> Iterator[Line]:
    """The normalized lines of a body, nested blocks included (see the module's rules)."""
    for stmt in body:
        if _docstring(stmt) or isinstance(stmt, ast.Import | ast.ImportFrom):
            continue
        blocks = [
            getattr(stmt, name)
            for name in ("body", "orelse", "finalbody")
            if isinstance(getattr(stmt, name, None), list)
        ]
        handlers = [*getattr(stmt, "handlers", ()), *getattr(stmt, "cases", ())]
        if not blocks and not handlers:
            text = ast.unparse(_Erase().visit(copy.deepcopy(stmt)))
            yield Line(text, depth, stmt.lineno, _declaration(stmt))
            continue
        yield Line(_head(stmt), depth, stmt.lineno, False)
        for block in blocks[:1]:
            yield from lines(block, depth + 1)
        for handler in handlers:
            yield Line(_head(handler), depth, getattr(handler, "lineno", stmt.lineno), False)
            yield from lines(handler.body, depth + 1)
        for block in blocks[1:]:
            yield from lines(block, depth + 1)


@dataclass(frozen=True)
class Place:
    module: str
    scope: str
    first: int
    last: int

    def overlaps(self, other: Place) -> bool:
        return self.module == other.module and self.first <= other.last and other.first <= self.last

    def __str__(self) -> str:
        return f"{self.module}:{self.first}-{self.last} ({self.scope})"


def scopes(tree: ast.Module) -> Iterator[tuple[str, list[ast.stmt], bool]]:
    """(qualified name, statements, whether it is a function) of the module, every class and
    every function."""
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    yield "<module>", [s for s in tree.body if not isinstance(s, definitions)], False

    def walk(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, list[ast.stmt], bool]]:
        for node in body:
            if isinstance(node, definitions):
                name = f"{prefix}{node.name}"
                if isinstance(node, ast.ClassDef):
                    yield name, [s for s in node.body if not isinstance(s, definitions)], False
                else:
                    yield name, node.body, True
                yield from walk(node.body, f"{name}.")
            else:
                for block in ("body", "orelse", "finalbody"):
                    yield from walk(getattr(node, block, None) or [], prefix)

    yield from walk(tree.body, "")


def copies(sources: dict[str, str]) -> list[tuple[Place, Place]]:
    """Every pair of places where one block (or whole function body) stands twice."""
    blocks: dict[tuple[tuple[int, str], ...], list[Place]] = defaultdict(list)
    bodies: dict[tuple[tuple[int, str], ...], list[Place]] = defaultdict(list)
    for module, source in sorted(sources.items()):
        tree = ast.parse(source)
        for scope, body, is_function in scopes(tree):
            found = list(lines(body))
            whole = len(found) >= BODY_LINES and not all(line.declaration for line in found)
            if is_function and whole:
                key = tuple((line.depth, line.text) for line in found)
                bodies[key].append(Place(module, scope, found[0].lineno, found[-1].lineno))
            for i in range(len(found) - WINDOW + 1):
                run = found[i : i + WINDOW]
                if all(line.declaration for line in run):
                    continue
                key = tuple((line.depth - run[0].depth, line.text) for line in run)
                blocks[key].append(Place(module, scope, run[0].lineno, run[-1].lineno))
    pairs: list[tuple[Place, Place]] = []
    for places in [*blocks.values(), *bodies.values()]:
        unique = sorted(set(places), key=lambda p: (p.module, p.first, p.last))
        for i, a in enumerate(unique):
            for b in unique[i + 1 :]:
                if not a.overlaps(b) and (a, b) not in pairs:
                    pairs.append((a, b))
    return pairs


def _allowed(place: Place) -> bool:
    return (place.module, place.scope) in ALLOWED


def test_no_block_of_six_lines_and_no_function_stands_twice_in_the_package() -> None:
    sources = {
        path.relative_to(PACKAGE.parent).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    found = [f"{a}  ~  {b}" for a, b in copies(sources) if not (_allowed(a) and _allowed(b))]
    assert not found, "written twice (merge them, or allow with a reason):\n" + "\n".join(found)


def test_every_allowance_still_names_a_scope_that_exists() -> None:
    for module, scope in ALLOWED:
        tree = ast.parse((PACKAGE.parent / module).read_text(encoding="utf-8"))
        assert scope in {name for name, _, _ in scopes(tree)}, (module, scope)


COPIED = """
def first(items, limit):
    total = 0
    for item in items:
        if item.size > limit:
            continue
        total += item.size
    total -= 1
    return total * 2


def second(entries, bound):
    acc = 0
    for entry in entries:
        if entry.size > bound:
            continue
        acc += entry.size
    acc -= 1
    return acc * 2
"""


def test_a_renamed_copy_is_found_and_a_changed_constant_is_not() -> None:
    pairs = copies({"m.py": COPIED})
    assert {(a.scope, b.scope) for a, b in pairs} == {("first", "second")}
    changed = COPIED.replace("return acc * 2", "return acc * 3")
    # the six-line block before the return still stands twice; the whole bodies differ now
    assert {(a.first, b.first) for a, b in copies({"m.py": changed})} == {(3, 13)}
    assert copies({"m.py": COPIED.replace("> bound", ">= bound")}) == []


def test_declarations_alone_are_boilerplate() -> None:
    fields = "\n".join(f"    f{i}: int = {i}" for i in range(8))
    stores = "\n".join(f"        self.a{i} = a{i}" for i in range(8))
    source = (
        f"class A:\n{fields}\n\nclass B:\n{fields}\n\n"
        f"class C:\n    def __init__(self):\n{stores}\n\n"
        f"class D:\n    def __init__(self):\n{stores}\n"
    )
    assert copies({"m.py": source}) == []
