"""Isolated, conditional, bounded HTTP fetches (SPEC sections 6 and 8).

Rules:
- Tor or nothing: unless tor.mode = "off" with allow_clearnet, a fetch goes through Tor's SOCKS
  port with the host name resolved by Tor (socks5h). When Tor is not ready it fails with
  TorUnavailable before any connection is opened, and the dialer of a Tor fetch can reach
  nothing but the SOCKS port.
- One circuit per fetch: each fetch has its own client and connection pool (keep-alive would
  reuse a circuit) and fresh random SOCKS credentials, which Tor's IsolateSOCKSAuth turns into
  a circuit of its own. The redirect hops of one fetch share its circuit.
- Nothing identifying: every request carries the same header set, HEADERS (plus Host, and
  Content-Type/Content-Length on uploads). No cookie is ever stored or sent, no Referer. The
  User-Agent is Tor Browser's, the most common one on Tor exits. Conditional headers only echo
  what the same URL's server sent before.
- TLS is verified against the system store plus network.ca_file.
- Bounded: the whole fetch, redirects included, must end within network.timeout; a body is read
  as a stream and cut off past network.max_response_bytes; only identity encoding is accepted,
  so the cap counts the bytes that arrive.
- Redirects: NONE refuses every redirect; SAME_DOMAIN_HTTPS follows at most MAX_HOPS hops to
  https URLs on the registrable domain of the first URL (public suffix list when the system
  has one, else the last two labels), e.g. example.org -> openpgpkey.example.org.
- Conditional: If-None-Match / If-Modified-Since from the stored validators; a 304 is
  "unchanged" without any body; a body whose SHA-256 equals the stored one is "unchanged" too
  (servers like SKS send no validators).
- Bodies: for Kind.KEY a 2xx body streams to the caller's sink (the packet filter) and is not
  kept; JSON and TEXT bodies are kept for the pure readers; error bodies keep at most
  ERROR_BODY_BYTES.
- Clearnet (tor.mode = "off" and allow_clearnet only): direct connections that honour
  network.connect_to (curl's HOST:PORT:CONNECT_HOST:CONNECT_PORT; TLS and Host still use HOST).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import http.cookiejar
import ipaddress
import secrets
import ssl
import typing
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import httpcore
import httpx
import trio

from refreshd.config import Config, TorMode
from refreshd.errors import FetchFailed, TorUnavailable
from refreshd.net.tor import Endpoint, TorSupervisor

__all__ = [
    "Answer",
    "Fetcher",
    "Kind",
    "Redirects",
    "Request",
    "Validators",
    "registrable_domain",
]

USER_AGENT = "Mozilla/5.0 (Windows NT 10.0; rv:128.0) Gecko/20100101 Firefox/128.0"
HEADERS = (
    ("Accept", "*/*"),
    ("Accept-Encoding", "identity"),
    ("Connection", "close"),
    ("User-Agent", USER_AGENT),
)
MAX_HOPS = 3
ERROR_BODY_BYTES = 16384
REDIRECTS = frozenset({301, 302, 303, 307, 308})
PUBLIC_SUFFIX_LIST = Path("/usr/share/publicsuffix/public_suffix_list.dat")
# The SOCKS proxy's name inside the pool when Tor listens on a Unix socket; the dialer maps it.
_UNIX_PROXY = ("tor-socks.invalid", 9050)


class Kind(enum.Enum):
    """What a request's body is for."""

    KEY = "key"  # keys: a 2xx body streams to the sink, never kept
    JSON = "json"  # kept in Answer.body for a pure reader
    TEXT = "text"  # likewise


class Redirects(enum.Enum):
    """Which redirects a request may follow."""

    NONE = "none"
    SAME_DOMAIN_HTTPS = "same-domain-https"  # https, same registrable domain, MAX_HOPS at most


@dataclass(frozen=True)
class Validators:
    etag: str | None = None
    last_modified: str | None = None
    body_sha256: str | None = None


@dataclass(frozen=True)
class Request:
    url: str
    method: str = "GET"
    body: bytes | None = None
    content_type: str | None = None
    redirects: Redirects = Redirects.NONE
    validators: Validators | None = None
    kind: Kind = Kind.KEY
    headers: tuple[tuple[str, str], ...] = ()  # sent besides the fixed ones (a nonce, say)
    keep_headers: tuple[str, ...] = ()  # response headers the reader needs (lower case)


@dataclass(frozen=True)
class Answer:
    status: int
    url: str  # the final URL, after redirects
    body: bytes  # empty for Kind.KEY (the body went to the sink) and for 304
    validators: Validators
    unchanged: bool  # 304, or the same body hash as before
    body_bytes: int
    wire_bytes: int  # request and response heads plus body, approximately
    seconds: float
    circuit_credentials: str  # the SOCKS username (isolation key); "" without Tor
    headers: tuple[tuple[str, str], ...] = ()  # those of Request.keep_headers that came


# -- pure rules ---------------------------------------------------------------------------


@functools.cache
def _suffix_rules() -> frozenset[str]:
    try:
        text = PUBLIC_SUFFIX_LIST.read_text(encoding="utf-8")
    except OSError:
        return frozenset()
    return frozenset(
        line.split()[0].lower()
        for line in text.splitlines()
        if line.strip() and not line.startswith("//")
    )


def registrable_domain(host: str, rules: frozenset[str] | None = None) -> str:
    """The public suffix plus one label (an IP address is its own domain)."""
    host = host.lower().rstrip(".")
    try:
        ipaddress.ip_address(host.strip("[]"))
        return host
    except ValueError:
        pass
    rules = _suffix_rules() if rules is None else rules
    labels = host.split(".")
    suffix_len = 1
    for i in range(len(labels)):
        name = ".".join(labels[i:])
        wildcard = ".".join(["*", *labels[i + 1 :]])
        if "!" + name in rules:
            suffix_len = len(labels) - i - 1
            break
        if name in rules or (i + 1 < len(labels) and wildcard in rules):
            suffix_len = len(labels) - i
            break
    return ".".join(labels[-(suffix_len + 1) :])


def redirect_target(
    policy: Redirects, first_url: str, current_url: str, location: str | None, hops: int
) -> str:
    """The URL to follow, or FetchFailed saying why the redirect is refused."""
    if policy is not Redirects.SAME_DOMAIN_HTTPS:
        raise FetchFailed("redirect refused (this source allows none)")
    if not location:
        raise FetchFailed("redirect without a Location header")
    if hops >= MAX_HOPS:
        raise FetchFailed(f"more than {MAX_HOPS} redirects")
    try:
        target = httpx.URL(current_url).join(location)
    except httpx.InvalidURL as exc:
        raise FetchFailed(f"redirect to an invalid URL ({exc})") from None
    if target.scheme != "https":
        raise FetchFailed(f"redirect to {target.scheme or 'a relative'} URL refused (https only)")
    first = httpx.URL(first_url).host
    if not target.host or registrable_domain(target.host) != registrable_domain(first):
        raise FetchFailed(f"redirect to another domain refused ({target.host})")
    return str(target)


def conditional_headers(validators: Validators | None) -> list[tuple[str, str]]:
    if validators is None:
        return []
    headers = []
    if validators.etag:
        headers.append(("If-None-Match", validators.etag))
    if validators.last_modified:
        headers.append(("If-Modified-Since", validators.last_modified))
    return headers


def parse_connect_to(entries: typing.Iterable[str]) -> dict[tuple[str, int], Endpoint]:
    """curl --connect-to entries as (host, port) -> where to connect instead."""
    routes = {}
    for entry in entries:
        host, port, connect_host, connect_port = entry.split(":")
        routes[(host.lower(), int(port))] = Endpoint(host=connect_host, port=int(connect_port))
    return routes


def describe_error(exc: BaseException, socks_reached: bool | None) -> str:
    """One sentence for a transport failure, from the exception and its causes.

    `socks_reached` says, for a fetch through Tor, whether its SOCKS port answered at all."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({seen.verify_message})"
        if isinstance(seen, ssl.SSLError):
            return f"TLS handshake failed ({seen.reason or seen})"
        seen = seen.__cause__ or seen.__context__
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.InvalidURL):
        return f"invalid URL ({text})"
    if isinstance(exc, httpcore.ProxyError):
        return f"Tor could not open the connection ({text})"
    if isinstance(exc, httpcore.ConnectError):
        where = "Tor's SOCKS port" if socks_reached is False else "the server"
        return f"could not connect to {where} ({text})"
    if isinstance(exc, httpcore.ProtocolError):
        return f"the server broke the HTTP protocol ({text})"
    return f"connection failed ({text})"


# -- shell --------------------------------------------------------------------------------


class _Dialer(httpcore.AsyncNetworkBackend):
    """Opens the sockets: mapped (host, port) pairs go elsewhere; `only_routes` allows no other."""

    def __init__(self, routes: Mapping[tuple[str, int], Endpoint], only_routes: bool) -> None:
        self._routes = routes
        self._only_routes = only_routes
        self._trio = httpcore.TrioBackend()
        self._opened: list[httpcore.AsyncNetworkStream] = []

    @property
    def connected(self) -> bool:
        """Whether any connection of this fetch was opened."""
        return bool(self._opened)

    async def abort(self) -> None:
        """Close every socket of this fetch (again: closing twice is harmless)."""
        with trio.CancelScope(shield=True):
            for stream in self._opened:
                await stream.aclose()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        route = self._routes.get((host.lower(), port))
        if route is None:
            if self._only_routes:
                raise httpcore.ConnectError(f"refusing a direct connection to {host}:{port}")
            route = Endpoint(host=host, port=port)
        if route.path:
            stream = await self._trio.connect_unix_socket(route.path, timeout)
        else:
            stream = await self._trio.connect_tcp(
                route.host, route.port, timeout, local_address, socket_options
            )
        self._opened.append(stream)
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("refusing a Unix socket the fetcher did not choose")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes]) -> None:
        self._stream = stream

    def __aiter__(self) -> AsyncIterator[bytes]:
        return aiter(self._stream)

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()


class _Transport(httpx.AsyncBaseTransport):
    """httpx on top of an httpcore pool that uses our dialer (httpx cannot pass one down)."""

    def __init__(self, pool: httpcore.AsyncConnectionPool) -> None:
        self._pool = pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        url = httpcore.URL(
            scheme=request.url.raw_scheme,
            host=request.url.raw_host,
            port=request.url.port,
            target=request.url.raw_path,
        )
        core_request = httpcore.Request(
            request.method, url, headers=request.headers.raw, content=request.stream
        )
        response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, typing.AsyncIterable)
        return httpx.Response(
            response.status, headers=response.headers, stream=_Body(response.stream)
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


_TRANSPORT_ERRORS = (
    httpx.HTTPError,
    httpx.InvalidURL,
    httpcore.ProxyError,
    httpcore.NetworkError,
    httpcore.TimeoutException,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
)


def _no_cookies() -> http.cookiejar.CookieJar:
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


class Fetcher:
    """Runs one `Request` at a time per call, each isolated, bounded and conditional."""

    def __init__(self, cfg: Config, tor: TorSupervisor | None) -> None:
        self._cfg = cfg
        self._tor = tor
        if cfg.network.ca_file:  # read now: a wrong path stops the start
            self._ssl.load_verify_locations(cafile=cfg.network.ca_file)
        self._connect_to = parse_connect_to(cfg.network.connect_to)
        self._direct = cfg.tor.mode is TorMode.OFF and cfg.tor.allow_clearnet

    @functools.cached_property
    def _ssl(self) -> ssl.SSLContext:
        """The system's CA store is loaded at the first TLS connection, not at start (tens of
        milliseconds before READY otherwise)."""
        return ssl.create_default_context()

    def _pool(self, username: str, password: str) -> tuple[httpcore.AsyncConnectionPool, _Dialer]:
        """A pool for one fetch: through Tor, or direct when Tor is off by configuration."""
        if self._direct:
            dialer = _Dialer(self._connect_to, only_routes=False)
            pool = httpcore.AsyncConnectionPool(
                ssl_context=self._ssl, max_keepalive_connections=0, network_backend=dialer
            )
            return pool, dialer
        ep = self._tor.socks_endpoint if self._tor is not None and self._tor.ready else None
        if ep is None:
            raise TorUnavailable()
        proxy = _UNIX_PROXY if ep.path else (ep.host, ep.port)
        dialer = _Dialer({proxy: ep}, only_routes=True)
        pool = httpcore.AsyncSOCKSProxy(
            proxy_url=f"socks5h://{proxy[0]}:{proxy[1]}",
            proxy_auth=(username, password),
            ssl_context=self._ssl,
            max_keepalive_connections=0,
            network_backend=dialer,
        )
        return pool, dialer

    async def fetch(self, req: Request, *, sink: Callable[[bytes], None] | None = None) -> Answer:
        if req.kind is Kind.KEY and sink is None:
            raise ValueError("a Request of Kind.KEY needs a sink for its body")
        username = "" if self._direct else secrets.token_hex(16)
        pool, dialer = self._pool(username, secrets.token_hex(16))
        timeout = self._cfg.network.timeout
        started = trio.current_time()
        with trio.move_on_after(timeout) as scope:
            try:
                answer = await self._exchange(req, pool, dialer, sink)
            except _TRANSPORT_ERRORS as exc:
                reached = dialer.connected if username else None
                raise FetchFailed(describe_error(exc, reached)) from exc
            finally:
                await dialer.abort()  # httpcore leaves the socket open when SOCKS fails
        if scope.cancelled_caught:
            raise FetchFailed(f"timed out after {timeout} s")
        return replace(answer, seconds=trio.current_time() - started, circuit_credentials=username)

    async def _exchange(
        self,
        req: Request,
        pool: httpcore.AsyncConnectionPool,
        dialer: _Dialer,
        sink: Callable[[bytes], None] | None,
    ) -> Answer:
        url = req.url
        transport = _Transport(pool)
        async with httpx.AsyncClient(
            transport=transport,
            trust_env=False,
            follow_redirects=False,
            cookies=_no_cookies(),
            headers=dict(HEADERS),
            timeout=None,
        ) as client:
            wire = 0
            hops = 0
            while True:
                if httpx.URL(url).scheme not in ("http", "https"):
                    raise FetchFailed(f"not an http(s) URL: {url}")
                headers = conditional_headers(req.validators)
                if req.content_type:
                    headers.append(("Content-Type", req.content_type))
                headers.extend(req.headers)
                request = client.build_request(req.method, url, content=req.body, headers=headers)
                wire += _head_size(request.headers.raw) + len(req.body or b"")
                response = await client.send(request, stream=True)
                try:
                    wire += _head_size(response.headers.raw)
                    if response.status_code in REDIRECTS:
                        location = response.headers.get("location")
                        url = redirect_target(req.redirects, req.url, url, location, hops)
                        hops += 1
                        continue
                    return await self._read(req, url, response, dialer, sink, wire)
                finally:
                    await response.aclose()

    async def _read(
        self,
        req: Request,
        url: str,
        response: httpx.Response,
        dialer: _Dialer,
        sink: Callable[[bytes], None] | None,
        wire: int,
    ) -> Answer:
        previous = req.validators or Validators()
        kept_headers = tuple(
            (name, value) for name in req.keep_headers if (value := response.headers.get(name))
        )
        etag = response.headers.get("etag")
        last_modified = response.headers.get("last-modified")
        if response.status_code == 304:
            validators = Validators(
                etag or previous.etag, last_modified or previous.last_modified, previous.body_sha256
            )
            return Answer(304, url, b"", validators, True, 0, wire, 0.0, "", kept_headers)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding != "identity":
            raise FetchFailed(
                f"response uses the content encoding {encoding!r}, which was not asked for"
            )
        success = 200 <= response.status_code < 300
        streaming = success and req.kind is Kind.KEY
        cap = self._cfg.network.max_response_bytes if success else ERROR_BODY_BYTES
        digest = hashlib.sha256()
        kept = bytearray()
        size = 0
        chunks = response.aiter_raw()
        finished = False
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > cap:
                    if success:
                        raise FetchFailed(f"response larger than {cap} bytes")
                    kept += chunk[: cap - len(kept)]
                    break
                digest.update(chunk)
                if streaming:
                    assert sink is not None
                    sink(chunk)
                else:
                    kept += chunk
            else:
                finished = True
        finally:
            if not finished:
                await _stop(chunks, dialer)
        body_sha256 = digest.hexdigest()
        unchanged = success and body_sha256 == previous.body_sha256
        validators = Validators(etag, last_modified, body_sha256 if success else None)
        return Answer(
            response.status_code,
            url,
            bytes(kept),
            validators,
            unchanged,
            size,
            wire + size,
            0.0,
            "",
            kept_headers,
        )


async def _stop(chunks: AsyncIterator[bytes], dialer: _Dialer) -> None:
    """End a body read early without leaving httpx's and httpcore's generators suspended (trio
    warns about those): close the sockets, then drain until the read fails at the bottom."""
    await dialer.abort()
    with contextlib.suppress(*_TRANSPORT_ERRORS):
        async for _ in chunks:
            pass


def _head_size(headers: list[tuple[bytes, bytes]]) -> int:
    """Bytes of an HTTP/1.1 head: a start line of about 40 bytes and `name: value\\r\\n` lines."""
    return 40 + sum(len(name) + len(value) + 4 for name, value in headers)
