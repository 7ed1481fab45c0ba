"""Small loopback servers for the fetch tests: HTTP(S) with scripted behaviour, SOCKS5, Tor control.

Each server runs in the test's nursery, counts accepted connections, and records what clients
sent (raw request heads, SOCKS credentials and target names, control commands).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import trio
import trustme

from refreshd.net.tor import TorSupervisor


@dataclass
class Captured:
    head: bytes  # request line and headers, exactly as received
    body: bytes

    @property
    def method(self) -> str:
        return self.head.split(b" ", 1)[0].decode()

    @property
    def target(self) -> str:
        return self.head.split(b" ", 2)[1].decode()

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode()
        return None


Handler = Callable[[Captured, trio.abc.Stream], Awaitable[None]]


def response(status: int, body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} X", *(f"{k}: {v}" for k, v in headers)]
    if not any(k.lower() == "content-length" for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def static(status: int, body: bytes = b"", *headers: tuple[str, str]) -> Handler:
    async def handle(_req: Captured, stream: trio.abc.Stream) -> None:
        await stream.send_all(response(status, body, headers))

    return handle


def trickle(body: bytes, interval: float = 1.0) -> Handler:
    """Announces the whole body, then sends one byte per `interval`."""

    async def handle(_req: Captured, stream: trio.abc.Stream) -> None:
        await stream.send_all(response(200, b"", (("Content-Length", str(len(body))),)))
        for i in range(len(body)):
            await stream.send_all(body[i : i + 1])
            await trio.sleep(interval)

    return handle


async def endless(_req: Captured, stream: trio.abc.Stream) -> None:
    """A chunked body that never ends."""
    await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"A" * 4096
    while True:
        await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))


def redirect(location: str, status: int = 302) -> Handler:
    return static(status, b"", ("Location", location))


def conditional(body: bytes, etag: str, last_modified: str) -> Handler:
    """Like nginx: validators on every answer, 304 when If-None-Match matches."""

    async def handle(req: Captured, stream: trio.abc.Stream) -> None:
        validators = (("ETag", etag), ("Last-Modified", last_modified))
        if req.header("If-None-Match") == etag:
            await stream.send_all(response(304, b"", validators))
        else:
            await stream.send_all(response(200, body, validators))

    return handle


async def _read_head(stream: trio.abc.Stream, limit: int = 65536) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk or len(data) > limit:
            raise trio.BrokenResourceError("connection closed before the end of the head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


@dataclass
class HttpServer:
    """An HTTP/1.1 server on 127.0.0.1 that hands each request to `handler` (by path prefix)."""

    handlers: dict[str, Handler]
    tls: ssl.SSLContext | None = None
    port: int = 0
    accepts: int = 0
    requests: list[Captured] = field(default_factory=list)

    async def start(self, nursery: trio.Nursery) -> HttpServer:
        listeners = await nursery.start(partial(trio.serve_tcp, self._serve, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def _serve(self, stream: trio.abc.Stream) -> None:
        self.accepts += 1
        if self.tls is not None:
            stream = trio.SSLStream(stream, self.tls, server_side=True)
        try:
            async with stream:
                await self._respond(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _respond(self, stream: trio.abc.Stream) -> None:
        head, rest = await _read_head(stream)
        req = Captured(head, rest)
        length = int(req.header("Content-Length") or 0)
        while len(req.body) < length:
            req.body += await stream.receive_some(length - len(req.body))
        self.requests.append(req)
        path = req.target.split("?", 1)[0]
        prefix = max((p for p in self.handlers if path.startswith(p)), key=len, default=None)
        handler = self.handlers[prefix] if prefix is not None else static(404)
        await handler(req, stream)


@dataclass
class SocksGrant:
    username: str
    password: str
    atyp: int
    host: str
    port: int


@dataclass
class Socks5Server:
    """A SOCKS5 proxy (RFC 1928 with RFC 1929 auth) that maps every name to 127.0.0.1, the way
    Tor's MapAddress does, and records the credentials and target of each connection."""

    ports: dict[int, int]  # requested port -> local port
    port: int = 0
    grants: list[SocksGrant] = field(default_factory=list)

    async def start(self, nursery: trio.Nursery, unix_path: str = "") -> Socks5Server:
        """Listen on 127.0.0.1, or on a Unix socket at `unix_path` (as a launched Tor does)."""
        if unix_path:
            sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
            await sock.bind(unix_path)
            sock.listen()
            await nursery.start(trio.serve_listeners, self._serve, [trio.SocketListener(sock)])
            return self
        listeners = await nursery.start(partial(trio.serve_tcp, self._serve, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def _serve(self, client: trio.SocketStream) -> None:
        async with client:
            await self._relay(client)

    async def _relay(self, client: trio.SocketStream) -> None:
        buf = bytearray()

        async def take(n: int) -> bytes:
            while len(buf) < n:
                chunk = await client.receive_some(4096)
                if not chunk:
                    raise trio.BrokenResourceError
                buf.extend(chunk)
            out = bytes(buf[:n])
            del buf[:n]
            return out

        try:
            _ver, nmethods = await take(2)
            methods = await take(nmethods)
            if 2 not in methods:
                await client.send_all(b"\x05\xff")
                return
            await client.send_all(b"\x05\x02")
            _authver, ulen = await take(2)
            username = (await take(ulen)).decode()
            (plen,) = await take(1)
            password = (await take(plen)).decode()
            await client.send_all(b"\x01\x00")
            _ver, _cmd, _rsv, atyp = await take(4)
            if atyp == 3:
                (nlen,) = await take(1)
                host = (await take(nlen)).decode()
            else:
                host = ".".join(str(b) for b in await take(4 if atyp == 1 else 16))
            port = int.from_bytes(await take(2), "big")
            self.grants.append(SocksGrant(username, password, atyp, host, port))
            if port not in self.ports:
                await client.send_all(b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")
                return
            upstream = await trio.open_tcp_stream("127.0.0.1", self.ports[port])
            await client.send_all(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00")
            async with upstream, trio.open_nursery() as nursery:
                if buf:
                    await upstream.send_all(bytes(buf))
                nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
                nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def _pump(src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope) -> None:
    try:
        while chunk := await src.receive_some(65536):
            await dst.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()


@dataclass
class FakeControlPort:
    """Enough of Tor's control protocol for stem: no authentication, GETINFO of the bootstrap
    phase and circuit status (changeable by the test), SETEVENTS accepted."""

    bootstrap: str = 'NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"'
    circuit: str = "1"
    port: int = 0
    accepts: int = 0
    commands: list[str] = field(default_factory=list)
    _scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    async def start(self, nursery: trio.Nursery) -> FakeControlPort:
        """Listen (again, on the same port after `stop`)."""
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self._scope = trio.CancelScope()
        nursery.start_soon(self._run, listeners)
        return self

    async def _run(self, listeners: list[trio.SocketListener]) -> None:
        try:
            with self._scope:
                await trio.serve_listeners(self._serve, listeners)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    def stop(self) -> None:
        """Close the port and every control connection, as when tor exits."""
        self._scope.cancel()

    def _answer(self, line: str) -> bytes:
        verb, _, args = line.partition(" ")
        verb = verb.upper()
        if verb == "PROTOCOLINFO":
            return (
                b"250-PROTOCOLINFO 1\r\n250-AUTH METHODS=NULL\r\n"
                b'250-VERSION Tor="0.4.9.11"\r\n250 OK\r\n'
            )
        if verb in ("AUTHENTICATE", "SETEVENTS"):
            return b"250 OK\r\n"
        if verb == "GETINFO":
            values = {
                "status/bootstrap-phase": self.bootstrap,
                "status/circuit-established": self.circuit,
                "version": "0.4.9.11",
            }
            out = b""
            for key in args.split():
                if key not in values:
                    return f'552 Unrecognized key "{key}"\r\n'.encode()
                out += f"250-{key}={values[key]}\r\n".encode()
            return out + b"250 OK\r\n"
        if verb == "GETCONF":
            return "".join(f"250 {k}\r\n" for k in args.split()).encode() or b"250 OK\r\n"
        return b'510 Unrecognized command "' + verb.encode() + b'"\r\n'

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.accepts += 1
        try:
            async with stream:
                await self._converse(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _converse(self, stream: trio.SocketStream) -> None:
        buf = b""
        while True:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            buf += chunk
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                self.commands.append(line.decode())
                await stream.send_all(self._answer(line.decode()))


@dataclass
class Tls:
    """A local CA (trustme) and server contexts for names it certifies."""

    ca_file: str
    server: ssl.SSLContext


def make_tls(directory: str, *names: str) -> Tls:
    ca = trustme.CA()
    path = f"{directory}/ca-{id(ca)}.pem"
    ca.cert_pem.write_to_path(path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(server)
    return Tls(path, server)


async def tor_ready(tor: TorSupervisor, seconds: float) -> bool:
    """True once the supervisor says Tor is ready, False if it was not within `seconds`."""
    with trio.move_on_after(seconds):
        while not tor.ready:
            await tor.changed()
    return tor.ready
