"""Start helper processes for the test world and stop them by PID, whatever happens.

Every process runs in its own session (so a Ctrl-C in the terminal reaches only Python, which
then stops its children in order), is recorded in a module-wide registry, and is stopped by
PID: SIGTERM to its process group, then SIGKILL after a grace period. The registry is emptied
by `stop_all()` from the callers' `finally` blocks and, as a last resort, from an atexit hook.
When started from the main thread, the child also gets SIGTERM if Python dies unexpectedly
(PR_SET_PDEATHSIG fires when the spawning *thread* ends, so worker threads do not set it).
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

_PR_SET_PDEATHSIG = 1
_GRACE_SECONDS = 5.0


@dataclass
class Proc:
    """A process we started: its argv, log file and Popen handle."""

    name: str
    argv: Sequence[str]
    log_path: Path
    popen: subprocess.Popen[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


_registry: dict[int, Proc] = {}
_started_pgids: set[int] = set()
_lock = threading.Lock()


class Service(abc.ABC):
    """A test service: start() (or entering `with`) runs _start(), stop() (or leaving) stops
    it; a start that fails half-way stops what it got to before the error goes on. stop() must
    cope with a service started partly or not at all."""

    @abc.abstractmethod
    def _start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def start(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    cwd: Path | None = None,
    stdin_data: bytes | None = None,
) -> Proc:
    """Start `argv` with stdout/stderr appended to `log_path`; register it for stopping."""
    preexec: Callable[[], None] | None = None
    if threading.current_thread() is threading.main_thread():
        preexec = _die_with_parent
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec,
        )
    if stdin_data is not None and popen.stdin is not None:
        popen.stdin.write(stdin_data)
        popen.stdin.close()
    proc = Proc(name=name, argv=tuple(argv), log_path=log_path, popen=popen)
    with _lock:
        _registry[popen.pid] = proc
        _started_pgids.add(popen.pid)
    return proc


def stop(proc: Proc, sig: int = signal.SIGTERM, grace: float = _GRACE_SECONDS) -> None:
    """Stop one process (and its process group) by PID; SIGKILL if it outlives `grace`."""
    pid = proc.pid
    if proc.popen.poll() is None:
        _signal_group(pid, sig)
        try:
            proc.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(pid, signal.SIGKILL)
            proc.popen.wait(timeout=grace)
    # Children left in the group (e.g. forked workers) go too.
    _signal_group(pid, signal.SIGKILL)
    with _lock:
        _registry.pop(pid, None)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_all() -> None:
    """Stop every process still registered, newest first."""
    with _lock:
        procs = list(_registry.values())
    for proc in reversed(procs):
        stop(proc, grace=2.0)


def live_world_pids() -> list[int]:
    """PIDs of live processes in any process group this module ever started (zombies excluded)."""
    with _lock:
        pgids = set(_started_pgids)
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state is [0], pgrp is [2].
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) in pgids:
            alive.append(int(entry.name))
    return alive


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll `predicate` until true or `timeout` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


atexit.register(stop_all)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (callers retry the start if it got taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def reap_leftovers() -> list[int]:
    """Kill whatever the world started that is still alive; return those PIDs (normally [])."""
    leftover = live_world_pids()
    if leftover:
        stop_all()
        for pid in live_world_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return leftover


def registered() -> dict[int, str]:
    """PID -> name of every process started here and not yet stopped."""
    with _lock:
        return {pid: proc.name for pid, proc in _registry.items()}
