"""The loopback test world: a private Tor network, nginx (WKD), SKS and a nicknym server.

Why: refreshd's end-to-end tests and its benchmark need the same real peers, started from
scratch on loopback and stopped by PID whatever happens. Pytest fixtures (tests/conftest.py)
start the pieces one by one; `World` starts them all at once for `python -m tests.world` and
bench/.

Routing: test names exist only in Tor's MapAddress and in our certificates. Web hosts map to
a per-world loopback address (127.a.b.c) where nginx also listens on port 443 when the
process may bind it, so `https://openpgpkey.example.org/...` works through Tor exactly as a
real WKD URL does; otherwise they map to 127.0.0.1 and URLs carry nginx's port. The nicknym
and HKP names map to 127.0.0.1, where those servers listen on free ports.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import random
import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType

from tests.world import names
from tests.world.ca import LocalCA
from tests.world.nginx import WkdServer
from tests.world.nicknym import NicknymServer
from tests.world.sks import SksServer
from tests.world.tornet import TorNetwork

REQUIRED_BINARIES = {
    "tor": ("tor", "tor-gencert"),
    "nginx": ("nginx",),
    "sks": ("sks",),
}


def missing_binaries(piece: str) -> list[str]:
    """The executables a world piece needs that are not on PATH."""
    return [binary for binary in REQUIRED_BINARIES[piece] if shutil.which(binary) is None]


@functools.cache
def service_address() -> str | None:
    """A random 127.a.b.c on which port 443 can be bound now, or None (e.g. not privileged)."""
    rng = random.SystemRandom()
    for _ in range(5):
        address = f"127.{rng.randrange(1, 255)}.{rng.randrange(0, 256)}.{rng.randrange(1, 255)}"
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((address, 443))
            except PermissionError:
                return None
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    continue
                return None
        return address
    return None


def tor_mapping(web_address: str | None) -> dict[str, str]:
    """MapAddress targets: web hosts to the service address (if any), the rest to 127.0.0.1."""
    mapping = dict.fromkeys(names.all_names(), "127.0.0.1")
    if web_address is not None:
        mapping.update(dict.fromkeys(names.web_hosts(), web_address))
    return mapping


def start_wkd_server(
    ca: LocalCA, nicknym: NicknymServer, base_dir: Path | None, web_address: str | None
) -> WkdServer:
    """nginx for every web host, also on `web_address` (same port and 443) when given; the
    nicknym provider's capability files are published at https://<nicknym domain>/."""
    extra = () if web_address is None else ((web_address, 0), (web_address, 443))
    server = WkdServer(ca, names.web_hosts(), base_dir=base_dir, extra_listen=extra)
    server.start()
    try:
        for path, data in nicknym.provider_files().items():
            server.put_file(names.NICKNYM_DOMAIN, path, data)
    except BaseException:
        server.stop()
        raise
    return server


class World(contextlib.AbstractContextManager["World"]):
    """Every piece at once; `endpoints()` describes it as plain data (JSON-able)."""

    def __init__(self, base_dir: Path | None = None, *, with_tor: bool = True) -> None:
        self._parent = base_dir
        self.with_tor = with_tor
        self._stack = contextlib.ExitStack()
        self.base_dir = Path()
        self.web_address: str | None = None
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
        self.web_address = service_address()
        self.ca = LocalCA(self.base_dir / "ca")
        self.nicknym = self._stack.enter_context(
            NicknymServer(self.ca, names.NICKNYM_HOST, names.NICKNYM_DOMAIN)
        )
        self.wkd = start_wkd_server(self.ca, self.nicknym, self.base_dir, self.web_address)
        self._stack.callback(self.wkd.stop)
        self.sks = self._stack.enter_context(SksServer(self.base_dir))
        if self.with_tor:
            tor = TorNetwork(mapping=tor_mapping(self.web_address), base_dir=self.base_dir)
            self.tor = self._stack.enter_context(tor)

    def endpoints(self) -> dict[str, object]:
        """Where everything is, for a benchmark or a daemon config."""
        tor = self.tor
        return {
            "ca_file": str(self.ca.ca_file),
            "web_address": self.web_address,
            "wkd": {
                "port": self.wkd.port,
                "default_port_via_tor": self.web_address is not None,
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
                "data_dirs": {k: str(v) for k, v in tor.data_dirs.items()},
            },
        }
