"""Another local user learns nothing from refreshd's files and cannot answer for its socket:
the daemon's umask and state directory, the socket directory's checks, the CLI's check of who
serves the socket, and human output that a hostile address cannot repaint."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from refreshd.openpgp.packets import armor
from tests.daemon_proc import REFRESHD, Daemon, write_config
from tests.keyfactory import pgpy_key

NOBODY = 65534
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A directory other users may pass through, as a home directory often is."""
    root = Path(tempfile.mkdtemp(prefix="refreshd-priv-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def as_nobody(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    prelude = f"import os, sys\nos.setgid({NOBODY})\nos.setuid({NOBODY})\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def start_with_umask_022() -> None:
    os.umask(0o022)


@needs_root
def test_under_umask_022_no_state_file_is_readable_by_another_user(shared_root):
    state = shared_root / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)  # an existing, too open state_dir
    (state / "notes").write_text("left by an older version")
    os.chmod(state / "notes", 0o644)
    d = Daemon(write_config(shared_root, {}), preexec_fn=start_with_umask_022)
    try:
        for i in range(20):  # enough writes for the WAL and -shm to exist
            d.call(
                "used",
                address=f"contact{i}@example.org",
                fingerprint="A" * 40,
                event="sent-encrypted",
            )
        files = list(state.rglob("*"))
        assert any(p.name.endswith("-wal") for p in files)
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        loose = [str(p) for p in files if p.stat().st_mode & 0o077]
        assert not loose, loose
        # and as the other user sees it: nothing opens
        result = as_nobody(
            """
            opened = []
            for path in sys.argv[1:]:
                try:
                    open(path, "rb").read(1)
                    opened.append(path)
                except OSError:
                    pass
            print(opened)
            """,
            *[str(p) for p in files if p.is_file()],
        )
        assert result.stdout.strip() == "[]", result.stdout + result.stderr
    finally:
        d.stop()


def refused_start(root: Path, socket_path: Path) -> subprocess.CompletedProcess[str]:
    config = write_config(root, {"daemon": {"socket": str(socket_path)}})
    return subprocess.run(
        [*REFRESHD, "--config", str(config), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )


def test_a_symlinked_socket_directory_stops_the_start(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    result = refused_start(tmp_path, tmp_path / "link" / "socket")
    assert result.returncode == 1
    assert str(tmp_path / "link") in result.stderr and "symlink" in result.stderr
    assert not (real / "socket").exists()


def test_a_shared_sticky_directory_is_refused_and_left_as_it_was(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    result = refused_start(tmp_path, shared / "socket")
    assert result.returncode == 1 and str(shared) in result.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777  # never chmod what it did not create


@needs_root
def test_a_socket_directory_of_another_user_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    result = refused_start(tmp_path, theirs / "socket")
    assert result.returncode == 1
    assert str(theirs) in result.stderr and f"uid {NOBODY}" in result.stderr


def test_a_directory_the_daemon_made_is_private_and_reused(tmp_path):
    d = Daemon(write_config(tmp_path, {}))
    d.stop()
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o700
    d = Daemon(write_config(tmp_path, {}))  # its own 0700 directory passes the check
    d.stop()


FAKE_ANSWER = {
    "jsonrpc": "2.0",
    "id": 1,
    "result": {
        "address": "bob@example.org",
        "state": "registered",
        "fingerprint": "E" * 40,
        "validation": "fingerprint",
        "usable": True,
        "encrypt": True,
        "expires": None,
        "revoked": False,
        "source": "user",
        "reason": "Registered.",
    },
}


@needs_root
def test_the_cli_does_not_trust_a_socket_served_by_another_user(shared_root):
    """Another user swapped in their own socket: the CLI must not print their key."""
    spot = shared_root / "run"
    spot.mkdir()
    os.chmod(spot, 0o777)
    path = spot / "socket"
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import os, socket, sys\nos.setgid({NOBODY})\nos.setuid({NOBODY})\n"
            "s = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\nos.chmod(sys.argv[1], 0o777)\n"
            "s.listen(1)\nprint('ready', flush=True)\nc, _ = s.accept()\nc.recv(65536)\n"
            "c.sendall(sys.argv[2].encode() + b'\\n')\nc.close()\n",
            str(path),
            json.dumps(FAKE_ANSWER),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        config = write_config(shared_root, {"daemon": {"socket": str(path)}})
        result = subprocess.run(
            [*REFRESHD, "--config", str(config), "lookup", "bob@example.org"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
    assert result.returncode == 1
    assert "E" * 40 not in result.stdout and "usable" not in result.stdout
    assert f"uid {NOBODY}" in result.stderr and "not trusted" in result.stderr


def test_the_cli_trusts_its_own_daemon(tmp_path):
    d = Daemon(write_config(tmp_path, {}))
    try:
        assert d.cli("status").returncode == 0
    finally:
        d.stop()


def test_terminal_controls_in_an_address_and_a_url_are_shown_escaped(tmp_path):
    sneaky = "eve\b\b\bbob@example.org"
    key = armor(pgpy_key(f"Eve <{sneaky}>", expires=timedelta(days=400)))
    d = Daemon(write_config(tmp_path, {}))
    try:
        got = d.call(
            "observe",
            address=sneaky,
            key=key,
            origin="attachment",
            url="https://example.org/\x1b[2J\u202eevil",
        )
        assert got["fingerprint"]
        for args in (("lookup", "--no-discover", sneaky), ("history", sneaky)):
            out = d.cli(*args)
            shown = out.stdout + out.stderr
            assert "\b" not in shown and "\x1b" not in shown and "\u202e" not in shown, shown
        assert (
            "eve\\x08\\x08\\x08bob@example.org" in d.cli("lookup", "--no-discover", sneaky).stdout
        )
        assert got["fingerprint"] in d.cli("history", sneaky).stdout
        bad = d.cli("lookup", "\u202eevil@example.org\x1b[2J")
        assert "\x1b" not in bad.stderr + bad.stdout and "\u202e" not in bad.stderr + bad.stdout
    finally:
        d.stop()
