"""A real `refreshd run` under hostile socket input: every line is answered (or, when it is a
notification, ignored), and the daemon keeps serving: no line may end it."""

from __future__ import annotations

import contextlib
import json
import random
import resource
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_proc import Daemon, write_config

BOB = "bob@example.org"


def error_code(daemon: Daemon, line: bytes) -> int:
    reply = daemon.raw(line + b"\n")
    return reply["error"]["code"]


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"[" + b"1" * 5000 + b"]", -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"status","params":{"x":' + b"9" * 4400 + b"}}", -32700),
        (b'{"jsonrpc":"2.0","id":' + b"1" * 5000 + b',"method":"status"}', -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"st\\ud800atus"}', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"st\xed\xa0\x80atus"}', -32700),
        (b'{"jsonrpc":"2.0","id":"\\ud800","method":"status"}', -32600),
        (b'{"jsonrpc":"2.0","id":"\xed\xa0\x80","method":"status"}', -32700),
        (b"[" * 50 + b"]" * 50, -32600),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"status","params":'
            + b"[" * 5000
            + b"]" * 5000
            + b"}",
            -32600,
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"observe","params":{"address":"bob@example.org",'
            b'"origin":"openpgp-header","url":"https://example.org/\\ud800"}}',
            -32600,
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"observe","params":{"address":"bob@example.org",'
            b'"origin":"openpgp-header","url":"https://example.org/\xed\xa0\x80"}}',
            -32700,
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"lookup","params":{"address":"b@x.org","wait":NaN}}',
            -32700,
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"lookup","params":{"address":"b@x.org","wait":1e999}}',
            -32602,
        ),
    ],
)
def test_one_hostile_line_is_answered_and_the_daemon_lives(daemon, line, code):
    assert error_code(daemon, line) == code
    assert daemon.proc.poll() is None
    assert daemon.call("status")["keys"] == 0
    assert "Traceback" not in (daemon.config.parent / "daemon.log").read_text()


def test_a_surrogate_url_registers_nothing_and_audits_nothing_half(daemon):
    line = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "observe",
            "params": {
                "address": BOB,
                "key": "x",
                "origin": "autocrypt",
                "url": "https://e/\ud800",
            },
        }
    ).encode()
    assert error_code(daemon, line) == -32600
    assert daemon.call("lookup", address=BOB, discover=False)["state"] == "unknown"
    assert not [e for e in daemon.audit() if e["event"].startswith("key.")]


# -- the fuzz target ----------------------------------------------------------------------------

METHODS = ["lookup", "observe", "used", "verify", "history", "refresh", "status", "own", "nope"]
VALUES: list[Any] = [
    BOB,
    "EVE@Example.org",
    "a@b",
    "",
    "\u202e\x1b[2J",
    "0" * 40,
    "DEADBEEF" * 5,
    0,
    -1,
    2**63,
    1.5,
    True,
    None,
    [],
    {},
    ["x"],
    {"a": 1},
    "autocrypt",
    "openpgp-header",
    "pass",
    "sent-encrypted",
    "https://example.org/.well-known/openpgpkey/hu/x",
    "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n-----END PGP PUBLIC KEY BLOCK-----\n",
]
PARAMS = ["address", "key", "fingerprint", "origin", "dkim", "url", "event", "discover", "armor"]


def fuzz_line(rng: random.Random) -> bytes:
    """A request built from the protocol's own words, then (often) damaged at the byte level."""
    msg: dict[str, Any] = {"jsonrpc": rng.choice(["2.0", "2.0", "2.0", "1.0", 2])}
    if rng.random() < 0.9:
        msg["id"] = rng.choice([1, "x", None, 1.5, [1], 2**70])
    if rng.random() < 0.95:
        msg["method"] = rng.choice(METHODS)
    if rng.random() < 0.8:
        msg["params"] = {rng.choice(PARAMS): rng.choice(VALUES) for _ in range(rng.randint(0, 5))}
    raw = bytearray(json.dumps(msg).encode())
    for _ in range(rng.choice([0, 0, 1, 2, 5])):
        i = rng.randrange(len(raw) + 1)
        op = rng.randrange(4)
        if op == 0 and raw:
            del raw[min(i, len(raw) - 1)]
        elif op == 1:
            raw[i:i] = bytes([rng.randrange(256)])
        elif op == 2:
            raw[i:i] = rng.choice(
                [
                    b"\\ud800",
                    b"\xed\xa0\x80",
                    b"[" * 200,
                    b"9" * 4400,
                    b"NaN",
                    b"\\u0000",
                    b"{}",
                    b'"',
                ]
            )
        else:
            raw[i:i] = raw[: rng.randrange(len(raw) + 1)]
    return bytes(raw).replace(b"\n", b" ")


def send_and_check(path: Path, lines: list[bytes]) -> list[dict[str, Any]]:
    """Pipeline `lines` on one connection, then a sentinel; every answer must be JSON-RPC."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(120)
        s.connect(str(path))
        data = b"\n".join(lines) + b'\n{"jsonrpc":"2.0","id":"end","method":"status"}\n'
        sender = threading.Thread(target=s.sendall, args=(data,))  # read while we write
        sender.start()
        try:
            return read_answers(s)
        finally:
            sender.join()


def read_answers(s: socket.socket) -> list[dict[str, Any]]:
    buf = b""
    answers: list[dict[str, Any]] = []
    while True:
        chunk = s.recv(1 << 20)
        assert chunk, "the daemon closed the connection before the sentinel's answer"
        buf += chunk
        *complete, buf = buf.split(b"\n")
        for raw in complete:
            answer = json.loads(raw)
            assert answer["jsonrpc"] == "2.0" and ("result" in answer or "error" in answer)
            answers.append(answer)
        if answers and answers[-1].get("id") == "end":
            return answers


def run_fuzz(daemon: Daemon, lines: int, seed: int, batch: int = 500) -> dict[str, int]:
    rng = random.Random(seed)
    codes: dict[str, int] = {}
    sent = 0
    while sent < lines:
        chunk = [fuzz_line(rng) for _ in range(min(batch, lines - sent))]
        for answer in send_and_check(daemon.socket, chunk):
            key = str(answer["error"]["code"]) if "error" in answer else "result"
            codes[key] = codes.get(key, 0) + 1
        sent += len(chunk)
        assert daemon.proc.poll() is None, f"the daemon ended after {sent} lines"
    return codes


def test_fuzzed_socket_lines_never_end_the_daemon(daemon):
    started = time.monotonic()
    codes = run_fuzz(daemon, 100_000, seed=14)
    assert daemon.proc.poll() is None
    assert daemon.call("status")["version"]
    # every kind of answer was reached, and no line was a handler failure
    assert {"-32700", "-32600", "-32601", "-32602", "result"} <= set(codes), codes
    assert "-32603" not in codes, codes
    print(f"fuzz: 100000 lines in {time.monotonic() - started:.1f}s: {codes}")


# -- connections: slow-loris, fd exhaustion, memory ------------------------------------------


def systemd_default_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


@pytest.fixture
def more_fds():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_slow_loris_at_the_default_fd_limit_leaves_a_good_client_served(tmp_path, more_fds):
    """1,100 connections trickling a byte each, under systemd's default limit of 1,024 fds: a
    good client is answered and the daemon never runs out of fds (no EMFILE in its log)."""
    d = Daemon(write_config(tmp_path, {}), preexec_fn=systemd_default_fds)
    held: list[socket.socket] = []
    try:
        for _ in range(1100):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(d.socket))
            s.sendall(b"{")
            held.append(s)
        for s in held[:50]:  # the slow-loris keeps trickling
            with contextlib.suppress(OSError):
                s.sendall(b'"')
        for _ in range(5):
            assert d.call("status")["keys"] == 0
        assert d.proc.poll() is None
        # the daemon still opens its own files: a decision is stored and audited
        assert d.call("lookup", address=BOB, discover=False)["state"] == "unknown"
    finally:
        for s in held:
            s.close()
        d.stop()
    log = (tmp_path / "daemon.log").read_text()
    assert "EMFILE" not in log and "Too many open files" not in log and "Traceback" not in log


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


def test_many_unfinished_long_lines_cost_little_memory(daemon):
    """400 clients each pushing most of a 1 MiB line that never ends: without a bound the
    daemon would hold 400 MiB."""
    before = rss_kib(daemon.proc.pid)
    chunk = b"x" * ((1 << 20) - 16)
    held: list[tuple[socket.socket, memoryview]] = []
    for _ in range(400):
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(daemon.socket))
        s.setblocking(False)
        held.append((s, memoryview(chunk)))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(len(rest) for _, rest in held):
            progressed = False
            for i, (s, rest) in enumerate(held):
                if not len(rest):
                    continue
                try:
                    n = s.send(rest[:65536])
                except (BlockingIOError, OSError):
                    continue
                held[i] = (s, rest[n:])
                progressed = True
            if not progressed:
                time.sleep(0.2)
        grown_mib = (rss_kib(daemon.proc.pid) - before) / 1024
        assert daemon.call("status")["keys"] == 0
        assert grown_mib < 120, f"the daemon grew by {grown_mib:.0f} MiB"
    finally:
        for s, _ in held:
            s.close()
