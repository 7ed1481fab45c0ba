"""A nicknym test server (Nicknym API v2 as in reference 002), HTTPS with the local CA.

Why: no real nickserver is installable, and refreshd's nicknym source must meet every answer
the API defines. The server runs in a thread of the test process and counts what it sees.

Endpoints (GET only; any other method is 405):
- /.well-known/key-discovery -> 200, body "nicknym\\n" (capability detection)
- /provider.json -> 200, {"domain": DOMAIN, "nicknym_uri": "https://HOST:PORT/"}
- /?address=EMAIL -> a key by address; /?fingerprint=FPR -> a key by full fingerprint
  (hex, any case, 40 or 64 digits). Exactly one of the two parameters, else 400.

Answers to a query:
- 200 with {"address": EMAIL, "fingerprint": FPR, "openpgp": "<armored key>"} as
  application/json, plus Last-Modified (second precision, when the key was last published);
- 304 when If-Modified-Since is at or after that time;
- 404 for an address of this domain or a fingerprint with no key;
- 502 for an address of another domain (the real nickserver would proxy; this one never
  does, which is what a failed proxy request looks like);
- whatever `set_response` forced for that address or fingerprint (400, 404, 409, 410, 500,
  502, 504, 304 or 200), optionally with a forced body (to serve garbage).
Error bodies are one line of text.

Signed answers (docs/nicknym-signatures.md), with `signing=True`: provider.json names the
endorsement keys given to `set_endorsement_keys` and the Ed25519 response key; every answer to
a query, whatever its status, carries `Nicknym-Signature: ed25519 <base64>` over
"nicknym-response-v1", the request's Nicknym-Nonce, the request target, the status and the
hex SHA-256 of the body, joined by newlines. `set_response(..., signature="none" | "bad")`
forges an unsigned answer or one signed over another message.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.world.ca import LocalCA
from tests.world.threaded import Running, TlsHttpServer

CODES = (200, 304, 400, 404, 409, 410, 500, 502, 504)
_FPR = re.compile(r"[0-9A-F]{40}|[0-9A-F]{64}")


@dataclass(frozen=True)
class NicknymKey:
    address: str
    fingerprint: str
    armored: str
    published: float


@dataclass(frozen=True)
class Forced:
    status: int
    body: bytes | None
    signature: str = "good"  # good | none | bad


@dataclass(frozen=True)
class NicknymRequest:
    """One request as the server saw it (headers lower-cased)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class NicknymServer:
    """The server on <address>:<free port>, answering as `host` for `domain`."""

    def __init__(
        self,
        ca: LocalCA,
        host: str,
        domain: str,
        address: str = "127.0.0.1",
        *,
        signing: bool = False,
    ) -> None:
        self.host = host
        self._signer = Ed25519PrivateKey.generate() if signing else None
        self._endorsement_keys: list[str] = []
        self.address = address
        self.domain = domain.lower()
        self._ca = ca
        self._lock = threading.Lock()
        self._keys: dict[str, NicknymKey] = {}
        self._forced: dict[tuple[str, str], Forced] = {}
        self._requests: list[NicknymRequest] = []
        self._accepts = 0
        self._tls_failures = 0
        self._running: Running | None = None
        self.port = 0

    def __enter__(self) -> NicknymServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        cert = self._ca.issue([self.host, self.domain])
        server = TlsHttpServer(
            (self.address, 0),
            cert.server_context(),
            _Handler,
            self,
            on_handshake=lambda ok: self._count_accept(tls_ok=ok),
        )
        self._running = Running(server, name="nicknym")
        self.port = int(server.server_address[1])
        self._running.start()

    def stop(self) -> None:
        if self._running is not None:
            self._running.stop(timeout=5)
            self._running = None

    # -- URLs and capability files ----------------------------------------------------------

    @property
    def nicknym_uri(self) -> str:
        return f"https://{self.host}:{self.port}/"

    def provider_files(self) -> dict[str, bytes]:
        """Capability files to serve at https://<domain>/ (the provider's web server)."""
        provider: dict[str, object] = {"domain": self.domain, "nicknym_uri": self.nicknym_uri}
        with self._lock:
            if self._endorsement_keys:
                provider["endorsement_keys"] = list(self._endorsement_keys)
        if self._signer is not None:
            raw = self._signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            provider["response_key"] = "ed25519:" + base64.b64encode(raw).decode()
        return {
            "/.well-known/key-discovery": b"nicknym\n",
            "/provider.json": json.dumps(provider).encode(),
        }

    def query_url(self, *, address: str | None = None, fingerprint: str | None = None) -> str:
        params = {"address": address} if address is not None else {"fingerprint": fingerprint}
        return f"{self.nicknym_uri}?{urllib.parse.urlencode(params)}"

    # -- state ------------------------------------------------------------------------------

    def publish(self, address: str, armored: str, fingerprint: str) -> NicknymKey:
        """Serve `armored` for `address` and its fingerprint; Last-Modified moves forward."""
        with self._lock:
            old = self._keys.get(address.lower())
            stamp = float(int(time.time()))
            if old is not None and stamp <= old.published:
                stamp = old.published + 1.0
            key = NicknymKey(address.lower(), fingerprint.upper(), armored, stamp)
            self._keys[key.address] = key
            return key

    def set_endorsement_keys(self, armored: list[str]) -> None:
        """The endorsement keys provider.json names from now on."""
        with self._lock:
            self._endorsement_keys = list(armored)

    def sign(self, nonce: str, target: str, reply: Reply, how: str = "good") -> Reply:
        """reply with its signature header (signing servers only; see the module doc)."""
        if self._signer is None or how == "none":
            return reply
        body = b"" if reply.status == 304 else reply.body
        lines = [b"nicknym-response-v1", nonce.encode(), target.encode(),
                 str(reply.status).encode(), hashlib.sha256(body).hexdigest().encode()]  # fmt: skip
        if how == "bad":
            lines[3] = b"200"  # a signature over another answer
        signature = base64.b64encode(self._signer.sign(b"\n".join(lines))).decode()
        return Reply(
            reply.status,
            reply.body,
            (*reply.headers, ("Nicknym-Signature", f"ed25519 {signature}")),
        )

    def remove(self, address: str) -> None:
        with self._lock:
            self._keys.pop(address.lower(), None)

    def set_response(
        self,
        *,
        address: str | None = None,
        fingerprint: str | None = None,
        status: int,
        body: bytes | None = None,
        signature: str = "good",
    ) -> None:
        """Force `status` (and optionally a raw body, an unsigned or badly signed answer) for
        one address or fingerprint."""
        if status not in CODES:
            raise ValueError(f"nicknym has no response code {status}")
        with self._lock:
            self._forced[_selector(address, fingerprint)] = Forced(status, body, signature)

    def clear_response(self, *, address: str | None = None, fingerprint: str | None = None) -> None:
        with self._lock:
            self._forced.pop(_selector(address, fingerprint), None)

    # -- observation ------------------------------------------------------------------------

    def requests(self) -> list[NicknymRequest]:
        with self._lock:
            return list(self._requests)

    def accepted_connections(self) -> int:
        with self._lock:
            return self._accepts

    def tls_failures(self) -> int:
        with self._lock:
            return self._tls_failures

    # -- answering (called from server threads) ---------------------------------------------

    def signature_for(self, target: str) -> str:
        """How the answer to target is signed: as forced for its selector, else well."""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
        with self._lock:
            for value in query.get("address", []):
                forced = self._forced.get(("address", value.lower()))
                if forced is not None:
                    return forced.signature
            for value in query.get("fingerprint", []):
                forced = self._forced.get(("fingerprint", value.upper()))
                if forced is not None:
                    return forced.signature
        return "good"

    def _count_accept(self, tls_ok: bool) -> None:
        with self._lock:
            self._accepts += 1
            if not tls_ok:
                self._tls_failures += 1

    def _record(self, request: NicknymRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def answer(self, method: str, target: str, headers: Mapping[str, str]) -> Reply:
        """Decide the reply to one request (pure apart from reading the current state)."""
        if method != "GET":
            return _text(405, "only GET is supported", (("Allow", "GET"),))
        parsed = urllib.parse.urlsplit(target)
        if parsed.path in ("/.well-known/key-discovery", "/provider.json"):
            body = self.provider_files()[parsed.path]
            kind = "application/json" if parsed.path.endswith(".json") else "text/plain"
            return Reply(200, body, (("Content-Type", kind),))
        if parsed.path != "/":
            return _text(404, "not found")
        query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        if (
            sorted(query) not in (["address"], ["fingerprint"])
            or len(next(iter(query.values()))) != 1
        ):
            return _text(400, "exactly one of address= or fingerprint= is required")
        with self._lock:
            keys = dict(self._keys)
            forced = dict(self._forced)
        if "address" in query:
            address = query["address"][0].lower()
            local, _, domain = address.rpartition("@")
            if not local or not domain:
                return _text(400, "malformed address")
            selector = ("address", address)
            key = keys.get(address)
            missing = (
                _text(404, "no such user")
                if domain == self.domain
                else _text(502, "proxy request to the address's provider failed")
            )
        else:
            fingerprint = query["fingerprint"][0].upper()
            if not _FPR.fullmatch(fingerprint):
                return _text(400, "malformed fingerprint")
            selector = ("fingerprint", fingerprint)
            key = next((k for k in keys.values() if k.fingerprint == fingerprint), None)
            missing = _text(404, "no such key")
        if selector in forced:
            return _forced_reply(forced[selector], key)
        if key is None:
            return missing
        since = _http_date(headers.get("if-modified-since"))
        if since is not None and key.published <= since:
            return Reply(304, b"", _last_modified(key))
        return _key_reply(key)


def _selector(address: str | None, fingerprint: str | None) -> tuple[str, str]:
    if (address is None) == (fingerprint is None):
        raise ValueError("give exactly one of address or fingerprint")
    if address is not None:
        return ("address", address.lower())
    return ("fingerprint", str(fingerprint).upper())


def _text(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, (message + "\n").encode(), (("Content-Type", "text/plain"), *headers))


def _key_reply(key: NicknymKey) -> Reply:
    body = {
        "address": key.address,
        "fingerprint": key.fingerprint,
        "openpgp": key.armored,
    }
    return Reply(
        200,
        json.dumps(body).encode(),
        (("Content-Type", "application/json"), *_last_modified(key)),
    )


def _forced_reply(forced: Forced, key: NicknymKey | None) -> Reply:
    if forced.body is not None:
        return Reply(forced.status, forced.body, (("Content-Type", "application/json"),))
    if forced.status == 200:
        return _key_reply(key) if key is not None else Reply(200, b"{}", ())
    if forced.status == 304:
        return Reply(304, b"", _last_modified(key) if key is not None else ())
    return _text(forced.status, f"forced {forced.status}")


def _last_modified(key: NicknymKey) -> tuple[tuple[str, str], ...]:
    return (("Last-Modified", email.utils.formatdate(key.published, usegmt=True)),)


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


class _Handler(BaseHTTPRequestHandler):
    server: TlsHttpServer
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        nicknym: NicknymServer = self.server.owner
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = nicknym.answer(self.command, self.path, headers)
        parsed = urllib.parse.urlsplit(self.path)
        if parsed.path == "/":
            reply = nicknym.sign(
                headers.get("nicknym-nonce", ""), self.path, reply, nicknym.signature_for(self.path)
            )
        nicknym._record(
            NicknymRequest(
                method=self.command,
                path=parsed.path,
                query=urllib.parse.parse_qs(parsed.query, keep_blank_values=True),
                headers=headers,
                status=reply.status,
            )
        )
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.status != 304:
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if reply.status != 304 and self.command != "HEAD":
            self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _serve

    def log_message(self, format: str, *args: object) -> None:
        """Requests are recorded by the server object, not printed."""
