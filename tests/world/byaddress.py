"""An HTTP server that answers each network path differently: the attacker on one path.

Why: network perspectives (SPEC 6) exist to notice a directory, or something on one path, that
serves different keys to different parts of the network. In the private Tor network a stream
to a loopback address is carried by the exit relay on that address (tests/world/tornet.py), and
every exit connects from 127.0.0.1 (Tor never binds an outbound address for loopback), so the
path shows in the local address a connection arrived at, not in its peer address. This server
listens on several addresses at once (one port), serves each its own body, records the local and
peer address of every request, and answers 404 where it has no body.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.world import procs


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server: _Listener = self.server  # type: ignore[assignment]
        local = self.connection.getsockname()[0]
        server.owner.record(local, self.client_address[0], self.path)
        body = server.owner.bodies.get(local)
        self.send_response(404 if body is None else 200)
        self.send_header("Content-Length", str(len(body or b"")))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, format: str, *args: object) -> None:
        """Silence the default stderr access log."""


class _Listener(ThreadingHTTPServer):
    owner: ByAddressServer


class ByAddressServer:
    """Use as a context manager; `bodies` maps a listening address to what it serves."""

    def __init__(self, listen: Iterable[str], bodies: Mapping[str, bytes]) -> None:
        self.bodies = dict(bodies)
        self.port = procs.free_port(next(iter(listen)))
        self.seen: list[tuple[str, str, str]] = []  # (local, peer, path), in arrival order
        self._lock = threading.Lock()
        self._servers = []
        for address in listen:
            server = _Listener((address, self.port), _Handler)
            server.owner = self
            self._servers.append(server)
        self._threads = [
            threading.Thread(target=s.serve_forever, daemon=True) for s in self._servers
        ]

    def record(self, local: str, peer: str, path: str) -> None:
        with self._lock:
            self.seen.append((local, peer, path))

    def __enter__(self) -> ByAddressServer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join()
