"""sd_notify and socket activation against real sockets and real inherited fds."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from refreshd import sdnotify


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_notify_sends_one_datagram_to_a_path_socket(short_dir: Path) -> None:
    path = str(short_dir / "notify")
    with _receiver(path) as rx:
        sent = sdnotify.notify("READY=1", "STATUS=serving 3 keys", environ={"NOTIFY_SOCKET": path})
        assert sent is True
        assert rx.recv(4096) == b"READY=1\nSTATUS=serving 3 keys"


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"refreshd-test-{os.getpid()}-{time.monotonic_ns()}"
    with _receiver("\0" + name) as rx:
        assert sdnotify.notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert rx.recv(4096) == b"STOPPING=1"


def test_notify_is_a_no_op_outside_systemd() -> None:
    assert sdnotify.notify("READY=1", environ={}) is False
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False


def test_notify_to_a_missing_socket_reports_failure_without_raising(short_dir: Path) -> None:
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": str(short_dir / "absent")}) is False


def test_listen_fds_ignores_variables_meant_for_another_process() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}
    assert sdnotify.listen_fds(environ=env) == []
    assert env == {}, "the variables are consumed so children never see them"


@pytest.mark.parametrize(
    "env",
    [{}, {"LISTEN_PID": "abc", "LISTEN_FDS": "1"}, {"LISTEN_PID": "", "LISTEN_FDS": ""}],
)
def test_listen_fds_without_valid_variables_is_empty(env: dict[str, str]) -> None:
    assert sdnotify.listen_fds(environ=dict(env)) == []


# The child mimics systemd: the inherited fd is moved to 3, LISTEN_* name this process.
CHILD = textwrap.dedent(
    """
    import os, sys
    from refreshd import sdnotify
    os.dup2(int(sys.argv[1]), 3)
    os.close(int(sys.argv[1]))
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES=sys.argv[2])
    socks = sdnotify.listen_fds(sys.argv[3] or None)
    leftover = [k for k in os.environ if k.startswith("LISTEN_")]
    if not socks:
        print("none", leftover, os.get_inheritable(3), flush=True)
        sys.exit(0)
    conn, _ = socks[0].accept()
    conn.sendall(f"{socks[0].fileno()} {socks[0].type.name} {leftover}".encode())
    conn.close()
    """
)


def _spawn(listener: socket.socket, fdname: str, wanted: str) -> subprocess.Popen[str]:
    fd = listener.fileno()
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(fd), fdname, wanted],
        pass_fds=(fd,),
        stdout=subprocess.PIPE,
        text=True,
    )


def test_listen_fds_adopts_an_inherited_listening_socket(short_dir: Path) -> None:
    path = str(short_dir / "sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()
        child = _spawn(listener, "refreshd.socket", "refreshd.socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect(path)
            answer = client.recv(4096).decode()
    out, _ = child.communicate(timeout=10)
    assert (child.returncode, out) == (0, "")
    assert answer == "3 SOCK_STREAM []"


def test_listen_fds_filters_by_name_and_closes_on_exec(short_dir: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(short_dir / "sock"))
        listener.listen()
        child = _spawn(listener, "other", "refreshd.socket")
        out, _ = child.communicate(timeout=10)
    assert out.strip() == "none [] False"


@pytest.mark.skipif(not shutil.which("systemd-socket-activate"), reason="needs systemd")
def test_listen_fds_under_systemd_socket_activate(short_dir: Path) -> None:
    """systemd's own activation tool is the oracle for the LISTEN_* protocol."""
    path = short_dir / "sock"
    child = (
        "from refreshd import sdnotify\n"
        "[s] = sdnotify.listen_fds('refreshd')\n"
        "c, _ = s.accept()\n"
        "c.sendall(b'adopted fd %d' % s.fileno())\n"
    )
    activator = subprocess.Popen(
        [
            "systemd-socket-activate",
            "-l",
            str(path),
            "--fdname=refreshd",
            sys.executable,
            "-c",
            child,
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if path.exists():
                break
            time.sleep(0.025)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect(str(path))
            assert client.recv(4096) == b"adopted fd 3"
        assert activator.wait(timeout=10) == 0
    finally:
        if activator.poll() is None:
            activator.kill()
            activator.wait()
