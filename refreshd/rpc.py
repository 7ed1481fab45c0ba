"""JSON-RPC 2.0 over a Unix stream socket, one request per line (SPEC section 4).

Rules:
- The socket is mode 0600 in a 0700 directory; a peer of another uid (SO_PEERCRED) is closed
  at once and audited as `socket.refused`.
- A line is at most 1 MiB; a longer one is answered -32600 and the connection closed, with
  no more than the limit ever buffered.
- Errors: -32700 parse error, -32600 invalid request (not an object, batches included),
  -32601 unknown method, -32602 bad params; a handler failure is -32603 and never ends the
  server. Requests without an id are notifications and get no answer.
- A connection idle (or stalled mid-line) longer than `idle_timeout` is closed; at most
  `max_connections` are served at once, beyond that a connection is told "busy" and closed.
  Each connection is its own task, so one slow or hostile client never delays another.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio

__all__ = ["INTERNAL_ERROR", "INVALID_PARAMS", "Param", "RpcError", "RpcServer", "checked"]

MAX_LINE = 1 << 20
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700,
    -32600,
    -32601,
    -32602,
    -32603,
)
log = structlog.get_logger("refreshd.rpc")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
REQUIRED = object()


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


@dataclass(frozen=True)
class Param:
    kind: type | tuple[type, ...]
    default: Any = REQUIRED
    choices: tuple[Any, ...] = ()


def checked(params: dict[str, Any], spec: dict[str, Param]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise RpcError(INVALID_PARAMS, f"Invalid params: unknown parameter {unknown[0]!r}")
    out: dict[str, Any] = {}
    for name, p in spec.items():
        if name not in params:
            if p.default is REQUIRED:
                raise RpcError(INVALID_PARAMS, f"Invalid params: {name!r} is required")
            out[name] = p.default
            continue
        value = params[name]
        bad_bool = isinstance(value, bool) and bool not in _kinds(p.kind)
        if not isinstance(value, p.kind) or bad_bool:
            raise RpcError(INVALID_PARAMS, f"Invalid params: {name!r} has the wrong type")
        if p.choices and value not in p.choices:
            raise RpcError(
                INVALID_PARAMS, f"Invalid params: {name!r} must be one of {', '.join(p.choices)}"
            )
        out[name] = value
    return out


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def error(id_: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": id_, "error": err}


@dataclass(frozen=True)
class Request:
    id: Any
    method: str
    params: dict[str, Any]
    notification: bool  # no "id" member: no answer is sent


def parse_request(line: bytes) -> Request | dict[str, Any]:
    """The request, or the error response to send."""
    try:
        msg = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        return error(None, PARSE_ERROR, f"Parse error: {exc}")
    if not isinstance(msg, dict):
        return error(None, INVALID_REQUEST, "Invalid request: expected one JSON object per line")
    id_ = msg.get("id")
    if not isinstance(id_, str | int | type(None)) or isinstance(id_, bool):
        return error(None, INVALID_REQUEST, "Invalid request: id must be a string or number")
    if msg.get("jsonrpc") != "2.0" or not isinstance(msg.get("method"), str):
        return error(id_, INVALID_REQUEST, 'Invalid request: needs "jsonrpc": "2.0" and a method')
    params = msg.get("params", {})
    if isinstance(params, list) and not params:
        params = {}
    if not isinstance(params, dict):
        return error(id_, INVALID_PARAMS, "Invalid params: params must be an object")
    return Request(id_, msg["method"], params, "id" not in msg)


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


@dataclass
class Stats:
    open: int = 0
    served: int = 0
    refused: int = 0


class RpcServer:
    def __init__(
        self,
        methods: Mapping[str, Handler],
        *,
        emit: Callable[..., object],
        idle_timeout: float = 30.0,
        max_connections: int = 1024,
        uid: int | None = None,
        peer_uid_of: Callable[[socket.socket], int] = peer_uid,
    ) -> None:
        self.methods = methods
        self.emit = emit
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.uid = os.getuid() if uid is None else uid
        self.peer_uid_of = peer_uid_of
        self.stats = Stats()

    async def handle(self, line: bytes) -> dict[str, Any] | None:
        parsed = parse_request(line)
        if isinstance(parsed, dict):
            return parsed
        req = parsed
        handler = self.methods.get(req.method)
        if handler is None:
            response = error(req.id, METHOD_NOT_FOUND, f"Method not found: {req.method}")
        else:
            try:
                response = {"jsonrpc": "2.0", "id": req.id, "result": await handler(req.params)}
            except RpcError as exc:
                response = error(req.id, exc.code, exc.message, exc.data)
            except Exception as exc:  # a bug in one method must not end the server
                log.exception("rpc.failed", method=req.method)
                response = error(req.id, INTERNAL_ERROR, f"Internal error: {type(exc).__name__}")
        return None if req.notification else response

    async def serve_connection(self, stream: trio.SocketStream) -> None:
        """One client: a peer that vanishes or misbehaves only ends its own connection."""
        try:
            await self._admit_and_converse(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
            pass
        finally:
            await stream.aclose()

    async def _admit_and_converse(self, stream: trio.SocketStream) -> None:
        try:
            uid = self.peer_uid_of(stream.socket)  # type: ignore[arg-type]
        except OSError:
            uid = -1
        if uid != self.uid:
            self.stats.refused += 1
            self.emit("socket.refused", peer_uid=uid, reason="peer is another user")
            return
        if self.stats.open >= self.max_connections:
            with trio.move_on_after(1):
                await stream.send_all(_line(error(None, INTERNAL_ERROR, "Server busy; retry")))
            return
        self.stats.open += 1
        try:
            await self._converse(stream)
        finally:
            self.stats.open -= 1

    async def _converse(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        while True:
            newline = buf.find(b"\n")
            if newline < 0:
                if len(buf) > MAX_LINE:
                    await stream.send_all(TOO_LONG)
                    return
                with trio.move_on_after(self.idle_timeout) as idle:
                    chunk = await stream.receive_some(65536)
                if idle.cancelled_caught or not chunk:
                    return
                buf += chunk
                continue
            line = bytes(buf[:newline])
            del buf[: newline + 1]
            if len(line) > MAX_LINE:
                await stream.send_all(TOO_LONG)
                return
            if not line.strip():
                continue
            response = await self.handle(line)
            self.stats.served += 1
            if response is not None:
                with trio.fail_after(self.idle_timeout):
                    await stream.send_all(_line(response))

    async def serve(
        self,
        path: Path | None = None,
        *,
        inherited: socket.socket | None = None,
        task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on `path` (creating its 0700 directory) or on a socket systemd passed."""
        if inherited is not None:
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(inherited))
        else:
            assert path is not None
            listener = await _bind(path)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(path)
                await trio.serve_listeners(
                    self.serve_connection, [listener], handler_nursery=nursery
                )
        finally:
            if inherited is None and path is not None:
                _remove(path)


def _remove(path: Path) -> None:
    """On shutdown the socket file goes, so clients see "not running" rather than a refusal."""
    path.unlink(missing_ok=True)


def _prepare(path: Path) -> None:
    """Make the 0700 directory and remove a stale socket; refuse if one still answers."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale socket from a previous run
        else:
            raise RuntimeError(f"{path}: another refreshd is already serving this socket")
        finally:
            probe.close()


async def _bind(path: Path) -> trio.SocketListener:
    _prepare(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(4096)  # a burst of clients queues instead of failing to connect
    return trio.SocketListener(sock)


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


TOO_LONG = _line(
    error(None, INVALID_REQUEST, f"Invalid request: line longer than {MAX_LINE} bytes")
)
