"""The socket server under bad and hostile input: every case answered or closed, others served."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refreshd.rpc import MAX_LINE, Param, RpcServer, checked, connection_cap, parse_request
from refreshd.rpc import _parse_any as parse_in_general


async def echo(params: dict[str, Any]) -> Any:
    p = checked(params, {"text": Param(str), "n": Param(int, 1)})
    return p["text"] * p["n"]


async def boom(params: dict[str, Any]) -> Any:
    raise ValueError("a bug")


async def odd(params: dict[str, Any]) -> Any:
    return {"surrogate": "a\ud800b"} if params.get("text") else {"obj": object()}


class Gate:
    """A handler that answers only once the test lets it: the slow method without a clock."""

    def __init__(self) -> None:
        self.started, self.release = trio.Event(), trio.Event()

    async def slow(self, params: dict[str, Any]) -> Any:
        self.started.set()
        await self.release.wait()
        return "late"


class Served:
    def __init__(
        self, server: RpcServer, path: Path, events: list[tuple[str, dict]], gate: Gate
    ) -> None:
        self.server, self.path, self.events, self.gate = server, path, events, gate

    async def connect(self) -> trio.SocketStream:
        return await trio.open_unix_socket(str(self.path))

    async def call(self, method: str, params: Any = None, *, stream=None) -> dict:
        own = stream is None
        stream = stream or await self.connect()
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": 7, "method": method}
        if params is not None:
            msg["params"] = params
        await stream.send_all(json.dumps(msg).encode() + b"\n")
        reply = await read_line(stream)
        if own:
            await stream.aclose()
        return reply


async def read_line(stream: trio.SocketStream) -> dict:
    buf = b""
    with trio.fail_after(10):
        while not buf.endswith(b"\n"):
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise EOFError(buf)
            buf += chunk
    return json.loads(buf)


@pytest.fixture
async def served(nursery, tmp_path):
    events: list[tuple[str, dict]] = []
    gate = Gate()
    server = RpcServer(
        {"echo": echo, "boom": boom, "slow": gate.slow, "odd": odd},
        emit=lambda event, **f: events.append((event, f)),
        idle_timeout=1.0,
        max_connections=2000,
    )
    path = tmp_path / "run" / "refreshd" / "socket"
    await nursery.start(server.serve, path)
    return Served(server, path, events, gate)


async def test_modes_and_good_call(served):
    assert stat.S_IMODE(os.stat(served.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(served.path.parent).st_mode) == 0o700
    assert (await served.call("echo", {"text": "ab", "n": 2}))["result"] == "abab"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", -32700),
        (b"\xff\xfe\x00", -32700),
        (b"[1, 2]", -32600),
        (b"[]", -32600),
        (b"42", -32600),
        (b'"str"', -32600),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "echo"}', -32600),
        (b'{"jsonrpc": "2.0", "id": [1], "method": "echo"}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "nope"}', -32601),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": 5}}', -32602),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": "x", "n": true}}',
            -32602,
        ),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"extra": 1, "text": "x"}}',
            -32602,
        ),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": "x"}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "echo"}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "boom"}', -32603),
        (b"[" * 100000, -32600),
        (b"[" * 40 + b"]" * 40, -32600),
        (b"[1" + b"1" * 5000 + b"]", -32700),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": NaN}}', -32700),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "echo\\ud800"}', -32600),
        (b'{"jsonrpc": "2.0", "id": "\\udc00", "method": "echo"}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "\xed\xa0\x80"}', -32700),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": "\\ud800"}}', -32600),
    ],
)
async def test_bad_requests_get_their_error_and_the_connection_goes_on(served, raw, code):
    stream = await served.connect()
    await stream.send_all(raw + b"\n")
    assert (await read_line(stream))["error"]["code"] == code
    assert (await served.call("echo", {"text": "ok"}, stream=stream))["result"] == "ok"
    await stream.aclose()


async def test_notification_gets_no_answer(served):
    stream = await served.connect()
    await stream.send_all(b'{"jsonrpc": "2.0", "method": "echo", "params": {"text": "x"}}\n')
    assert (await served.call("echo", {"text": "y"}, stream=stream))["result"] == "y"
    await stream.aclose()


async def test_two_mib_line_is_refused_without_buffering_it(served):
    stream = await served.connect()
    reply: dict = {}

    async def send():
        # the server closes after refusing; a broken pipe here is the point
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(b"x" * (2 * MAX_LINE))

    async with trio.open_nursery() as n:
        n.start_soon(send)
        reply = await read_line(stream)
    await stream.aclose()
    assert reply["error"]["code"] == -32600 and "longer than" in reply["error"]["message"]
    assert (await served.call("echo", {"text": "still"}))["result"] == "still"


async def test_silent_and_stalled_clients_are_closed_while_others_are_served(served):
    silent = await served.connect()
    stalled = await served.connect()
    await stalled.send_all(b'{"jsonrpc": "2.0", "id": 1, "meth')
    for _ in range(5):
        assert (await served.call("echo", {"text": "z"}))["result"] == "z"
    with trio.fail_after(5):
        assert await silent.receive_some(10) == b""
        assert await stalled.receive_some(10) == b""
    await silent.aclose()
    await stalled.aclose()


async def test_thousand_connections_and_a_good_client(served):
    answers = 0
    hostile: list[trio.SocketStream] = []

    async def good_client():
        nonlocal answers
        stream = await served.connect()
        for _ in range(20):
            assert (await served.call("echo", {"text": "g"}, stream=stream))["result"] == "g"
            answers += 1
            await trio.sleep(0.01)
        await stream.aclose()

    async def open_hostile():
        s = await served.connect()
        hostile.append(s)
        await s.send_all(b'{"jsonrpc"')

    async with trio.open_nursery() as n:
        for _ in range(1000):
            n.start_soon(open_hostile)
        n.start_soon(good_client)
    assert answers == 20
    for s in hostile:
        await s.aclose()


async def test_slow_method_does_not_delay_other_connections(served):
    slow_stream = await served.connect()
    await slow_stream.send_all(b'{"jsonrpc": "2.0", "id": 1, "method": "slow"}\n')
    with trio.fail_after(10):
        await served.gate.started.wait()
    # the slow call answers only after the fast one did: were they served one after the
    # other, the fast call would never get its answer (read_line gives up after 10 s)
    assert (await served.call("echo", {"text": "fast"}))["result"] == "fast"
    served.gate.release.set()
    assert (await read_line(slow_stream))["result"] == "late"
    await slow_stream.aclose()


async def serve_another_uid(nursery, tmp_path) -> tuple[RpcServer, list[tuple[str, dict]], Path]:
    """A socket whose every client looks like another user: the server, the events it emits,
    its path."""
    events: list[tuple[str, dict]] = []
    server = RpcServer(
        {"echo": echo},
        emit=lambda e, **f: events.append((e, f)),
        peer_uid_of=lambda sock: os.getuid() + 1,
    )
    path = tmp_path / "s" / "socket"
    await nursery.start(server.serve, path)
    return server, events, path


async def test_other_uid_is_refused_and_audited(nursery, tmp_path):
    _, events, path = await serve_another_uid(nursery, tmp_path)
    stream = await trio.open_unix_socket(str(path))
    got = b""
    with contextlib.suppress(trio.BrokenResourceError), trio.fail_after(5):  # closed on us
        await stream.send_all(b'{"jsonrpc": "2.0", "id": 1, "method": "echo"}\n')
        got = await stream.receive_some(100)
    await stream.aclose()
    assert got == b""
    assert events == [
        ("socket.refused", {"peer_uid": os.getuid() + 1, "reason": "peer is another user"})
    ]


def test_real_peer_credentials_are_the_callers():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    from refreshd.rpc import peer_uid

    assert peer_uid(a) == os.getuid()
    a.close()
    b.close()


async def _open_to_other_uids(
    nursery: trio.Nursery,
) -> tuple[RpcServer, Path, list[tuple[str, dict]]]:
    """An echo server whose socket file any user can reach, so that another uid is refused by
    its peer credentials rather than by the file's mode; its audit events are collected."""
    events: list[tuple[str, dict]] = []
    server = RpcServer({"echo": echo}, emit=lambda e, **f: events.append((e, f)))
    top = Path(tempfile.mkdtemp(prefix="refreshd-uid-"))
    os.chmod(top, 0o755)
    path = top / "s" / "socket"
    await nursery.start(server.serve, path)
    os.chmod(path.parent, 0o755)
    os.chmod(path, 0o666)
    return server, path, events


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to switch uid")
async def test_subprocess_of_another_uid_is_refused(nursery):
    _server, path, events = await _open_to_other_uids(nursery)
    code = textwrap.dedent("""
        import os, socket, sys
        os.setgid(65534)
        os.setuid(65534)
        s = socket.socket(socket.AF_UNIX)
        s.connect(sys.argv[1])
        got = b""
        try:
            s.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "echo"}\\n')
            got = s.recv(100)
        except OSError:
            pass
        print(repr(got))
    """)
    result = await trio.run_process(
        ["python3", "-c", code, str(path)], capture_stdout=True, check=True
    )
    assert result.stdout.strip() == b"b''"
    assert events and events[0][0] == "socket.refused" and events[0][1]["peer_uid"] == 65534


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_parse_request_never_raises(raw):
    out = parse_request(raw)
    assert isinstance(out, dict) or out.method is not None


def _call_line(id_: Any, method: Any, address: Any, compact: bool, ascii_only: bool) -> bytes:
    call = {"jsonrpc": "2.0", "id": id_, "method": method, "params": {"address": address}}
    separators = (",", ":") if compact else None
    return json.dumps(call, separators=separators, ensure_ascii=ascii_only).encode()


calls = st.builds(
    _call_line,
    st.integers(-3, 10**17) | st.sampled_from([True, None, "7", 1.5]),
    st.sampled_from(["lookup", "status", "Lookup", "own_import"]) | st.text(max_size=40),
    st.sampled_from(["alice@example.org", " Bob@EXAMPLE.org", "", 'q"@x.org', "a\\b@x.org"])
    | st.text(max_size=330),
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(calls, st.data())
def test_the_usual_call_parses_as_the_general_parser_does(line, data):
    """parse_request's shortcut for the usual call gives what the general path gives, for
    calls of every id, method and address, and for the same lines with a byte changed."""
    assert parse_request(line) == parse_in_general(line)
    at = data.draw(st.integers(0, len(line) - 1))
    changed = line[:at] + bytes([data.draw(st.integers(0, 255))]) + line[at + 1 :]
    assert parse_request(changed) == parse_in_general(changed)


NEAR_USUAL = [
    b'{"jsonrpc": "2.0", "id": 007, "method": "lookup", "params": {"address": "a@x.org"}}',
    b'{"jsonrpc": "2.0", "id": -0, "method": "lookup", "params": {"address": "a@x.org"}}',
    b'{"jsonrpc": "2.0", "id": 12345678901234567, "method": "lookup", "params": {"address": ""}}',
    b'{"jsonrpc":  "2.0", "id": 1, "method": "lookup", "params": {"address": "a@x.org"}}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "lookup", "params": {"address": "a@x.org"}} ',
    b'{"jsonrpc": "2.0", "id": 1, "method": "lookup", "params": {"address": "a@x.org"}}\r',
    b'{"jsonrpc": "2.0", "id": 1, "method": "lookup", "params": {"address": "a\tb@x.org"}}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "lookup", "params": {"address": "a\\u00e9@x.org"}}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "lookup", "params": {"address": "\xc3\xa9@x.org"}}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "lookup", "params": {"address": "a@x.org"}}}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "LOOKUP", "params": {"address": "a@x.org"}}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "lookup", "params": {"address": "a@x.org"}, "x": 1}',
    b'{"jsonrpc": "2.0", "id": 1, "id": 2, "method": "lookup", "params": {"address": "a@x.org"}}',
]


@pytest.mark.parametrize("line", NEAR_USUAL)
def test_lines_near_the_usual_call_parse_as_in_general(line):
    assert parse_request(line) == parse_in_general(line)


def test_a_plain_client_call_takes_the_shortcut():
    """What json.dumps makes of a lookup, spaced or compact, skips the decoder (the shortcut
    is no dead code): the decoder is not called for it, and is for anything else."""
    import refreshd.rpc as rpc

    decoded: list[str] = []
    real = rpc._DECODER

    class Counting:
        def decode(self, text: str) -> Any:
            decoded.append(text)
            return real.decode(text)

    rpc._DECODER = Counting()  # type: ignore[assignment]
    try:
        for compact in (False, True):
            line = _call_line(3, "lookup", "alice@example.org", compact, True)
            assert parse_request(line).params == {"address": "alice@example.org"}
        assert decoded == []
        parse_request(_call_line(3, "lookup", "élise@example.org", False, False))
        assert len(decoded) == 1
    finally:
        rpc._DECODER = real


async def test_a_trickling_client_is_closed_on_total_time_not_per_byte(served):
    """Slow-loris: a byte every 0.2 s never idles 1 s, yet the request is late as a whole."""
    stream = await served.connect()
    closed = False

    async def trickle():
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            for byte in b'{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": "x"' * 9:
                await stream.send_all(bytes([byte]))
                await trio.sleep(0.2)

    async with trio.open_nursery() as n:
        n.start_soon(trickle)
        with trio.fail_after(10):
            closed = await stream.receive_some(10) == b""
        n.cancel_scope.cancel()
    await stream.aclose()
    assert closed


async def test_answers_that_cannot_be_encoded_are_internal_errors(served):
    assert (await served.call("odd", {"text": "s"}))["result"] == {"surrogate": "a\ud800b"}
    assert (await served.call("odd", {}))["error"]["code"] == -32603
    assert (await served.call("echo", {"text": "after"}))["result"] == "after"


async def test_a_newcomer_beyond_the_cap_evicts_the_longest_waiting(nursery, tmp_path):
    server = RpcServer({"echo": echo}, emit=lambda e, **f: None, max_connections=3)
    path = tmp_path / "s" / "socket"
    await nursery.start(server.serve, path)
    waiting = [await trio.open_unix_socket(str(path)) for _ in range(3)]
    for s in waiting:
        await s.send_all(b"{")
    await trio.sleep(0.1)
    served = Served(server, path, [], Gate())
    assert (await served.call("echo", {"text": "new"}))["result"] == "new"
    with trio.fail_after(5):
        assert await waiting[0].receive_some(10) == b""  # the oldest went
    assert server.stats.evicted >= 1
    for s in waiting:
        await s.aclose()


async def test_refusals_of_one_uid_are_audited_once_a_minute(nursery, tmp_path):
    server, events, path = await serve_another_uid(nursery, tmp_path)
    for _ in range(50):
        stream = await trio.open_unix_socket(str(path))
        with trio.fail_after(5):
            with contextlib.suppress(trio.BrokenResourceError):
                assert await stream.receive_some(10) == b""
        await stream.aclose()
    assert server.stats.refused == 50
    assert [e for e, _ in events] == ["socket.refused"]


def test_connection_cap_keeps_fds_for_the_daemon():
    assert connection_cap(1024, nofile=1024) < 1024 - 64
    assert connection_cap(1024, nofile=65536) == 1024
    assert connection_cap(1024, nofile=100) >= 1


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to switch uid")
async def test_a_flood_of_another_uids_connections_is_one_audit_line(nursery):
    server, path, events = await _open_to_other_uids(nursery)
    code = textwrap.dedent("""
        import os, socket, sys
        os.setgid(65534)
        os.setuid(65534)
        for _ in range(300):
            s = socket.socket(socket.AF_UNIX)
            s.connect(sys.argv[1])
            try:
                s.recv(1)
            except OSError:
                pass
            s.close()
    """)
    await trio.run_process(["python3", "-c", code, str(path)], check=True)
    assert server.stats.refused == 300
    assert [e for e, _ in events] == ["socket.refused"]
