"""A small VKS keyserver (the keys.openpgp.org API, Hagrid) over TLS on the world address.

Why: no VKS server can be installed here, and the own-key audit must see a VKS that keeps an
old copy of the own key after an extension (uploads that did not propagate) and then takes the
new one. This server speaks the part of the API refreshd uses: GET /vks/v1/by-email/ADDRESS
(200 with the key, 404 unknown) and POST /vks/v1/upload with {"keytext": ARMORED} answered
{"key_fpr", "status": {address: "published"}, "token"}. Hagrid publishes an address only after
its owner confirms a mail; this server publishes at once, as if confirmed. With `hold` set it
answers uploads as accepted but keeps serving what it had (an upload that never propagated).
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote

from refreshd.openpgp.keyview import read_key
from tests.world.ca import LocalCA
from tests.world.threaded import Running, TlsHttpServer

HOST = "keys.example.net"


class _Handler(BaseHTTPRequestHandler):
    server: TlsHttpServer

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        vks: VksServer = self.server.owner
        prefix = "/vks/v1/by-email/"
        if not self.path.startswith(prefix):
            self._send(404, b'{"error": "not found"}')
            return
        key = vks.keys.get(unquote(self.path[len(prefix) :]).lower())
        if key is None:
            self._send(404, b'{"error": "not found"}')
        else:
            self._send(200, key, "application/pgp-keys")

    def do_POST(self) -> None:
        vks: VksServer = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        try:
            text = json.loads(self.rfile.read(length))["keytext"]
            view = read_key(text.encode(), datetime.now(UTC))
        except Exception:  # a bad upload is a 400, as Hagrid answers
            self._send(400, b'{"error": "bad request"}')
            return
        with vks.lock:
            vks.uploads.append(text)
            if not vks.hold:
                for address in view.addresses():
                    vks.keys[address.lower()] = text.encode()
        answer = {
            "key_fpr": view.fingerprint,
            "status": dict.fromkeys(view.addresses(), "published"),
            "token": "t",
        }
        self._send(200, json.dumps(answer).encode())

    def log_message(self, format: str, *args: object) -> None:
        """Requests are recorded by the server object, not printed."""


class VksServer:
    """Use as a context manager; `url` is the base refreshd's discovery.vks takes."""

    def __init__(self, ca: LocalCA, address: str) -> None:
        self.lock = threading.Lock()
        self.keys: dict[str, bytes] = {}  # address -> armored key served
        self.uploads: list[str] = []
        self.hold = False
        context = ca.issue([HOST]).server_context()
        self._running = Running(TlsHttpServer((address, 0), context, _Handler, self))
        self.port = int(self._running.server.server_address[1])
        self.url = f"https://{HOST}:{self.port}"

    def __enter__(self) -> VksServer:
        self._running.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._running.stop()
