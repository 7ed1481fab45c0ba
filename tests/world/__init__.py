"""The loopback test world: a private Tor network, nginx (WKD), SKS and a nicknym server.

Why: refreshd's end-to-end tests and its benchmark need the same real peers, started from
scratch on loopback and stopped by PID whatever happens. Pytest fixtures (tests/conftest.py)
start the pieces one by one; `World` starts them all at once for `python -m tests.world` and
bench/.

Routing: test names exist only in Tor's MapAddress and in our certificates. Every name maps
to one per-world loopback address W (127.a.b.c, chosen at random so concurrent worlds do not
collide), which is also the exit relay's own address: in this network the client carries a
stream only to the address of a relay whose policy accepts it (the stream is pinned to that
relay as `W.<exit fingerprint>.exit`); streams to other loopback addresses find no exit. All
servers listen on W; nginx also on 127.0.0.1 for direct tests and, when the process may bind
it, on W:443 so that `https://openpgpkey.example.org/...` works through Tor exactly as a real
WKD URL does (else URLs carry nginx's port).
"""

from __future__ import annotations

import contextlib
import functools
import random
import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType

from tests.world import names, procs
from tests.world.ca import LocalCA
from tests.world.nginx import WkdServer
from tests.world.nicknym import NicknymServer
from tests.world.sks import SksServer
from tests.world.tornet import TorNetwork

REQUIRED_BINARIES = {
    "tor": ("tor", "tor-gencert"),
    "nginx": ("nginx",),
    "sks": ("sks",),
    "mail": ("postfix", "dovecot", "doveadm", "gpg-wks-server"),
}


def missing_binaries(piece: str) -> list[str]:
    """The executables a world piece needs that are not on PATH."""
    return [binary for binary in REQUIRED_BINARIES[piece] if shutil.which(binary) is None]


@functools.cache
def world_address() -> str:
    """This process's loopback address W for every server and the exit (see above).

    It stays below 127.192.0.0/10, Tor's default VirtualAddrNetworkIPv4: Tor refuses
    connections to addresses in that range that it did not hand out itself.
    """
    rng = random.SystemRandom()
    for _ in range(20):
        address = f"127.{rng.randrange(1, 192)}.{rng.randrange(0, 256)}.{rng.randrange(1, 255)}"
        if _bindable(address, 443) or _bindable(address, 0):
            return address
    return "127.0.0.1"


@functools.cache
def https_port_443() -> bool:
    """Whether this process may listen on W:443 (privilege or a low unprivileged port start).

    Decided once, before any world server binds it; whether the port is still free when a
    server starts is that server's own check (`WkdServer.serves_443`)."""
    return _bindable(world_address(), 443)


def _bindable(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def tor_mapping() -> dict[str, str]:
    """MapAddress targets: every test name to W."""
    return dict.fromkeys(names.all_names(), world_address())


def start_wkd_server(ca: LocalCA, nicknym: NicknymServer, base_dir: Path | None) -> WkdServer:
    """nginx for every web host on 127.0.0.1 and W (same port, plus 443 when it can be bound:
    privilege needed, and free in this process); the nicknym provider's capability files are
    published at https://<nicknym domain>/."""
    address = world_address()
    on_443 = https_port_443() and _bindable(address, 443)
    extra = ((address, 0), (address, 443)) if on_443 else ((address, 0),)
    server = WkdServer(ca, names.web_hosts(), base_dir=base_dir, extra_listen=extra)
    server.start()
    try:
        for path, data in nicknym.provider_files().items():
            server.put_file(names.NICKNYM_DOMAIN, path, data)
    except BaseException:
        server.stop()
        raise
    return server


def new_tor_network(base_dir: Path | None) -> TorNetwork:
    """The private network with its exit on W and every test name mapped to W (not started)."""
    return TorNetwork(mapping=tor_mapping(), exit_address=world_address(), base_dir=base_dir)


class World(contextlib.AbstractContextManager["World"]):
    """Every piece at once; `endpoints()` describes it as plain data (JSON-able)."""

    def __init__(self, base_dir: Path | None = None, *, with_tor: bool = True) -> None:
        self._parent = base_dir
        self.with_tor = with_tor
        self._stack = contextlib.ExitStack()
        self.base_dir = Path()
        self.address = ""
        self.ca: LocalCA
        self.nicknym: NicknymServer
        self.wkd: WkdServer
        self.sks: SksServer
        self.tor: TorNetwork | None = None

    def __enter__(self) -> World:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def _start(self) -> None:
        self.base_dir = Path(tempfile.mkdtemp(prefix="refreshd-world-", dir=self._parent))
        if self._parent is None:
            self._stack.callback(shutil.rmtree, self.base_dir, True)
        self.address = world_address()
        self.ca = LocalCA(self.base_dir / "ca")
        self.nicknym = self._stack.enter_context(
            NicknymServer(
                self.ca, names.NICKNYM_HOST, names.NICKNYM_DOMAIN, self.address, signing=True
            )
        )
        self.wkd = start_wkd_server(self.ca, self.nicknym, self.base_dir)
        self._stack.callback(self.wkd.stop)
        self.sks = self._stack.enter_context(SksServer(self.address))
        if self.with_tor:
            tor = new_tor_network(self.base_dir)
            self.tor = self._stack.enter_context(tor)

    def endpoints(self) -> dict[str, object]:
        """Where everything is, for a benchmark or a daemon config."""
        tor = self.tor
        return {
            "ca_file": str(self.ca.ca_file),
            "pids": {str(pid): name for pid, name in procs.registered().items()},
            "address": self.address,
            "wkd": {
                "port": self.wkd.port,
                "default_port_via_tor": self.wkd.serves_443,
                "hosts": list(self.wkd.hosts),
                "www": str(self.wkd.www),
                "access_log": str(self.wkd.access_log_path),
                "status_url": f"http://127.0.0.1:{self.wkd.status_port}/status",
            },
            "sks": {"url": self.sks.url, "direct_url": self.sks.direct_url},
            "nicknym": {
                "uri": self.nicknym.nicknym_uri,
                "domain": self.nicknym.domain,
                "port": self.nicknym.port,
                "address": self.nicknym.address,
            },
            "tor": None
            if tor is None
            else {
                "socks": f"127.0.0.1:{tor.socks_port}",
                "control": f"127.0.0.1:{tor.control_port}",
                "cookie": str(tor.cookie_path),
                "exit_fingerprint": tor.exit_fingerprint,
                "mapping": tor.mapping,
                "start_seconds": round(tor.start_seconds, 2),
                "phase_seconds": {k: round(v, 2) for k, v in tor.phase_seconds.items()},
                "data_dirs": {k: str(v) for k, v in tor.data_dirs.items()},
            },
        }
