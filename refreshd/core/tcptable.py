"""Who owns the other end of a loopback TCP connection, from the kernel's socket table.

Rules:
- TCP has no SO_PEERCRED. On loopback the client's socket is in the same kernel's table
  (`/proc/net/tcp`, `/proc/net/tcp6`), so its owner is known: the row whose local address is
  our peer's address and whose remote address is ours, with an inode (a socket that still
  exists: a client that already half-closed is FIN_WAIT, a TIME_WAIT row has inode 0); its
  `uid` column is the client's user.
- Addresses are hex in the table: IPv4 as one 32-bit word, IPv6 as four, each in the host's
  byte order; the port as four big-endian hex digits.
- No row, several rows that disagree, or a malformed table: the owner is unknown (None), and
  the caller refuses.
"""

from __future__ import annotations

import ipaddress
import sys

__all__ = ["owner"]


def endpoint(host: str, port: int) -> str:
    """`host:port` as the kernel writes it in /proc/net/tcp or tcp6."""
    packed = ipaddress.ip_address(host.split("%", 1)[0]).packed
    words = [packed[i : i + 4] for i in range(0, len(packed), 4)]
    hexed = "".join(int.from_bytes(w, sys.byteorder).to_bytes(4, "big").hex() for w in words)
    return f"{hexed.upper()}:{port:04X}"


def owner(table: str, client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The uid owning the client end of the connection client -> server, or None."""
    local, remote = endpoint(*client), endpoint(*server)
    uids: set[int] = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[1] != local or fields[2] != remote:
            continue
        if fields[9] == "0":
            continue
        if not (fields[7].isascii() and fields[7].isdigit()):
            return None
        uids.add(int(fields[7]))
    return uids.pop() if len(uids) == 1 else None
