"""A network namespace of our own holding one server address, reached from here over a veth pair.

Why: the private Tor network runs on loopback, and Tor treats loopback targets specially (a
stream to 127.x is carried only by the relay whose own address that is, and an exit never binds
OutboundBindAddressExit for a loopback destination, so every exit connects from 127.0.0.1).
Network perspectives need the opposite: a target that any exit may reach by its policy, and
exits that a server can tell apart by the address they connect from. So the target lives in a
namespace created here, on an address Tor does not treat as internal, and each exit binds its
own source address on this side of the veth. The issue's "each exit connecting from its own
loopback address" is met in intent: the addresses are distinct and exist only on our veth.

Safety rules (nothing may leave the machine):
- Addresses come only from the documentation ranges TEST-NET-2 (198.51.100.0/24: the exits'
  source addresses, here) and TEST-NET-3 (203.0.113.0/24: the server, in the namespace), each a
  /32 on its side of the veth, chosen at random among those not yet on this host so that
  concurrent runs do not collide.
- Routes: one /32 per peer address, to the veth; no default route is ever added, so from the
  namespace nothing but our source addresses is reachable.
- The exits connect from the source addresses; two policy rules per source address (checked
  before the main table) let it reach the server and nothing else, so even an exit whose policy
  accepts more (tests/world/tornet.py) cannot send a packet off this host.
- Names carry the process id; `stop()` deletes the policy rules, the namespace (which takes the
  veth pair and its routes with it) and the host-side link if it is still there; it runs from
  the context manager's exit whatever happened. A run killed before that leaves them behind:
  the next start sweeps namespaces of dead processes and rules for addresses no longer here.

`refused()` says why namespaces cannot be made here (no CAP_NET_ADMIN, no `ip`), for a skip.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.world import procs

__all__ = ["Enclave", "EnclaveRefused", "refused"]

IP = "ip"
SOURCES_NET = "198.51.100."  # TEST-NET-2: the exits' source addresses, host side
SERVER_NET = "203.0.113."  # TEST-NET-3: the server's address, inside the namespace
_PREFIX = "refreshd-"  # namespace names: refreshd-<pid>-<tag>
_TO_SERVER = ("priority", "3000")  # policy rules: a source address may reach the server ...
_NOWHERE_ELSE = ("priority", "3001")  # ... and nothing else (before the main table, 32766)


class EnclaveRefused(RuntimeError):
    """The host did not let us make the namespace or the veth (the message says why)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise EnclaveRefused(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def refused() -> str | None:
    """Why this process cannot create a network namespace, or None when it can (it tries)."""
    if shutil.which(IP) is None:
        return "the ip command (iproute2) is not installed"
    name = f"{_PREFIX}{os.getpid()}-probe"
    made = _ip("netns", "add", name, check=False)
    if made.returncode != 0:
        return f"ip netns add is refused here: {made.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


def _in_use() -> set[str]:
    """IPv4 addresses already on this host, routed by it or named in a rule, to stay clear of."""
    text = "".join(_ip("-4", *what).stdout for what in (("-o", "addr"), ("route",), ("rule",)))
    return {word.split("/")[0] for word in text.split() if word[:1].isdigit()}


def _sweep() -> None:
    """Remove what killed runs left: their namespaces (by the process id in the name), then our
    policy rules whose source address is no longer on this host."""
    for line in _ip("netns", "list").stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = name.removeprefix(_PREFIX).split("-")[0]
        if name.startswith(_PREFIX) and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _ip("netns", "del", name, check=False)
    here = {w.split("/")[0] for w in _ip("-4", "-o", "addr").stdout.split() if w[:1].isdigit()}
    for line in _ip("-4", "rule").stdout.splitlines():
        words = line.replace(":", " ").split()
        priority, source = words[0], words[2] if len(words) > 2 else ""
        ours = priority in (_TO_SERVER[1], _NOWHERE_ELSE[1]) and source.startswith(SOURCES_NET)
        if ours and source not in here:
            _ip("rule", "del", *words[1:], "priority", priority, check=False)


def _pick(net: str, count: int, taken: set[str]) -> list[str]:
    free = [f"{net}{i}" for i in range(1, 255) if f"{net}{i}" not in taken]
    return random.SystemRandom().sample(free, count)


class Enclave(procs.Service):
    """The namespace with `server` inside and `sources` on this side; a context manager.

    `exec_prefix` runs a command inside the namespace (e.g. nginx listening on `server`).
    """

    def __init__(self, sources: int = 2) -> None:
        pid, tag = os.getpid(), random.SystemRandom().randrange(10, 100)
        self.name = f"{_PREFIX}{pid}-{tag}"
        self.host_link = f"rfh{pid}{tag}"  # at most 12 characters (the limit is 15)
        self.inner_link = f"rfn{pid}{tag}"
        self.n_sources = sources
        self.server = ""
        self.sources: tuple[str, ...] = ()
        self._made = False
        self._rules: list[tuple[str, ...]] = []

    @property
    def exec_prefix(self) -> Sequence[str]:
        return (IP, "netns", "exec", self.name)

    def _start(self) -> None:
        _sweep()
        taken = _in_use()
        self.server = _pick(SERVER_NET, 1, taken)[0]
        self.sources = tuple(_pick(SOURCES_NET, self.n_sources, taken))
        _ip("netns", "add", self.name)
        self._made = True
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.inner_link)
        _ip("link", "set", self.inner_link, "netns", self.name)
        for source in self.sources:
            _ip("addr", "add", f"{source}/32", "dev", self.host_link)
        _ip("link", "set", self.host_link, "up")
        _ip("route", "add", f"{self.server}/32", "dev", self.host_link)
        inside = ("-n", self.name)
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "addr", "add", f"{self.server}/32", "dev", self.inner_link)
        _ip(*inside, "link", "set", self.inner_link, "up")
        for source in self.sources:
            _ip(*inside, "route", "add", f"{source}/32", "dev", self.inner_link)
        for source in self.sources:  # from a source address: the server, or nowhere
            for rule in (
                ("from", source, "to", self.server, "lookup", "main", *_TO_SERVER),
                ("from", source, "prohibit", *_NOWHERE_ELSE),
            ):
                _ip("rule", "add", *rule)
                self._rules.append(rule)

    def stop(self) -> None:
        """Delete the namespace (its end of the veth, the pair and their routes go with it)."""
        while self._rules:  # rules belong to the host, not the namespace: removed one by one
            _ip("rule", "del", *self._rules.pop(), check=False)
        if self._made:
            _ip("netns", "del", self.name, check=False)
            self._made = False
        if _ip("link", "show", self.host_link, check=False).returncode == 0:
            _ip("link", "del", self.host_link, check=False)
