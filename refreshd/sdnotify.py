"""systemd readiness notification and socket activation, without libsystemd.

Rules (sd_notify(3), sd_listen_fds(3)):
- Notifications are datagrams of "KEY=VALUE" lines sent to $NOTIFY_SOCKET; a name starting
  with "@" is an abstract socket. With no $NOTIFY_SOCKET (not under systemd) nothing is sent.
- Inherited sockets start at fd 3; they are ours only when $LISTEN_PID is this process.
  $LISTEN_FDS says how many, $LISTEN_FDNAMES (":"-separated) names them.
- The variables are removed after reading so that children (a launched Tor) do not take the
  sockets for their own; the fds are marked close-on-exec for the same reason.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

__all__ = ["listen_fds", "notify"]

LISTEN_FDS_START = 3


def notify(*assignments: str, environ: MutableMapping[str, str] | None = None) -> bool:
    """Send e.g. "READY=1", "STATUS=serving"; False when not under systemd or not delivered.

    Like sd_notify(3) it never raises: a lost notification must not take the daemon down
    (systemd then reports the start as timed out, which names the problem).
    """
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET", "")
    if not target:
        return False
    if target.startswith("@"):
        target = "\0" + target[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(assignments).encode("utf-8"), target)
    except OSError:
        return False
    return True


def listen_fds(
    name: str | None = None, *, environ: MutableMapping[str, str] | None = None
) -> list[socket.socket]:
    """Sockets systemd passed to this process (all, or only those named `name`)."""
    env = os.environ if environ is None else environ
    pid, count, names = (env.pop(k, "") for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"))
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return []
    labels = names.split(":") if names else []
    sockets = []
    for index in range(int(count)):
        fd = LISTEN_FDS_START + index
        os.set_inheritable(fd, False)
        label = labels[index] if index < len(labels) else "unknown"
        if name is None or label == name:
            sockets.append(socket.socket(fileno=fd))
    return sockets
