"""A counting TCP forwarder: put it in front of a server to count accepts and wire bytes.

Why: SKS keeps no usable access log, and tests must prove "zero connection attempts" (Tor
down) or measure bytes on the wire (TLS included) for the benchmark. The tap listens on a free
loopback port, forwards each connection to the target and counts what passes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class TapCounts:
    """Totals since start: connections accepted, bytes client->server and server->client."""

    accepts: int
    bytes_up: int
    bytes_down: int


class Tap:
    """Forward <host>:<free port> to (target_host, target_port); a thread per direction."""

    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server((host, 0))
        self.host = host
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._accepts = 0
        self._up = 0
        self._down = 0
        self._open: set[socket.socket] = set()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tap", daemon=True)
        self._thread.start()

    def counts(self) -> TapCounts:
        with self._lock:
            return TapCounts(self._accepts, self._up, self._down)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                client, _addr = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._accepts += 1
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Pump both directions until both end, then close both sockets."""
        up = threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True)
        up.start()
        self._pump(upstream, client, False)
        up.join()
        with self._lock:
            self._open.difference_update((client, upstream))
        client.close()
        upstream.close()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
                with self._lock:
                    if up:
                        self._up += len(chunk)
                    else:
                        self._down += len(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
