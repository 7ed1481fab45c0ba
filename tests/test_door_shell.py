"""The keyserver door's trio shell in process: hostile bytes on the wire end in a 400 or a
closed connection, never in a crash, and the next client is served; another user (as the
kernel's table names it) is refused before a byte is read."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refreshd.audit import AuditLog
from refreshd.config import Config, DaemonConfig
from refreshd.core.rules import LookupState
from refreshd.door import KeyserverDoor, peer_owner
from refreshd.keymanager import KeyManager
from refreshd.store import Store


async def unknown(params: dict[str, Any]) -> dict[str, Any]:
    return {"state": LookupState.PENDING, "fingerprint": None, "reason": "", "usable": False}


def make_door(tmp: Path, owner_of=peer_owner) -> tuple[KeyserverDoor, AuditLog, Store]:
    cfg = Config(daemon=DaemonConfig(state_dir=tmp, socket=tmp / "s"))
    store, audit = Store(cfg.database), AuditLog(cfg.audit_file)
    keys = KeyManager(store, audit, cfg)
    door = KeyserverDoor(keys, unknown, emit=audit.emit, clock=lambda: datetime.now(UTC),
                         owner_of=owner_of)  # fmt: skip
    return door, audit, store


async def exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    got = b""
    try:
        await stream.send_all(data)
        await stream.send_eof()  # a client that sent all it will send
        with trio.fail_after(30):
            while chunk := await stream.receive_some(65536):
                got += chunk
    except trio.BrokenResourceError:
        pass  # reset by the door: refused without reading
    finally:
        await stream.aclose()
    return got


def served(tmp: Path, payloads: list[bytes], owner_of=peer_owner) -> tuple[list[bytes], list]:
    door, audit, store = make_door(tmp, owner_of)

    async def main() -> list[bytes]:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(door.serve, "127.0.0.1:0")
            answers = [await exchange(port, p) for p in payloads]
            nursery.cancel_scope.cancel()
        return answers

    try:
        answers = trio.run(main)
    finally:
        store.close()
        audit.close()
    lines = [json.loads(x) for x in (tmp / "audit.jsonl").read_text().splitlines()]
    return answers, lines


GOOD = b"GET /pks/lookup?op=get&search=bob%40example.org HTTP/1.1\r\nHost: x\r\n\r\n"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda m, t, h: m + b" " + t + b" HTTP/1.1\r\n" + h + b"\r\n\r\n",
              st.sampled_from([b"GET", b"POST", b"HEAD", b"\x00"]), st.binary(max_size=200),
              st.binary(max_size=400)),
))  # fmt: skip
def test_hostile_bytes_then_a_good_request(tmp_path_factory, data: bytes) -> None:
    answers, _ = served(tmp_path_factory.mktemp("d"), [data, GOOD])
    assert answers[0] == b"" or answers[0].startswith(b"HTTP/1.1 ")
    assert answers[1].startswith(b"HTTP/1.1 404 ") and b"looking up" in answers[1]


def test_an_oversized_head_is_a_400(tmp_path: Path) -> None:
    big = b"GET /pks/lookup?op=get HTTP/1.1\r\n" + b"X-A: " + b"a" * 40000 + b"\r\n\r\n"
    answers, _ = served(tmp_path, [big, GOOD])
    assert answers[0].startswith(b"HTTP/1.1 400 ") and answers[1].startswith(b"HTTP/1.1 404 ")


def test_another_user_is_refused_before_reading(tmp_path: Path) -> None:
    answers, lines = served(tmp_path, [GOOD, GOOD], owner_of=lambda client, server: 4242)
    assert answers == [b"", b""]
    refused = [x for x in lines if x["event"] == "socket.refused"]
    assert len(refused) == 1 and refused[0]["peer_uid"] == 4242 and refused[0]["refused"] == 1


def test_an_unknown_owner_is_refused(tmp_path: Path) -> None:
    answers, lines = served(tmp_path, [GOOD], owner_of=lambda client, server: None)
    assert answers == [b""]
    assert [x["peer_uid"] for x in lines if x["event"] == "socket.refused"] == [-1]


def test_a_failing_lookup_is_a_500_and_the_door_goes_on(tmp_path: Path) -> None:
    door, audit, store = make_door(tmp_path)
    calls = 0

    async def broken(params: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return await unknown(params)

    door.lookup = broken

    async def main() -> list[bytes]:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(door.serve, "127.0.0.1:0")
            answers = [await exchange(port, GOOD) for _ in range(2)]
            nursery.cancel_scope.cancel()
        return answers

    try:
        first, second = trio.run(main)
    finally:
        store.close()
        audit.close()
    assert first.startswith(b"HTTP/1.1 500 ") and second.startswith(b"HTTP/1.1 404 ")
