"""nginx serving WKD trees and static files over HTTPS on loopback, with a parsed access log.

Why: WKD in the wild is static files behind a web server; nginx gives refreshd the real
validators (ETag = mtime+size, Last-Modified, 304 on If-None-Match, `if_modified_since
exact`) and real TLS with the local CA. One server block answers for every test host: the
document root is `www/<host>`, so a host's files are just a directory, no reload needed.

Rules of the layout (draft-koch-openpgp-webkey-service):
- advanced: https://openpgpkey.<domain>/.well-known/openpgpkey/<domain>/hu/<zbase32>
- direct:   https://<domain>/.well-known/openpgpkey/hu/<zbase32>
- <zbase32> = z-base-32 of SHA-1 of the local part, ASCII-lowercased; `?l=<local>` is ignored
  by the server (it is static), a `policy` file sits next to `hu/`.
- Every publish makes the file's mtime strictly newer than before, so ETag and Last-Modified
  change even when two publishes fall in the same second; not publishing keeps them stable.

Counting: `accepted_connections()` reads nginx's stub_status on a separate plain-HTTP port
(minus our own status queries), so TLS failures count too; `access_log()` parses one JSON
line per request with the request headers a client could vary (see `LOGGED_HEADERS`) and
`request_length` (request line + all headers), which exposes any header not in the list.

By peer (`by_peer`): each connecting address gets its own tree, `www/<peer>/<host>`, which
models an attacker on one network path (tests/world/netns.py gives each Tor exit its own
address); `address` and `launcher` put such a server inside a network namespace.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.world import procs
from tests.world.ca import LocalCA

NGINX = "nginx"
START_TIMEOUT = 15.0
METHODS = ("advanced", "direct")
LOGGED_HEADERS = (
    "host",
    "user-agent",
    "accept",
    "accept-encoding",
    "accept-language",
    "accept-charset",
    "connection",
    "if-none-match",
    "if-modified-since",
    "cache-control",
    "pragma",
    "referer",
    "cookie",
    "authorization",
    "origin",
    "from",
    "dnt",
    "te",
    "via",
    "x-forwarded-for",
    "upgrade-insecure-requests",
)
_ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"


def zbase32(data: bytes) -> str:
    """z-base-32 encoding (RFC 6189 alphabet), as WKD uses for the SHA-1 of the local part."""
    bits = int.from_bytes(data, "big")
    n_bits = len(data) * 8
    n_chars = -(-n_bits // 5)
    bits <<= n_chars * 5 - n_bits
    return "".join(_ZBASE32[(bits >> (5 * i)) & 31] for i in reversed(range(n_chars)))


def wkd_hash(local_part: str) -> str:
    """The hu/ file name for a local part: ASCII-lowercased, SHA-1, z-base-32."""
    lowered = "".join(c.lower() if "A" <= c <= "Z" else c for c in local_part)
    return zbase32(hashlib.sha1(lowered.encode("utf-8")).digest())


def split_address(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        raise ValueError(f"not an email address: {address!r}")
    return local, domain.lower()


def wkd_path(address: str, method: str) -> tuple[str, str]:
    """(host, path) of the WKD file for an address under one method."""
    local, domain = split_address(address)
    digest = wkd_hash(local)
    if method == "advanced":
        return f"openpgpkey.{domain}", f"/.well-known/openpgpkey/{domain}/hu/{digest}"
    if method == "direct":
        return domain, f"/.well-known/openpgpkey/hu/{digest}"
    raise ValueError(f"unknown WKD method {method!r}")


@dataclass(frozen=True)
class AccessEntry:
    """One request as nginx logged it; `headers` holds only headers that were sent non-empty."""

    time: float
    peer: str
    connection: int
    connection_requests: int
    server_addr: str
    server_port: int
    sni: str
    host: str
    method: str
    uri: str
    status: int
    request_length: int
    bytes_sent: int
    body_bytes_sent: int
    headers: dict[str, str]


class NginxStartError(RuntimeError):
    """nginx did not come up; the message carries its error log."""


class WkdServer(procs.Service):
    """nginx on 127.0.0.1:<free port> (plus optional extra listen addresses); context manager.

    `extra_listen` adds (address, port) pairs, port 0 meaning the server's own free port, e.g.
    ("127.53.0.9", 443) so that clients going through Tor with MapAddress reach the default
    HTTPS port.
    """

    def __init__(
        self,
        ca: LocalCA,
        hosts: Iterable[str],
        *,
        base_dir: Path | None = None,
        extra_listen: Sequence[tuple[str, int]] = (),
        address: str = "127.0.0.1",
        launcher: Sequence[str] = (),
        by_peer: bool = False,
    ) -> None:
        self.ca = ca
        self.address = address  # the main and the status listener
        self.launcher = tuple(launcher)  # argv prefix, e.g. `ip netns exec <name>`
        self.by_peer = by_peer
        self.hosts = tuple(hosts)
        self.extra_listen = tuple(extra_listen)
        self._parent = base_dir
        self.prefix = Path()
        self.www = Path()
        self.port = 0
        self.status_port = 0
        self._status_queries = 0
        self._proc: procs.Proc | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def _start(self) -> None:
        self.prefix = Path(tempfile.mkdtemp(prefix="refreshd-nginx-", dir=self._parent))
        self.www = self.prefix / "www"
        for sub in ("www", "tmp", "logs"):
            (self.prefix / sub).mkdir()
        for host in self.hosts:
            (self.www / host).mkdir()
        cert = self.ca.issue(self.hosts)
        self.port = procs.free_port()
        self.status_port = procs.free_port()
        conf = self.prefix / "nginx.conf"
        conf.write_text(self._config(cert.cert_chain, cert.key))
        argv = [
            *self.launcher,
            NGINX,
            "-p",
            str(self.prefix),
            "-c",
            str(conf),
            "-e",
            str(self.error_log),
        ]
        self._proc = procs.start("nginx", argv, self.prefix / "logs" / "stdout.log")
        if not procs.wait_for(self._answers, START_TIMEOUT):
            raise NginxStartError("nginx did not answer\n" + self._error_tail())

    def stop(self) -> None:
        if self._proc is not None:
            procs.stop(self._proc)
            self._proc = None
        if self._parent is None and self.prefix != Path():
            shutil.rmtree(self.prefix, ignore_errors=True)

    @property
    def serves_443(self) -> bool:
        """Whether an extra listener is on port 443 (then WKD URLs need no port via Tor)."""
        return any(port == 443 for _address, port in self.extra_listen)

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    @property
    def access_log_path(self) -> Path:
        return self.prefix / "logs" / "access.log"

    def _config(self, cert_chain: Path, key: Path) -> str:
        p = self.prefix
        listens = [(self.address, self.port)]
        listens += [(a, port or self.port) for a, port in self.extra_listen]
        listen_lines = "\n".join(f"        listen {a}:{port} ssl;" for a, port in listens)
        header_fields = ",".join(f'"{h}":"$http_{h.replace("-", "_")}"' for h in LOGGED_HEADERS)
        log_format = (
            '{"time":"$msec","peer":"$remote_addr","connection":"$connection",'
            '"connection_requests":"$connection_requests",'
            '"server_addr":"$server_addr","server_port":"$server_port",'
            '"sni":"$ssl_server_name","host":"$host","method":"$request_method",'
            '"uri":"$request_uri","status":"$status","request_length":"$request_length",'
            '"bytes_sent":"$bytes_sent","body_bytes_sent":"$body_bytes_sent",'
            f'"headers":{{{header_fields}}}}}'
        )
        return f"""
daemon off;
master_process off;
worker_processes 1;
pid {p}/nginx.pid;
error_log {self.error_log} info;
events {{ worker_connections 512; }}
http {{
    types {{ application/json json; text/plain txt; application/pgp-keys asc; }}
    default_type application/octet-stream;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    log_format world escape=json '{log_format}';
    access_log {self.access_log_path} world;
    server_tokens off;
    etag on;
    if_modified_since exact;
    server {{
{listen_lines}
        server_name _;
        ssl_certificate {cert_chain};
        ssl_certificate_key {key};
        root {self.www}/{"$remote_addr/" if self.by_peer else ""}$host;
        location / {{ try_files $uri =404; }}
    }}
    server {{
        listen {self.address}:{self.status_port};
        access_log off;
        location = /status {{ stub_status; }}
    }}
}}
"""

    def _answers(self) -> bool:
        if self._proc is not None and not self._proc.running():
            raise NginxStartError("nginx exited\n" + self._error_tail())
        try:
            self._stub_status()
        except OSError:
            return False
        return True

    def _error_tail(self) -> str:
        try:
            return "\n".join(self.error_log.read_text().splitlines()[-20:])
        except OSError:
            return ""

    # -- content ----------------------------------------------------------------------------

    def url_for(self, host: str, path: str = "/", port: int | None = None) -> str:
        """https URL of `path` on `host` (port: ours unless given, e.g. 443 via Tor)."""
        chosen = self.port if port is None else port
        netloc = host if chosen == 443 else f"{host}:{chosen}"
        return f"https://{netloc}{path}"

    def wkd_url(self, address: str, method: str = "advanced", port: int | None = None) -> str:
        """The URL a WKD client asks for `address` (with the `?l=` local-part parameter)."""
        host, path = wkd_path(address, method)
        local, _domain = split_address(address)
        query = urllib.parse.urlencode({"l": local})
        return self.url_for(host, f"{path}?{query}", port)

    def put_file(self, host: str, path: str, data: bytes, peer: str = "") -> Path:
        """Serve `data` at https://<host>/<path> (to `peer` only, by peer); the mtime always
        moves forward."""
        target = self._file(host, path, peer)
        previous = target.stat().st_mtime if target.exists() else 0.0
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        stamp = max(time.time(), previous + 1.0)
        os.utime(tmp, (stamp, stamp))
        tmp.replace(target)
        return target

    def remove_file(self, host: str, path: str, peer: str = "") -> None:
        self._file(host, path, peer).unlink(missing_ok=True)

    def publish_wkd(
        self, address: str, key: bytes, methods: Sequence[str] = METHODS, peer: str = ""
    ) -> dict[str, str]:
        """Lay out `key` (written verbatim) for `address` (for `peer` only, by peer); return
        {method: URL path}."""
        placed = {}
        for method in methods:
            host, path = wkd_path(address, method)
            policy = path.rsplit("/hu/", 1)[0] + "/policy"
            if not self._file(host, policy, peer).exists():
                self.put_file(host, policy, b"", peer)
            self.put_file(host, path, key, peer)
            placed[method] = path
        return placed

    def remove_wkd(self, address: str, methods: Sequence[str] = METHODS, peer: str = "") -> None:
        for method in methods:
            self.remove_file(*wkd_path(address, method), peer)

    def _file(self, host: str, path: str, peer: str = "") -> Path:
        if host not in self.hosts:
            raise ValueError(f"{host!r} is not served (hosts: {self.hosts})")
        if bool(peer) is not self.by_peer or "/" in peer:
            raise ValueError(f"a peer address is needed exactly when serving by peer: {peer!r}")
        tree = self.www / peer / host if peer else self.www / host
        target = (tree / path.lstrip("/")).resolve()
        if not target.is_relative_to(tree.resolve()):
            raise ValueError(f"path escapes the document root: {path!r}")
        return target

    # -- observation ------------------------------------------------------------------------

    def access_log(self) -> list[AccessEntry]:
        """Every request so far, oldest first."""
        try:
            lines = self.access_log_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [_entry(json.loads(line)) for line in lines if line.strip()]

    def wait_log(self, uri: str, count: int, timeout: float = 10.0) -> list[AccessEntry]:
        """Entries for `uri`, once there are at least `count` (nginx logs after replying)."""
        entries: list[AccessEntry] = []

        def enough() -> bool:
            entries[:] = [e for e in self.access_log() if e.uri == uri]
            return len(entries) >= count

        procs.wait_for(enough, timeout, interval=0.05)
        return entries

    def accepted_connections(self) -> int:
        """TCP connections nginx accepted on the HTTPS listeners since start."""
        accepts, _requests = self._stub_status()
        return accepts - self._status_queries

    def requests_served(self) -> int:
        _accepts, requests = self._stub_status()
        return requests - self._status_queries

    def _stub_status(self) -> tuple[int, int]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{self.address}:{self.status_port}/status", timeout=2) as answer:
            text = answer.read().decode("ascii")
        # This query is itself one accepted connection and one request (counted before reply).
        self._status_queries += 1
        numbers = text.splitlines()[2].split()
        return int(numbers[0]), int(numbers[2])


def _entry(raw: dict[str, object]) -> AccessEntry:
    headers = raw["headers"]
    if not isinstance(headers, dict):
        raise ValueError(f"access log line without headers: {raw!r}")
    return AccessEntry(
        time=float(str(raw["time"])),
        peer=str(raw["peer"]),
        connection=int(str(raw["connection"])),
        connection_requests=int(str(raw["connection_requests"])),
        server_addr=str(raw["server_addr"]),
        server_port=int(str(raw["server_port"])),
        sni=str(raw["sni"]),
        host=str(raw["host"]),
        method=str(raw["method"]),
        uri=str(raw["uri"]),
        status=int(str(raw["status"])),
        request_length=int(str(raw["request_length"])),
        bytes_sent=int(str(raw["bytes_sent"])),
        body_bytes_sent=int(str(raw["body_bytes_sent"])),
        headers={k: str(v) for k, v in headers.items() if v},
    )
