"""Domain values are enums, not strings (issue 17): the package never compares a value against
the word of a source, a vouch, an upload mechanism, a decision kind, a lookup state, a use
event, a DKIM verdict, a provider pin's kind, a Tor mode, an own-key component's role or a key's
capability flag outside the module that declares it;
a word is read into its member at the edge (config, store, socket params) and compared there.

Being StrEnums, a member equals its word, so `source == "wkd"` would still work and nothing else
would catch a word creeping back in: this search does, over every package module.
"""

from __future__ import annotations

import ast
from enum import StrEnum
from pathlib import Path

import pytest

from refreshd.config import TorMode
from refreshd.core.levels import Dkim, Vouched, Way
from refreshd.core.ownaudit import Upload
from refreshd.core.ownpolicy import Role
from refreshd.core.providerkeys import PinKind
from refreshd.core.rules import DecisionKind, LookupState, UseEvent
from refreshd.openpgp.keyview import Flag

PACKAGE = Path(__file__).resolve().parent.parent / "refreshd"
# the enums whose words must not be compared against, and the module declaring each
ENUMS: dict[type[StrEnum], str] = {
    Way: "core/levels.py",
    Vouched: "core/levels.py",
    Dkim: "core/levels.py",
    Upload: "core/ownaudit.py",
    PinKind: "core/providerkeys.py",
    DecisionKind: "core/rules.py",
    LookupState: "core/rules.py",
    UseEvent: "core/rules.py",
    TorMode: "config.py",
    Role: "core/ownpolicy.py",
    Flag: "openpgp/keyview.py",
}
# the word -> the modules allowed to spell it (its enums' own modules)
WORDS: dict[str, set[str]] = {}
for enum, home in ENUMS.items():
    for member in enum:
        WORDS.setdefault(member.value, set()).add(home)
# words that are also something else in the same comparisons (the socket's JSON fields read by
# the command-line client are its edge: cli.py reads answers, it decides nothing)
EDGE = {"cli.py"}


def compared_words(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, word) of each domain word a comparison (==, !=, in, not in) is made against."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        for side in [node.left, *node.comparators]:
            elements = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
            for e in elements:
                if isinstance(e, ast.Constant) and isinstance(e.value, str) and e.value in WORDS:
                    found.append((node.lineno, e.value))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).as_posix() not in EDGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_no_comparison_against_a_domain_word(path: Path) -> None:
    name = path.relative_to(PACKAGE).as_posix()
    words = [
        (line, w) for line, w in compared_words(ast.parse(path.read_text())) if name not in WORDS[w]
    ]
    assert words == [], f"{name} compares against domain words (use the enum member): {words}"


def test_the_search_finds_what_it_looks_for() -> None:
    code = """
if source == "wkd": pass
if got.source in ("vks", "hkp"): pass
if "gossip" != found.source: pass
if d.decision not in {"rejected"}: pass
if mode == "fast" or x is Way.WKD: pass
"""
    assert [w for _, w in compared_words(ast.parse(code))] == [
        "wkd",
        "vks",
        "hkp",
        "gossip",
        "rejected",
    ]


def test_the_members_carry_the_specs_words() -> None:
    """The words the config, the socket and the audit log carry (SPEC 3, 4, 7), stated here, not
    taken from the enums."""
    assert {w.value for w in Way} >= {"wkd", "nicknym", "vks", "hkp", "smtp", "gnupg", "user"}
    assert {m.value for m in Way} >= {"autocrypt", "gossip", "openpgp-header", "attachment"}
    assert {s.value for s in LookupState} == {"registered", "pending", "unknown", "conflict"}
    assert {e.value for e in UseEvent} == {"sent-encrypted", "received-signed"}
    assert {m.value for m in TorMode} == {"auto", "system", "launch", "off"}
    assert {d.value for d in Dkim} == {"pass", "fail", "none"}
    assert {u.value for u in Upload} == {"vks", "hkp", "wks", "kpp", "nicknym"}
    assert {f.value for f in Flag} == {"certify", "sign", "encrypt", "auth"}
