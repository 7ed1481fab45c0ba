"""`refreshd install-service`: the systemd user units, pointing at the command that runs this.

Rules:
- The units are the ones shipped in the package (refreshd/units/, the repository's systemd/);
  only `ExecStart` changes: the real path of the installed console script beside the running
  interpreter (a pipx or any other virtualenv), else this interpreter with `-m refreshd`, so
  no unit names `%h/.local/bin` for a command that is not there.
- They go to `$XDG_CONFIG_HOME/systemd/user` (or `--dir`, then nothing is enabled: systemd
  does not read that directory); existing files are replaced.
- With a user manager reachable (`systemctl --user show-environment` succeeds), it runs
  `daemon-reload` and `enable --now refreshd.socket refreshd.service`; without one it says
  so and prints those commands. Every step it took is printed, one line each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["install"]

UNITS = ("refreshd.service", "refreshd.socket")
SHIPPED_EXEC_START = "ExecStart=%h/.local/bin/refreshd run"
SYSTEMCTL_TIMEOUT = 60


def command_path(executable: str = sys.executable) -> list[str]:
    """argv for the installed command: the console script beside the interpreter, if any."""
    script = Path(executable).parent / "refreshd"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script.absolute())]
    return [str(Path(executable).absolute()), "-m", "refreshd"]


def exec_start(argv: list[str]) -> str:
    """An ExecStart= line for argv: `%` doubled, words with blanks or quotes quoted."""

    def word(w: str) -> str:
        w = w.replace("%", "%%")
        if any(c in w for c in " \t\"'\\"):
            return '"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return w

    return "ExecStart=" + " ".join(word(w) for w in [*argv, "run"])


def render(name: str, argv: list[str]) -> str:
    text = resources.files("refreshd").joinpath("units", name).read_text()
    if name == "refreshd.service":
        assert SHIPPED_EXEC_START in text, "the shipped unit's ExecStart line moved"
        text = text.replace(SHIPPED_EXEC_START, exec_start(argv))
    return text


def user_unit_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


@dataclass(frozen=True)
class Step:
    argv: tuple[str, ...]
    ok: bool
    output: str


def systemctl(*args: str) -> Step:
    argv = ("systemctl", "--user", *args)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Step(argv, False, str(exc))
    return Step(argv, done.returncode == 0, (done.stdout + done.stderr).strip())


def install(directory: Path | None, *, enable: bool, say=print) -> bool:
    """Write the units, then reload and enable them when a user manager is there."""
    target = directory or user_unit_dir()
    target.mkdir(parents=True, exist_ok=True)
    argv = command_path()
    for name in UNITS:
        (target / name).write_text(render(name, argv))
        say(f"wrote {target / name}")
    say(f"ExecStart runs {' '.join(argv)} run")
    later = ["systemctl --user daemon-reload",
             "systemctl --user enable --now refreshd.socket refreshd.service"]  # fmt: skip
    if not enable or directory is not None:
        say("not enabled (--no-enable or --dir); to start it: " + " && ".join(later))
        return True
    if not systemctl("show-environment").ok:
        say(
            "no systemd user manager is running here; once you are logged in: " + " && ".join(later)
        )
        return True
    for step in (systemctl("daemon-reload"),
                 systemctl("enable", "--now", "refreshd.socket", "refreshd.service")):  # fmt: skip
        say(("ran " if step.ok else "failed: ") + " ".join(step.argv)
            + (f"\n  {step.output}" if step.output and not step.ok else ""))  # fmt: skip
        if not step.ok:
            return False
    return True
