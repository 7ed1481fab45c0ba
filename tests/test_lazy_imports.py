"""A daemon without an own key or mail to decrypt does not carry pgpy (several MB of its idle
memory: bench case 5), and what only runs after READY is not imported before it (bench case
6: start to socket-ready)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# the package and why it waits: pgpy only for an own key or a mail to decrypt, apscheduler
# (the periodic jobs) only once the daemon is READY
DEFERRED = ("pgpy", "apscheduler")


@pytest.mark.parametrize("package", DEFERRED)
def test_the_daemon_and_cli_load_without(package: str) -> None:
    code = (
        "import sys, refreshd.daemon, refreshd.cli; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] == {package!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
