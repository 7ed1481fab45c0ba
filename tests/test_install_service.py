"""`refreshd install-service` (README, "systemd"): the units it writes pass systemd's analyzer
with the sandbox's exposure kept, name a command that exists, and are reloaded and enabled
when a user manager answers; and the README's install runs from a fresh clone with pipx on
the system Python."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_systemd_units import MAX_EXPOSURE, complaints, directives, exposure

ROOT = Path(__file__).resolve().parent.parent
COMMAND = Path(sys.executable).parent / "refreshd"

pytestmark = pytest.mark.skipif(
    not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed"
)


def session(tmp: Path, path: str = os.environ.get("PATH", "/usr/bin:/bin")) -> dict[str, str]:
    """A login session of a fresh user: its own HOME and runtime directory, no bus."""
    home, runtime = tmp / "home", tmp / "run"
    home.mkdir(exist_ok=True)
    runtime.mkdir(mode=0o700, exist_ok=True)
    return {"PATH": path, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime), "LANG": "C.UTF-8"}


def exec_start(unit: Path) -> list[str]:
    return shlex.split(dict(directives(unit)["Service"])["ExecStart"])


def check_units(units: Path, env: dict[str, str]) -> list[str]:
    service, socket_unit = units / "refreshd.service", units / "refreshd.socket"
    argv = exec_start(service)
    assert Path(argv[0]).is_absolute() and os.access(argv[0], os.X_OK), argv
    assert argv[-1] == "run"
    assert complaints(env, service, socket_unit) == []
    assert exposure(env, service) <= MAX_EXPOSURE
    return argv


def test_without_a_user_manager_it_writes_the_units_and_says_so(tmp_path: Path) -> None:
    env = session(tmp_path)
    done = subprocess.run([str(COMMAND), "install-service"], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    units = Path(env["HOME"]) / ".config" / "systemd" / "user"
    argv = check_units(units, env)
    assert argv[:1] == [str(COMMAND)]  # this virtualenv's console script, not ~/.local/bin
    assert "no systemd user manager" in done.stdout
    assert "systemctl --user enable --now refreshd.socket refreshd.service" in done.stdout
    started = subprocess.run([*argv[:-1], "--help"], capture_output=True, text=True, timeout=60)
    assert started.returncode == 0 and "install-service" in started.stdout


def test_with_a_user_manager_it_reloads_and_enables(tmp_path: Path) -> None:
    # systemd's user manager cannot run in this container: a stand-in systemctl records the
    # calls and answers as a running manager does
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "systemctl").chmod(0o755)
    env = session(tmp_path, f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    done = subprocess.run([str(COMMAND), "install-service"], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines() == [
        "--user show-environment",
        "--user daemon-reload",
        "--user enable --now refreshd.socket refreshd.service",
    ]
    assert "ran systemctl --user daemon-reload" in done.stdout
    check_units(tmp_path / "config" / "systemd" / "user", env)


def test_a_path_with_blanks_and_percent_survives_systemd_quoting(tmp_path: Path) -> None:
    from refreshd.install import exec_start as line

    odd = tmp_path / "my 100% venv" / "bin"
    odd.mkdir(parents=True)
    (odd / "refreshd").symlink_to(COMMAND)
    unit = tmp_path / "refreshd.service"
    unit.write_text(f"[Service]\nType=simple\n{line([str(odd / 'refreshd')])}\n")
    env = session(tmp_path)
    assert complaints(env, unit) == []


def readme_install_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## systemd") :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block
    lines = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("journalctl")]


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("pipx") or not shutil.which("git"), reason="needs pipx, git")
def test_the_readme_install_from_a_fresh_clone_with_pipx(tmp_path: Path) -> None:
    lines = readme_install_lines()
    assert lines[0] == "pipx install ." and lines[1] == "refreshd install-service"
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    env = session(tmp_path, f"{tmp_path / 'home' / '.local' / 'bin'}:/usr/bin:/bin")
    env |= {k: v for k, v in os.environ.items() if k.startswith("PIP_")}  # the local index
    for line in lines:
        done = subprocess.run(line, shell=True, cwd=clone, env=env, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
        assert done.returncode == 0, (line, done.stdout, done.stderr)
    units = Path(env["HOME"]) / ".config" / "systemd" / "user"
    argv = check_units(units, env)
    assert argv[0].startswith(str(Path(env["HOME"]) / ".local")), argv  # pipx's own venv
    interpreter = Path(argv[0]).parent / "python"
    assert interpreter.resolve().is_relative_to("/usr"), "pipx used the system Python"
