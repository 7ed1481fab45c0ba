"""A daemon without an own key or mail to decrypt does not carry pgpy (several MB of its idle
memory: bench case 5), and what only runs after READY is not imported before it (bench case
6: start to socket-ready)."""

from __future__ import annotations

import subprocess
import sys


def test_the_daemon_modules_load_without_pgpy() -> None:
    code = (
        "import sys, refreshd.daemon, refreshd.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pgpy'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_the_periodic_jobs_scheduler_is_imported_after_ready() -> None:
    code = (
        "import sys, refreshd.daemon, refreshd.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'apscheduler'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
