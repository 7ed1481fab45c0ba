"""JSON-RPC 2.0 over a Unix stream socket, one request per line (SPEC section 4).

Rules:
- The socket is mode 0600 in a 0700 directory; a peer of another uid (SO_PEERCRED) is closed
  at once and audited as `socket.refused`, at most one line per peer uid per `REFUSED_EVERY`
  seconds (the next line counts the refusals it stood for).
- A line is at most 1 MiB; a longer one is answered -32600 and the connection closed, with
  no more than the limit ever buffered. Past `SMALL_LINE` bytes a connection needs one of
  `BIG_LINES` slots to go on buffering, so a thousand unfinished 1 MiB lines cost a few MiB,
  not a GiB.
- Any bytes are answered: invalid UTF-8 (lone surrogates as raw bytes included), integers too
  long for `int()`, NaN and Infinity are -32700; nesting deeper than `MAX_DEPTH` and strings
  holding lone surrogates (escaped `\\ud800`) are -32600; -32601 unknown method, -32602 bad
  params; a handler failure, or an answer that cannot be written, is -32603 and never ends the
  server. Requests without an id are notifications and get no answer.
- A connection has `idle_timeout` seconds of total time to deliver each whole request line
  (counted from when the server is ready for it, not per byte), so a slow-loris peer is closed.
- At most `max_connections` are served at once (`connection_cap` keeps fds back for the
  daemon's own files and fetches); a newcomer beyond that evicts the connection that has waited
  longest for its next line, and is told "busy" only when every slot is running a request.
  Each connection is its own task, so one slow or hostile client never delays another.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trio

from refreshd.privacy import private_socket_dir

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "Encoded",
    "Param",
    "RpcError",
    "RpcServer",
    "checked",
    "encode",
]

MAX_LINE = 1 << 20
SMALL_LINE = 64 << 10
BIG_LINES = 16
MAX_DEPTH = 32
FD_RESERVE = 128  # fds kept back from clients for the store, the audit log, Tor and fetches
REFUSED_EVERY = 60.0
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = (
    -32700,
    -32600,
    -32601,
    -32602,
    -32603,
)
ACCEPT_CAPACITY_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_SURROGATE = re.compile("[\ud800-\udfff]")
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
        raise RpcError(INVALID_PARAMS, f"Invalid params: unknown parameter {unknown[0][:80]!r}")
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


@dataclass(slots=True)
class Request:
    id: Any
    method: str
    params: dict[str, Any]
    notification: bool  # no "id" member: no answer is sent


class _Refused(ValueError):
    """A JSON literal this server does not take (NaN, Infinity, an over-long integer)."""


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 64:
        raise _Refused(f"an integer of {len(text)} digits is too long")
    return int(text)


_DECODER = json.JSONDecoder(parse_int=_bounded_int, parse_constant=_no_constant)


def _invalid_structure(msg: Any) -> str | None:
    """Why a parsed message cannot be served (too deep, a lone surrogate), or None.

    Iterative, so a hostile structure cannot exhaust the stack here either. The JSON decoder
    makes exact dicts, lists and strs, so their types are compared, not isinstance'd."""
    if type(msg) is str:
        return _lone_surrogate(msg)
    stack: list[tuple[Any, int]] = [(msg, 1)] if type(msg) is dict or type(msg) is list else []
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        for item in (*value.keys(), *value.values()) if type(value) is dict else value:
            kind = type(item)
            if kind is str:
                if not item.isascii() and _SURROGATE.search(item):
                    return SURROGATE
            elif kind is dict or kind is list:
                stack.append((item, depth + 1))
    return None


SURROGATE = "a string holds a lone surrogate (not Unicode text)"


def _plainly_valid(line: bytes) -> bool:
    """True when the line cannot hold what `_invalid_structure` looks for, from three scans of
    its bytes: ASCII without a \\u escape has no lone surrogate, and nesting deeper than
    MAX_DEPTH needs more opening brackets than that."""
    return (
        line.isascii() and b"\\u" not in line and line.count(b"{") + line.count(b"[") <= MAX_DEPTH
    )


def _lone_surrogate(text: str) -> str | None:
    return SURROGATE if not text.isascii() and _SURROGATE.search(text) else None


# The request almost every client sends, in the key order and spacing of a plain JSON encoder
# (json.dumps with or without separators): a call with a small integer id and one address,
# ASCII with nothing escaped. Such a line decodes to exactly what this match gives, so it
# skips the decoder and the structure checks; any other line takes the general path.
_USUAL = re.compile(
    rb'\{"jsonrpc": ?"2\.0", ?"id": ?(0|[1-9][0-9]{0,15}), ?"method": ?"([a-z_]{1,32})", ?'
    rb'"params": ?\{"address": ?"([ !#-\[\]-~]{0,320})"\}\}'
)


def parse_request(line: bytes) -> Request | dict[str, Any]:
    """The request, or the error response to send."""
    if usual := _USUAL.fullmatch(line):
        method, address = usual[2].decode("ascii"), usual[3].decode("ascii")
        return Request(int(usual[1]), method, {"address": address}, False)
    return _parse_any(line)


def _parse_any(line: bytes) -> Request | dict[str, Any]:
    try:
        msg = _DECODER.decode(line.decode("utf-8"))
    except RecursionError:
        return error(None, INVALID_REQUEST, f"Invalid request: nested deeper than {MAX_DEPTH}")
    except UnicodeDecodeError as exc:
        return error(None, PARSE_ERROR, f"Parse error: not UTF-8 at byte {exc.start}")
    except ValueError as exc:  # JSONDecodeError, _Refused, int() limits
        return error(None, PARSE_ERROR, f"Parse error: {exc}"[:200])
    why = None if _plainly_valid(line) else _invalid_structure(msg)
    if why is not None:
        return error(None, INVALID_REQUEST, f"Invalid request: {why}")
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


def connection_cap(wanted: int, nofile: int | None = None) -> int:
    """How many clients may be open at once: `wanted`, less if the fd limit needs the room."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if nofile is None else nofile
    if limit == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, limit - FD_RESERVE))


@dataclass
class Stats:
    open: int = 0
    served: int = 0
    refused: int = 0
    evicted: int = 0


@dataclass
class _Refusals:
    """Per peer uid: when the last `socket.refused` line was written, and how many since."""

    last: dict[int, float] = field(default_factory=dict)
    unreported: dict[int, int] = field(default_factory=dict)


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
        self.max_connections = connection_cap(max_connections)
        self.uid = os.getuid() if uid is None else uid
        self.peer_uid_of = peer_uid_of
        self.stats = Stats()
        self._refusals = _Refusals()
        self._big_lines = trio.Semaphore(BIG_LINES)
        # connections waiting for their next line, oldest first (so also by when each is due):
        # the ones a newcomer may evict and the late ones `_reap` closes
        self._waiting: dict[int, _Waiting] = {}

    async def handle(self, line: bytes) -> dict[str, Any] | None:
        parsed = parse_request(line)
        if isinstance(parsed, dict):
            return parsed
        req = parsed
        handler = self.methods.get(req.method)
        if handler is None:
            response = error(req.id, METHOD_NOT_FOUND, f"Method not found: {req.method[:80]!r}")
        else:
            try:
                response = {"jsonrpc": "2.0", "id": req.id, "result": await handler(req.params)}
            except RpcError as exc:
                response = error(req.id, exc.code, exc.message, exc.data)
            except OSError as exc:
                response = error(req.id, INTERNAL_ERROR, _os_failure(req.method, exc))
            except Exception as exc:  # a bug in one method must not end the server
                log.exception("rpc.failed", method=req.method)
                response = error(req.id, INTERNAL_ERROR, f"Internal error: {type(exc).__name__}")
        return None if req.notification else response

    async def answer(self, line: bytes) -> bytes | None:
        """The bytes to send for one line; an answer that cannot be encoded is -32603."""
        response = await self.handle(line)
        if response is None:
            return None
        try:
            return _line(response)
        except (TypeError, ValueError) as exc:
            log.error("rpc.unencodable", error=type(exc).__name__)
            return _line(
                error(response.get("id"), INTERNAL_ERROR, "Internal error: unencodable answer")
            )

    async def serve_connection(self, sock: socket.socket) -> None:
        """One client: a peer that vanishes or misbehaves only ends its own connection."""
        try:
            await self._admit_and_converse(sock)
        except (OSError, trio.TooSlowError):  # the peer went, or does not read its answers
            pass
        except Exception:  # never let one connection end the daemon
            log.exception("rpc.connection_failed")
        finally:
            trio.lowlevel.notify_closing(sock)
            sock.close()

    def _refused(self, uid: int) -> None:
        now = trio.current_time()
        r = self._refusals
        self.stats.refused += 1
        last = r.last.get(uid)
        if last is not None and now - last < REFUSED_EVERY:
            r.unreported[uid] = r.unreported.get(uid, 0) + 1
            return
        r.last[uid] = now
        more = r.unreported.pop(uid, 0)
        self.emit(
            "socket.refused",
            peer_uid=uid,
            reason="peer is another user",
            **({"also_refused": more} if more else {}),
        )

    def _make_room(self) -> bool:
        """Evict the connection that has waited longest for its next line; False if none."""
        if not self._waiting:
            return False
        key = next(iter(self._waiting))
        self._waiting.pop(key).scope.cancel()
        self.stats.evicted += 1
        return True

    async def _reap(self) -> None:
        """Close each connection whose next line is `idle_timeout` late, at that moment: one
        task for them all, so a request costs no timer of its own."""
        while True:
            now = trio.current_time()
            while self._waiting:
                key = next(iter(self._waiting))
                if self._waiting[key].due > now:
                    break
                self._waiting.pop(key).scope.cancel()
            first = next(iter(self._waiting.values()), None)
            # a connection that starts waiting meanwhile is due no sooner than idle_timeout on
            await trio.sleep_until(first.due if first else now + self.idle_timeout)

    async def _admit_and_converse(self, sock: socket.socket) -> None:
        try:
            uid = self.peer_uid_of(sock)
        except OSError:
            uid = -1
        if uid != self.uid:
            self._refused(uid)
            return
        if self.stats.open >= self.max_connections and not self._make_room():
            await _send_all(sock, BUSY, 1)
            return
        self.stats.open += 1
        try:
            await self._converse(sock)
        finally:
            self.stats.open -= 1

    async def _converse(self, sock: socket.socket) -> None:
        """Lines in, answers out, under one cancel scope for the whole connection: `_reap`
        cancels it when a line is late, a newcomer when it evicts it; a method runs untimed.
        An answer the peer does not take within `idle_timeout` ends the connection."""
        reader = _LineReader(sock, self._big_lines)
        key = id(reader)
        with trio.CancelScope() as scope:
            try:
                while True:
                    self._waiting[key] = _Waiting(scope, trio.current_time() + self.idle_timeout)
                    try:
                        lines = await reader.lines()
                    finally:
                        self._waiting.pop(key, None)
                    if lines is None:
                        return  # the peer is gone
                    for line in lines:
                        reply = await self.answer(line)
                        self.stats.served += 1
                        if reply is not None:
                            await _send_all(sock, reply, self.idle_timeout)
            except _LineTooLong:
                await _send_all(sock, TOO_LONG, 1)
            finally:
                reader.release()

    async def serve(
        self,
        path: Path | None = None,
        *,
        inherited: socket.socket | None = None,
        task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on `path` (creating its 0700 directory) or on a socket systemd passed."""
        if inherited is not None:
            listener = inherited
            listener.setblocking(False)
        else:
            assert path is not None
            listener = _bind(path)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reap)
                task_status.started(path)
                await self._accept(listener, nursery)
        finally:
            trio.lowlevel.notify_closing(listener)
            listener.close()
            if inherited is None and path is not None:
                _remove(path)

    async def _accept(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        """Accept for ever; out of fds (or memory) is one warning a second, not a traceback."""
        warned = -1.0
        while True:
            await trio.lowlevel.checkpoint()
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(listener)
                continue
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRORS:
                    raise
                if trio.current_time() - warned >= 1 or warned < 0:
                    warned = trio.current_time()
                    log.warning("socket.exhausted", error=errno.errorcode[exc.errno])
                await trio.sleep(0.1)
                continue
            sock.setblocking(False)
            nursery.start_soon(self.serve_connection, sock)


def _os_failure(method: str, exc: OSError) -> str:
    """The answer to a failure of the machine rather than of the request: a full disk is
    named, with what became of the request."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        log.error("rpc.disk_full", method=method, path=exc.filename)
        return (
            f"Internal error: {exc.strerror}. Nothing was half-written; a decision already "
            "committed keeps its audit line and it is written once there is room. Free some "
            "space and retry."
        )
    log.exception("rpc.failed", method=method)
    return f"Internal error: {type(exc).__name__}"


@dataclass(frozen=True, slots=True)
class _Waiting:
    scope: trio.CancelScope  # the connection's
    due: float  # trio time by which its next line must be complete


class _LineTooLong(Exception):
    """A line grew past MAX_LINE: answered -32600 and the connection closed."""


class _LineReader:
    """Splits a stream into lines, buffering at most SMALL_LINE plus one chunk unless it holds
    one of the server's few big-line slots. It reads what the peer has sent in one call and
    hands over every complete line in it at once (a pipelining client costs one read, not one
    per line)."""

    def __init__(self, sock: socket.socket, big_lines: trio.Semaphore) -> None:
        self.sock = sock
        self.big_lines = big_lines
        self.buf = bytearray()
        self.holds_big = False
        self.too_long = False  # a line past MAX_LINE follows the lines already handed over

    async def lines(self) -> list[bytes] | None:
        """The next complete lines (none of them blank), without their newlines; None when
        the peer closed."""
        while True:
            if self.too_long:
                raise _LineTooLong
            if b"\n" in self.buf and (lines := self._split()):
                return lines
            if len(self.buf) > MAX_LINE:
                raise _LineTooLong
            if len(self.buf) >= SMALL_LINE and not self.holds_big:
                await self.big_lines.acquire()
                self.holds_big = True
            # A client waits for its answer before it asks again: wait first, then read,
            # rather than a read that finds nothing. The wait is also the yield to the others.
            await trio.lowlevel.wait_readable(self.sock)
            try:
                chunk = self.sock.recv(65536 if self.holds_big else 16384)
            except BlockingIOError:
                continue
            if not chunk:
                return None
            self.buf += chunk

    def _split(self) -> list[bytes]:
        """Every complete line in the buffer (blank ones dropped), up to one too long."""
        *complete, rest = self.buf.split(b"\n")
        self.buf = bytearray(rest)
        lines = []
        for line in complete:
            if len(line) > MAX_LINE:
                self.too_long = True
                break
            if line.strip():
                lines.append(bytes(line))
        if self.holds_big and len(self.buf) < SMALL_LINE:
            self.release()
        return lines

    def release(self) -> None:
        if self.holds_big:
            self.big_lines.release()
            self.holds_big = False


async def _send_all(sock: socket.socket, data: bytes, patience: float) -> None:
    """Write all of `data`; only a full socket buffer waits, and then the rest of the answer
    has `patience` seconds (TooSlowError: the peer does not read)."""
    view = memoryview(data)
    try:
        sent = sock.send(view)
    except BlockingIOError:
        sent = 0
    if sent < len(view):
        with trio.fail_after(patience):
            view = view[sent:]
            while view:
                await trio.lowlevel.wait_writable(sock)
                try:
                    view = view[sock.send(view) :]
                except BlockingIOError:
                    continue


def _remove(path: Path) -> None:
    """On shutdown the socket file goes, so clients see "not running" rather than a refusal."""
    path.unlink(missing_ok=True)


def _prepare(path: Path) -> None:
    """Make the 0700 directory (or check the one there, privacy.py) and remove a stale
    socket; refuse if one still answers."""
    private_socket_dir(path.parent)
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


def _bind(path: Path) -> socket.socket:
    _prepare(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(4096)  # a burst of clients queues instead of failing to connect
    sock.setblocking(False)
    return sock


def _json(value: Any) -> bytes:
    """One JSON value as the socket sends it; text that is not Unicode (a lone surrogate)
    goes out \\u-escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class Encoded:
    """A method's result already encoded (`encode`): spliced into the answer line as it is,
    so an answer prepared once is not encoded again for every request."""

    json: bytes


def encode(value: Any) -> Encoded:
    return Encoded(_json(value))


def _line(obj: dict[str, Any]) -> bytes:
    """One answer line: the same bytes whether the result was prepared or not."""
    result = obj.get("result")
    if isinstance(result, Encoded):
        id_ = obj["id"]
        head = b"%d" % id_ if type(id_) is int else _json(id_)
        return b'{"jsonrpc":"2.0","id":' + head + b',"result":' + result.json + b"}\n"
    return _json(obj) + b"\n"


TOO_LONG = _line(
    error(None, INVALID_REQUEST, f"Invalid request: line longer than {MAX_LINE} bytes")
)
BUSY = _line(error(None, INTERNAL_ERROR, "Server busy; retry"))
