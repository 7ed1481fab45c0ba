"""The local keyserver door (SPEC 11): HKP and VKS on loopback TCP for unmodified clients.

gpg's dirmngr, sq and Thunderbird speak to keyservers only over TCP, so this cannot be a Unix
socket with SO_PEERCRED; the peer's user is read from the kernel's socket table instead
(core/tcptable.py) before a byte of the request is read, and other users are refused. The
answers are core/door.py's; this shell reads one request with h11 (bounded size and time),
asks the key manager or, for an address never seen, the same discovery as `lookup` with
`discover` (bounded by the clients' patience), and writes one response per connection.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import h11
import structlog
import trio

from refreshd.core import door, tcptable
from refreshd.core.rules import LookupState
from refreshd.errors import KeyRejected
from refreshd.keymanager import KeyManager
from refreshd.openpgp.keyview import read_key
from refreshd.openpgp.packets import armor

__all__ = ["TABLES", "KeyserverDoor"]

_log = structlog.get_logger("refreshd.door")

# How long an address never seen may be discovered before the client gets the 404 that says
# it is being looked up. Measured against a keyserver that accepts and never answers: gpg
# 2.2.40 (--recv-keys and --locate-external-keys, dirmngr defaults) and sq 0.27 were still
# waiting after 400 s, so the clients set no bound; the bound is the person at the keyboard.
# First contact over Tor takes a few seconds per source (bench case 8).
PATIENCE = 25.0
REQUEST_TIMEOUT = 10.0  # to send the whole request head; a slow client only ends itself
MAX_REQUEST = 16384  # request line and headers
MAX_BODY = 65536  # a lookup has no body; an upload is refused without reading more
LINGER = 2.0  # seconds to drain what a client still sends after its answer
TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
MAX_CONNECTIONS = 256

Lookup = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def listen_address(text: str) -> tuple[str, int]:
    """`127.0.0.1:11371` or `[::1]:11371` (config.py checked the form)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def peer_owner(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The client's uid from the kernel's tables (a blocking read: run it in a thread)."""
    for table in TABLES:
        try:
            found = tcptable.owner(table.read_text(), client, server)
        except OSError:
            continue
        if found is not None:
            return found
    return None


async def _linger(stream: trio.SocketStream) -> None:
    """Close gently: say we are done, then read and drop what the client still sends (the
    rest of a refused upload, bytes after a malformed head) for a moment, so the kernel does
    not answer them with a reset that could destroy the response before the client reads it."""
    await stream.send_eof()
    drained = 0
    with trio.move_on_after(LINGER):
        while drained < MAX_BODY * 16 and (chunk := await stream.receive_some(65536)):
            drained += len(chunk)


class KeyserverDoor:
    def __init__(
        self,
        keys: KeyManager,
        lookup: Lookup,
        *,
        emit: Callable[..., object],
        clock: Callable[[], datetime],
        patience: float = PATIENCE,
        uid: int | None = None,
        owner_of: Callable[[tuple[str, int], tuple[str, int]], int | None] = peer_owner,
    ) -> None:
        self.keys = keys
        self.lookup = lookup
        self.emit = emit
        self.clock = clock
        self.patience = patience
        self.uid = os.getuid() if uid is None else uid
        self.owner_of = owner_of
        self.refusals = door.RefusalLog()
        self.open = 0

    async def bind(self, listen: str) -> list[trio.SocketListener]:
        """Listen on `listen` (OSError if it cannot be had: in use, not local)."""
        host, port = listen_address(listen)
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.emit("door.listening", address=f"{host}:{listeners[0].socket.getsockname()[1]}")
        return listeners

    async def serve(
        self,
        listen: str | list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer on `listen` (an address, or listeners from `bind`); started with the port."""
        listeners = await self.bind(listen) if isinstance(listen, str) else listen
        async with trio.open_nursery() as nursery:
            task_status.started(listeners[0].socket.getsockname()[1])
            await trio.serve_listeners(self.serve_connection, listeners, handler_nursery=nursery)

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        try:
            if await self._admitted(stream):
                self.open += 1
                try:
                    await self._converse(stream)
                finally:
                    self.open -= 1
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
            pass
        finally:
            await stream.aclose()

    async def _admitted(self, stream: trio.SocketStream) -> bool:
        sock = stream.socket
        client, server = sock.getpeername()[:2], sock.getsockname()[:2]
        uid = await trio.to_thread.run_sync(self.owner_of, client, server)
        if uid == self.uid and self.open < MAX_CONNECTIONS:
            return True
        count = self.refusals.refused(time.monotonic())
        if count is not None:
            self.emit(
                "socket.refused",
                door="keyserver",
                peer_uid=-1 if uid is None else uid,
                refused=count,
                reason="peer is another user" if uid != self.uid else "too many connections",
            )
        return False

    async def _converse(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                request = await self._request(conn, stream)
        except h11.RemoteProtocolError:
            await self._send(conn, stream, door.text(400, "Not an HTTP request."), head=False)
            return
        if request is None:
            return
        method, target = (
            request.method.decode("ascii", "replace"),
            request.target.decode("ascii", "replace"),
        )
        try:
            answer = await self.answer(method, target)
        except Exception:  # a bug behind one request must not end the door or the daemon
            _log.exception("door.failed", target=target[:200])
            answer = door.text(500, "refreshd could not answer this lookup; see its journal.")
        await self._send(conn, stream, answer, head=method == "HEAD")

    async def _request(self, conn: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
        request: h11.Request | None = None
        body = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data and request is None:
                    return None
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += len(event.data)
                if body > MAX_BODY:
                    return request  # an upload: refused by its path, the rest is not read
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return request

    async def _send(
        self, conn: h11.Connection, stream: trio.SocketStream, r: door.Response, *, head: bool
    ) -> None:
        headers = [
            ("Content-Type", r.content_type),
            ("Content-Length", str(len(r.body))),
            ("Connection", "close"),
            ("Cache-Control", "no-store"),
        ]
        try:
            out = conn.send(h11.Response(status_code=r.status, headers=headers))
            if not head:
                out += conn.send(h11.Data(data=r.body))
            out += conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return
        with trio.fail_after(REQUEST_TIMEOUT):
            await stream.send_all(out)
        await _linger(stream)

    async def answer(self, method: str, target: str) -> door.Response:
        """The response to one request (kept apart from the wire for tests and the bench)."""
        query = door.route(method, target)
        if isinstance(query, door.Response):
            return query
        data = await self._key_bytes(query)
        if isinstance(data, door.Response):
            return data
        if query.op is door.Op.GET:
            return door.key(armor(data))
        now = self.clock()
        try:
            view = await trio.to_thread.run_sync(read_key, data, now)
        except KeyRejected as exc:
            return door.text(500, f"The stored key cannot be listed: {exc.reason}")
        return door.index(view, now, machine_readable=query.machine_readable)

    async def _key_bytes(self, query: door.Query) -> bytes | door.Response:
        store = self.keys.store
        if query.by is door.By.FINGERPRINT:
            data = store.get_key(query.value) if store.served_status(query.value) else None
            if data is None:
                return door.text(404, f"refreshd holds no registered or retired key {query.value}.")
            return data
        result = await self.lookup({"address": query.value, "wait": self.patience})
        fingerprint = result.get("fingerprint")
        if result.get("state") is not LookupState.REGISTERED or not fingerprint:
            return door.refused_because(result["state"], query.value, result["reason"])
        if not result.get("usable"):
            return door.text(404, f"The key registered for {query.value} is not usable.")
        data = store.get_key(fingerprint)
        assert data is not None  # a registration always has its key
        return data
