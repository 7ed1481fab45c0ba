"""ruff's rule set of pyproject.toml holds for the whole tree (package, tests, bench), and its
formatter has nothing to change: the suite fails on a lint finding, not only a reviewer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ruff(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--cache-dir", str(cache), "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ruff_check_is_clean(tmp_path: Path) -> None:
    run = ruff("check", "--no-fix", cache=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr


def test_ruff_format_has_nothing_to_change(tmp_path: Path) -> None:
    run = ruff("format", "--check", cache=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
