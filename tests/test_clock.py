"""One clock type: the wall clock is read in refreshd/clock.py only and handed to whoever needs
the time as a callable returning an aware datetime; the OpenPGP readers take their time from the
caller, never from a default. (trio.current_time, the loop's monotonic clock for timeouts and
sleeps, is not a time of day and a test replaces it with trio's MockClock.)"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from refreshd.openpgp import intake, keyview, merge, resign

PACKAGE = Path(__file__).parent.parent / "refreshd"
# (module, call) -> why this call may read a clock of its own
ALLOWED = {
    ("refreshd/clock.py", "datetime.now"): "the one system clock (utcnow)",
    ("refreshd/cli.py", "time.time"): "the client's own import-progress line; not the daemon",
    ("refreshd/cli.py", "time.monotonic"): "the client times the import it waits for",
    ("refreshd/door.py", "time.monotonic"): "a rate limit's interval, not a time of day",
    ("refreshd/answers.py", "time.monotonic"): "how long since SQLite was last asked about "
    "other connections' writes, not a time of day (tests pass their own)",
}
CLOCK_CALLS = {
    "datetime.now",
    "datetime.utcnow",
    "datetime.today",
    "date.today",
    "time.time",
    "time.time_ns",
    "time.monotonic",
    "time.gmtime",
    "time.localtime",
}


def dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return None


def clock_reads(source: str) -> list[tuple[int, str]]:
    """Calls of a clock, and a clock function passed along uncalled (e.g. a default)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        name = dotted(node) if isinstance(node, ast.Attribute) else None
        if name in CLOCK_CALLS:
            found.append((node.lineno, name))
    return found


def test_the_search_finds_clock_reads() -> None:
    sample = "import time\nx = time.time()\ndef f(clock=time.time): ...\ny = datetime.now(UTC)\n"
    assert [name for _, name in clock_reads(sample)] == ["time.time", "time.time", "datetime.now"]


def test_no_module_reads_a_clock_but_clock_py_and_the_reasoned_few() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        for line, name in clock_reads(path.read_text(encoding="utf-8")):
            if (rel, name) not in ALLOWED:
                found.append(f"{rel}:{line}: {name}")
    assert not found, "clock read outside refreshd/clock.py:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "fn",
    [
        keyview.view_of,
        keyview.self_signed,
        keyview.read_key,
        keyview.certifiers,
        intake.intake,
        intake.read_cert,
        intake.read_stored,
        merge.merge,
        resign.read_own,
        resign.extend,
    ],
    ids=lambda fn: f"{fn.__module__}.{fn.__name__}",
)
def test_the_openpgp_readers_take_the_time_from_the_caller(fn) -> None:
    now = inspect.signature(inspect.unwrap(fn)).parameters["now"]
    assert now.default is inspect.Parameter.empty
    assert "None" not in str(now.annotation)
