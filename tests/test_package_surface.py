"""The package's public surface: every module says what it offers (`__all__`), and what it
offers is used by the package itself (or by the benchmark), not only by tests. A function only
tests call is dead code that looks alive; this is where it shows.

Uses are found by reading the modules (ast): `from refreshd.m import name`, and `alias.name`
where the alias is bound to a package module by `import` or `from refreshd.pkg import m`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "refreshd"
# Called from outside the package: the console script (pyproject.toml) runs cli.main.
ENTRY_POINTS = {("refreshd.cli", "main")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@dataclass
class Module:
    name: str
    tree: ast.Module
    defined: dict[str, int] = field(default_factory=dict)  # public top-level name -> line
    declared: list[str] | None = None  # __all__
    used_here: set[str] = field(default_factory=set)  # names loaded anywhere in the module


def read(path: Path) -> Module:
    tree = ast.parse(path.read_text(), str(path))
    mod = Module(module_name(path), tree)
    for node in tree.body:
        targets: list[str] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            targets = [node.name]
        elif isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            for t in node.targets:
                if isinstance(t, ast.Tuple):
                    targets += [e.id for e in t.elts if isinstance(e, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        for name in targets:
            if name == "__all__":
                assert isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None
                mod.declared = list(ast.literal_eval(node.value))
            elif not name.startswith("_"):
                mod.defined[name] = node.lineno
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            mod.used_here.add(node.id)
        elif isinstance(node, ast.Attribute):
            mod.used_here.add(node.attr)
    return mod


def modules() -> dict[str, Module]:
    return {m.name: m for m in map(read, sorted(PACKAGE.rglob("*.py")))}


def uses_elsewhere(mods: dict[str, Module]) -> set[tuple[str, str]]:
    """(module, name) pairs that some other module of the package uses."""
    used: set[tuple[str, str]] = set()
    for mod in mods.values():
        aliases: dict[str, str] = {}  # local name -> package module it stands for
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods:
                        aliases[a.asname or a.name] = a.name
            elif isinstance(node, ast.ImportFrom) and node.module in mods:
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    if sub in mods:
                        aliases[a.asname or a.name] = sub
                    elif node.module != mod.name:
                        used.add((node.module, a.name))
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Attribute):
                target = _dotted(node.value)
                if target in aliases and aliases[target] != mod.name:
                    used.add((aliases[target], node.attr))
    return used


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


# Being wired by the mail-channel work (its functions have no caller in the package yet).
PENDING: set[str] = set()
ALL_MODULES = modules()
# The benchmark measures the package from outside, as a user would: its uses count too.
BENCH_MODULES = {m.name: m for m in map(read, sorted((PACKAGE.parent / "bench").glob("*.py")))}
USED = uses_elsewhere(ALL_MODULES | BENCH_MODULES) | ENTRY_POINTS
MODULES = {n: mod for n, mod in ALL_MODULES.items() if mod.tree.body and n not in PENDING}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_declares_its_public_names(name: str) -> None:
    mod = MODULES[name]
    offered = sorted(n for n in mod.defined if (name, n) in USED)
    assert mod.declared is not None, f"{name} has no __all__ (its other modules use {offered})"
    assert len(mod.declared) == len(set(mod.declared)), f"{name}.__all__ names one twice"
    missing = [n for n in mod.declared if n not in mod.defined]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_public_names_are_used_by_the_package_not_only_by_tests(name: str) -> None:
    mod = MODULES[name]
    declared = set(mod.declared or ())
    offered_unused = sorted(n for n in declared if (name, n) not in USED)
    assert not offered_unused, (
        f"{name}.__all__ offers what no other module uses (only tests?): {offered_unused}"
    )
    used_but_undeclared = sorted(n for n in mod.defined if (name, n) in USED and n not in declared)
    assert not used_but_undeclared, (
        f"{name}: used elsewhere but not in __all__: {used_but_undeclared}"
    )
    dead = sorted(n for n in mod.defined if n not in declared and n not in mod.used_here)
    assert not dead, f"{name}: public but used by nothing in the package: {dead}"
