"""The installed `refreshd` console script, run as a separate process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REFRESHD = Path(sys.executable).parent / "refreshd"


def refreshd(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REFRESHD), *argv], capture_output=True, text=True, timeout=60, env=env
    )


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("[network]\nbogus = 1\n", "network.bogus"),
        ("[daemon]\nstate_dir = 5\n", "daemon.state_dir"),
        ('[tor]\nmode = "off"\n', "tor.mode"),
        ("[gossip]\n", "[gossip]"),
        ("not toml at all = = =\n", "not valid TOML"),
    ],
)
def test_run_with_a_bad_config_exits_2_naming_the_key(tmp_path: Path, body: str, key: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(body)
    done = refreshd("run", "--config", str(config))
    assert done.returncode == 2
    assert key in done.stderr
    assert done.stdout == ""


def test_bad_config_stops_run_before_the_daemon_is_loaded(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[refresh]\nminimum_lapse = "-5m"\n')
    probe = (
        "import sys; from refreshd import cli;"
        f"code = cli.main(['run', '--config', {str(config)!r}]);"
        "print(code, 'refreshd.daemon' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout == "2 False\n"
    assert "refresh.minimum_lapse" in done.stderr


def test_stopped_daemon_exit_3_and_hint(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[daemon]\nsocket = "{tmp_path}/run/socket"\n')
    done = refreshd("lookup", "bob@example.org", "--config", str(config))
    assert done.returncode == 3
    assert done.stderr.strip() == (
        "refreshd is not running; start it with `systemctl --user start refreshd` or `refreshd run`"
    )


def test_config_found_through_the_environment(tmp_path: Path) -> None:
    """$REFRESHD_CONFIG is honoured by the installed command, not only by the library."""
    config = tmp_path / "config.toml"
    config.write_text('[own]\nupload = ["carrier-pigeon"]\n')
    done = refreshd("status", env={"PATH": "/usr/bin:/bin", "REFRESHD_CONFIG": str(config)})
    assert done.returncode == 2
    assert "own.upload" in done.stderr


def test_usage_error_exits_2() -> None:
    done = refreshd("lookup")
    assert done.returncode == 2
    assert "usage: refreshd lookup" in done.stderr
