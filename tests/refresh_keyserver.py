"""A loopback HTTPS keyserver that records every request, for the refresh engine's tests.

It answers VKS (/vks/v1/by-fingerprint/FPR, /vks/v1/by-email/ADDRESS) and HKP
(/pks/lookup?op=get&search=0xFPR) for the keys it is given, under any host name the daemon maps
to it with network.connect_to. Each request is logged with its host, the fingerprint or address
asked for, and its start and end times (from the head read to the last byte sent), and the
server counts requests in flight. Hosts and fingerprints can be told to fail (500) or hang.
Threads, not trio: the tests drive the daemon with blocking calls.
"""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import socket
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from refreshd.openpgp.packets import armor
from tests.world.threaded import Running


@dataclass(frozen=True)
class Hit:
    host: str
    kind: str  # "fingerprint" | "email" | "other"
    subject: str  # the fingerprint (upper-case) or address asked for
    status: int  # 0: no answer was sent (held, or the client left)
    start: float
    end: float


@dataclass
class Behaviour:
    failing_hosts: set[str] = field(default_factory=set)  # lookups by fingerprint answer 500
    failing_keys: set[str] = field(default_factory=set)  # any lookup of these answers 500
    hanging_keys: set[str] = field(default_factory=set)  # no answer: held until the client leaves
    delay: float = 0.0  # seconds every answer waits before it is sent


class KeyServer:
    """Start with `with KeyServer(ctx) as server:`; `hits` is the request log, oldest first."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.tls = tls
        self.keys: dict[str, bytes] = {}  # fingerprint -> armored key
        self.by_email: dict[tuple[str, str], str] = {}  # (host, address) -> fingerprint
        self.behaviour = Behaviour()
        self.hits: list[Hit] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._running = Running(_Server(self))
        self.port = self._running.server.server_address[1]

    def __enter__(self) -> KeyServer:
        self._running.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._running.stop(10)

    def add(self, fingerprint: str, key: bytes) -> None:
        self.keys[fingerprint.upper()] = key if key.startswith(b"-----") else armor(key).encode()

    def log(self) -> list[Hit]:
        with self._lock:
            return list(self.hits)

    def wait_for(self, predicate: Any, timeout: float) -> list[Hit]:
        """Poll the log until predicate(log) is true; the log, or AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            hits = self.log()
            if predicate(hits):
                return hits
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"server log did not get there in {timeout} s: {len(hits)} hits"
                )
            time.sleep(0.05)

    # -- request handling (server threads) --------------------------------------------------
    def _enter(self) -> float:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return time.time()

    def _leave(self, hit: Hit) -> None:
        with self._lock:
            self.in_flight -= 1
            self.hits.append(hit)

    def answer(self, host: str, target: str) -> tuple[int, bytes, str, str, bool]:
        """(status, body, kind, subject, hang) for one GET."""
        parts = urlsplit(target)
        kind, subject = "other", parts.path
        if parts.path.startswith("/vks/v1/by-fingerprint/"):
            kind, subject = "fingerprint", parts.path.rsplit("/", 1)[1].upper()
        elif parts.path.startswith("/vks/v1/by-email/"):
            kind, subject = "email", unquote(parts.path.rsplit("/", 1)[1]).lower()
        elif parts.path == "/pks/lookup":
            search = parse_qs(parts.query).get("search", [""])[0]
            kind, subject = "fingerprint", search.upper().removeprefix("0X")
        b = self.behaviour
        if kind == "email":
            subject_fpr = self.by_email.get((host, subject))
        else:
            subject_fpr = subject if kind == "fingerprint" else None
        hang = subject_fpr in b.hanging_keys
        failing_host = host in b.failing_hosts and kind == "fingerprint"
        if failing_host or subject_fpr in b.failing_keys:
            return 500, b"internal error\n", kind, subject, hang
        if subject_fpr is None or subject_fpr not in self.keys:
            return 404, b"not found\n", kind, subject, hang
        return 200, self.keys[subject_fpr], kind, subject, hang


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: KeyServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)

    def finish_request(self, request: socket, client_address: Any) -> None:  # type: ignore[override]
        request.settimeout(30)
        try:
            tls = self.owner.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the owner keeps its own log."""

    def do_GET(self) -> None:
        owner = self.server.owner
        start = owner._enter()
        self.close_connection = True
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].lower()
        status, body, kind, subject = 0, b"", "other", self.path
        try:
            status, body, kind, subject, hang = owner.answer(host, self.path)
            if hang:
                self._hold()
                status = 0
                return
            if owner.behaviour.delay:
                time.sleep(owner.behaviour.delay)
            self.send_response(status)
            self.send_header("Content-Type", "application/pgp-keys")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            status = 0
        finally:
            owner._leave(Hit(host, kind, subject, status, start, time.time()))

    def _hold(self) -> None:
        """Send nothing until the client closes the connection (or the server stops)."""
        self.connection.settimeout(0.05)
        while not self.server.owner._release.is_set():
            try:
                if not self.connection.recv(1):
                    return
            except TimeoutError:
                continue
            except OSError:
                return
