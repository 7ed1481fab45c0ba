"""Small HTTP test servers served from a thread: the one TLS-in-the-connection's-thread server
(world/vks.py, world/nicknym.py) and the one way to run a socketserver for a `with` block.

Why a server of our own for TLS: ThreadingHTTPServer would do the handshake in its accepting
thread, where one client that never finishes it holds up every other; here each connection's
own thread does it, under a timeout."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANDSHAKE_TIMEOUT = 10.0


class TlsHttpServer(ThreadingHTTPServer):
    """Accepts plain TCP and does the TLS handshake in the connection's own thread; `owner` is
    the test server its handlers ask, `on_handshake(ok)` hears how each handshake went."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        context: ssl.SSLContext,
        handler: type[BaseHTTPRequestHandler],
        owner: Any,
        on_handshake: Callable[[bool], None] = lambda ok: None,
    ) -> None:
        self.context = context
        self.owner = owner
        self.on_handshake = on_handshake
        super().__init__(address, handler)

    def finish_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            self.on_handshake(False)
            return
        self.on_handshake(True)
        try:
            self.RequestHandlerClass(tls, client_address, self)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                tls.close()


class Running:
    """A socketserver served from its own thread: started by start() (or entering `with`),
    shut down, closed and its thread joined by stop() (or leaving it)."""

    def __init__(self, server: socketserver.BaseServer, name: str | None = None) -> None:
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout)

    def __enter__(self) -> Running:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
