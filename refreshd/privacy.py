"""What refreshd keeps from other local users: its state directory and its socket directory.

Rules:
- The daemon runs with umask 0077, so every file and directory it creates (the store and its
  -wal/-shm files, the audit log, the socket) is its user's alone, whatever umask it inherited.
- The state directory is created 0700; an existing one must be owned by the user and is
  tightened to 0700, and so is every file in it the user owns (a WAL from a run under umask 022
  would otherwise stay readable: it holds contacts' addresses).
- The socket directory is created by the daemon (0700). An existing one must be a real
  directory (not a symlink), owned by the user, and 0700 already: anything else stops the start
  with a message naming the path. refreshd never chmods a directory it did not create.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import structlog

__all__ = ["UMASK", "private_socket_dir", "private_state_dir"]

UMASK = 0o077
log = structlog.get_logger("refreshd")


class UnsafePath(RuntimeError):
    """A directory refreshd would keep its secrets in is not private; the message names it."""


def _owned(path: Path, st: os.stat_result) -> None:
    if st.st_uid != os.getuid():
        raise UnsafePath(
            f"{path} is owned by uid {st.st_uid}, not by this user (uid {os.getuid()}); "
            "refusing to use it"
        )


def _create(path: Path) -> bool:
    """Create `path` (and missing parents) 0700; False if it already existed."""
    try:
        path.lstat()
    except FileNotFoundError:
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # ours: made just now
        return True
    return False


def private_state_dir(path: Path) -> None:
    """Create or tighten the state directory and the files the user owns in it."""
    if _create(path):
        return
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} (daemon.state_dir) is not a directory")
    _owned(path, st)
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
        log.warning("state.tightened", path=str(path), mode=oct(stat.S_IMODE(st.st_mode)))
    for entry in path.iterdir():
        est = entry.lstat()
        if est.st_uid == os.getuid() and not stat.S_ISLNK(est.st_mode) and est.st_mode & 0o077:
            os.chmod(entry, stat.S_IMODE(est.st_mode) & ~0o077)
            log.warning("state.tightened", path=str(entry), mode=oct(stat.S_IMODE(est.st_mode)))


def private_socket_dir(path: Path) -> None:
    """Create the socket directory, or check that the existing one is private."""
    if _create(path):
        return
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{path} (the socket's directory) is a symlink; refusing to follow it")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} (the socket's directory) is not a directory")
    _owned(path, st)
    if st.st_mode & 0o077:
        raise UnsafePath(
            f"{path} (the socket's directory) has mode {oct(stat.S_IMODE(st.st_mode))}; it must "
            "be 0700. refreshd does not change a directory it did not create: point "
            "daemon.socket into a directory of its own, or remove this one"
        )
