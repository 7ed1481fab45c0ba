"""One error tree: every expected failure is a RefreshdError with a reason, told apart by its
class; service.py alone turns them into JSON-RPC codes; no code looks at a message's text."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from refreshd import errors
from refreshd.errors import (
    FetchFailed,
    GpgFailed,
    InvalidRequest,
    KeyRejected,
    MailError,
    OwnKeyError,
    RefreshdError,
    SourceError,
    TorUnavailable,
)
from refreshd.net import feeds as feed_wire
from refreshd.openpgp import resign
from refreshd.rpc import INTERNAL_ERROR, INVALID_PARAMS
from refreshd.service import rpc_error

PACKAGE = Path(__file__).resolve().parent.parent / "refreshd"
MESSAGE_ATTRIBUTES = {"reason", "message", "detail", "args"}


def test_the_tree() -> None:
    for cls in (InvalidRequest, KeyRejected, FetchFailed, SourceError, GpgFailed, OwnKeyError):
        assert issubclass(cls, RefreshdError) and cls.__bases__ == (RefreshdError,)
    assert issubclass(TorUnavailable, FetchFailed) and issubclass(MailError, RefreshdError)
    for cls in (resign.Locked, resign.BadKey, resign.BadMessage):
        assert issubclass(cls, OwnKeyError)
    failed = SourceError("the answer is not JSON")
    assert failed.reason == str(failed) == "the answer is not JSON"
    assert TorUnavailable().reason == "Tor unavailable"  # what the audit lines have always said
    assert issubclass(feed_wire.FeedUnreadable, SourceError)
    assert issubclass(feed_wire.FeedAbsent, feed_wire.FeedUnreadable)


@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (
            InvalidRequest("/x is not a directory"),
            INVALID_PARAMS,
            "Invalid params: /x is not a directory",
        ),
        (
            GpgFailed("Reading /x failed: gpg exited 2"),
            INTERNAL_ERROR,
            "Reading /x failed: gpg exited 2",
        ),
        (resign.Locked("no passphrase"), INTERNAL_ERROR, "no passphrase"),
    ],
)
def test_service_maps_the_tree_to_socket_codes(exc: RefreshdError, code: int, message: str) -> None:
    mapped = rpc_error(exc)
    assert (mapped.code, mapped.message) == (code, message)


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _message_text(node: ast.expr, caught: set[str]) -> bool:
    """An expression that is an error's (or a result's) message: x.reason, exc.args,
    str(exc) for a caught exception."""
    if isinstance(node, ast.Attribute) and node.attr in MESSAGE_ATTRIBUTES:
        return True
    if isinstance(node, ast.Subscript):
        return _message_text(node.value, caught)
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "str"
        and len(node.args) == 1
        and isinstance(node.args[0], ast.Name)
        and node.args[0].id in caught
    )


def control_flow_on_messages(source: str) -> list[int]:
    """Lines that compare (==, !=, in, startswith, endswith, match) a message with something."""
    tree = ast.parse(source)
    caught = {h.name for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler) and h.name}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            textual = any(isinstance(o, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for o in node.ops)
            if textual and any(_message_text(o, caught) for o in operands):
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("startswith", "endswith", "match", "search", "find")
            and (
                _message_text(node.func.value, caught)
                or any(_message_text(a, caught) for a in node.args)
            )
        ):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_search_finds_what_it_looks_for() -> None:
    found = control_flow_on_messages(
        "try:\n    f()\nexcept E as exc:\n    if str(exc) == 'x':\n        pass\n"
        "if got.reason == 'Tor unavailable':\n    pass\n"
        "if exc.reason.startswith('Tor'):\n    pass\n"
        "if 'gone' in failure.message:\n    pass\n"
        "if got.no_tor:\n    pass\n"
    )
    assert found == [4, 6, 8, 10]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_control_flow_on_error_messages(path: Path) -> None:
    assert control_flow_on_messages(path.read_text()) == [], (
        f"{path.name} decides on a message's text; raise and catch a class of refreshd.errors"
    )


def test_errors_module_declares_the_tree() -> None:
    tree = set(errors.__all__)
    assert tree == {
        cls.__name__
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, RefreshdError)
    }
