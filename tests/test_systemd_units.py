"""The systemd units: systemd's own analyzer accepts them, the sandbox is tight, paths agree.

systemd-analyze runs against the real unit files: a private $HOME holds ~/.local/bin/refreshd
(the installed console script) so ExecStart resolves as it would after `pip install --user`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from refreshd import config

UNITS = Path(__file__).resolve().parent.parent / "systemd"
SERVICE, SOCKET = UNITS / "refreshd.service", UNITS / "refreshd.socket"
MAX_EXPOSURE = 2.0

pytestmark = pytest.mark.skipif(
    not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed"
)


def directives(unit: Path) -> dict[str, list[tuple[str, str]]]:
    """Section -> (key, value) pairs in order; systemd allows a key more than once."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
        else:
            key, _, value = line.partition("=")
            sections[current].append((key.strip(), value.strip()))
    return sections


def values(unit: Path, section: str, key: str) -> list[str]:
    return [v for k, v in directives(unit)[section] if k == key]


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """A user session as systemd sees it, with the console script where ExecStart expects it."""
    home, runtime = tmp_path / "home", tmp_path / "run"
    (home / ".local" / "bin").mkdir(parents=True)
    runtime.mkdir(mode=0o700)
    (home / ".local" / "bin" / "refreshd").symlink_to(Path(sys.executable).parent / "refreshd")
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
            "XDG_RUNTIME_DIR": str(runtime)}  # fmt: skip


def analyze(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, env=env, timeout=60
    )
    return done.stdout + done.stderr


def complaints(env: dict[str, str], *units: Path) -> list[str]:
    """What `systemd-analyze verify` says about our units (it exits 0 on ignored settings)."""
    output = analyze(env, "verify", "--user", *map(str, units))
    return [line for line in output.splitlines() if "refreshd" in line]


def exposure(env: dict[str, str], unit: Path) -> float:
    output = analyze(env, "security", "--user", "--offline=yes", str(unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert match, output
    return float(match.group(1))


def test_systemd_accepts_both_units(user_env: dict[str, str]) -> None:
    assert complaints(user_env, SERVICE, SOCKET) == []


def test_the_verify_check_catches_a_broken_unit(user_env: dict[str, str], tmp_path: Path) -> None:
    broken = tmp_path / "refreshd.service"
    text = SERVICE.read_text().replace("ProtectSystem=strict", "ProtectSystem=strickt")
    broken.write_text(text.replace("%h/.local/bin/refreshd", "%h/.local/bin/absent"))
    shutil.copy(SOCKET, tmp_path / "refreshd.socket")
    found = "\n".join(complaints(user_env, broken, tmp_path / "refreshd.socket"))
    assert "strickt" in found
    assert "absent" in found


def test_service_exposure_is_at_most_2(user_env: dict[str, str], tmp_path: Path) -> None:
    assert exposure(user_env, SERVICE) <= MAX_EXPOSURE
    loose = tmp_path / "refreshd.service"
    loose.write_text("[Service]\nType=notify\nExecStart=%h/.local/bin/refreshd run\n")
    assert exposure(user_env, loose) > MAX_EXPOSURE, "the figure must respond to hardening"


def test_service_runs_the_daemon_as_spec_says() -> None:
    service = dict(directives(SERVICE)["Service"])
    assert service["Type"] == "notify"
    assert service["ExecStart"].split() == ["%h/.local/bin/refreshd", "run"]
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2", "a bad config (exit 2) is not retried"
    assert values(SERVICE, "Service", "RestrictAddressFamilies") == ["AF_UNIX AF_INET AF_INET6"]
    assert service["ProtectSystem"] == "strict"
    assert service["UMask"] == "0077"
    assert int(service["LimitNOFILE"]) >= 8192, "room for 1,024 clients and the daemon's own fds"
    assert values(SERVICE, "Install", "Also") == ["refreshd.socket"]


def test_socket_is_private_and_where_the_config_default_points(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    socket_unit = dict(directives(SOCKET)["Socket"])
    assert socket_unit["SocketMode"] == "0600"
    assert socket_unit["DirectoryMode"] == "0700"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    listen = socket_unit["ListenStream"].replace("%t", str(tmp_path))
    assert Path(listen) == config.Config().daemon.socket
    service = dict(directives(SERVICE)["Service"])
    assert Path(listen).parent.name == service["RuntimeDirectory"]
    assert service["RuntimeDirectoryPreserve"] == "yes", "stopping must not delete the socket"


def test_state_directory_is_the_config_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """%S/<StateDirectory> in a user unit is ~/.local/state/<name>: daemon.state_dir."""
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    state = dict(directives(SERVICE)["Service"])["StateDirectory"]
    assert Path("~/.local/state").expanduser() / state == config.Config().daemon.state_dir


MDWE_PROBE = textwrap.dedent(
    """
    import ctypes, mmap, sqlite3, warnings
    warnings.simplefilter("ignore")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        raise SystemExit(77)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        raise SystemExit("writable-executable memory was allowed")
    except PermissionError:
        pass
    import httpx, stem, structlog, trio, pgpy
    from pgpy.constants import EllipticCurveOID, HashAlgorithm, KeyFlags, PubKeyAlgorithm
    import refreshd.audit, refreshd.cli, refreshd.config, refreshd.sdnotify
    key = pgpy.PGPKey.new(PubKeyAlgorithm.EdDSA, EllipticCurveOID.Ed25519)
    uid = pgpy.PGPUID.new("Me", email="me@example.org")
    key.add_uid(uid, usage={KeyFlags.Sign}, hashes=[HashAlgorithm.SHA256])
    assert key.pubkey.verify("x", key.sign("x"))
    sqlite3.connect(":memory:").execute("pragma journal_mode=wal")
    trio.run(trio.sleep, 0)
    print("ok")
    """
)


def test_python_stack_runs_with_memory_deny_write_execute() -> None:
    """The kernel's PR_SET_MDWE enforces what MemoryDenyWriteExecute=yes enforces."""
    assert "MemoryDenyWriteExecute" in dict(directives(SERVICE)["Service"])
    done = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True, timeout=120
    )
    if done.returncode == 77:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr
