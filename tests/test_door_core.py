"""The keyserver door's pure parts: routing of hostile request targets, the HKP index, the
refusal log, and the owner of a loopback connection read from the kernel's real table."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from refreshd.core import door, tcptable
from refreshd.core.door import By, Op, Query, Response
from refreshd.openpgp.keyview import read_key
from tests.keyfactory import Workshop

FPR = "9A698C449B8D5AE993EB6C19592DC61D380DA3CC"


def test_what_gpg_and_sq_send_is_routed() -> None:
    # request targets as gpg 2.2's dirmngr and sq 0.27 sent them to a listening test server
    assert door.route("GET", f"/pks/lookup?op=get&options=mr&search=0x{FPR}") == Query(
        Op.GET, By.FINGERPRINT, FPR, True
    )
    assert door.route(
        "GET", "/pks/lookup?op=get&options=mr&search=Bob@Example.ORG&exact=on"
    ) == Query(Op.GET, By.ADDRESS, "Bob@example.org", True)
    assert door.route("GET", f"/pks/lookup?op=index&options=mr&search=0x{FPR.lower()}") == Query(
        Op.INDEX, By.FINGERPRINT, FPR, True
    )
    assert door.route("GET", "/vks/v1/by-email/bob%40example.org") == Query(
        Op.GET, By.ADDRESS, "bob@example.org"
    )
    assert door.route("HEAD", f"/vks/v1/by-fingerprint/{FPR}") == Query(Op.GET, By.FINGERPRINT, FPR)


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("POST", "/pks/add", 403),
        ("GET", "/pks/add", 403),
        ("POST", "/vks/v1/upload", 403),
        ("DELETE", "/pks/lookup?op=get&search=a@b.example", 405),
        ("GET", "/pks/lookup?op=stats", 501),
        ("GET", "/pks/lookup?op=get", 400),
        ("GET", "/pks/lookup?op=get&search=0x1234", 404),
        ("GET", "/vks/v1/by-fingerprint/nothex", 400),
        ("GET", "/vks/v1/by-email/not-an-address", 404),
        ("GET", "/", 404),
        ("GET", "/pks/lookup?" + "a=b&" * 40, 400),
        ("GET", "/" + "x" * 5000, 414),
    ],
)
def test_what_is_not_a_lookup_is_answered_with_a_reason(
    method: str, target: str, status: int
) -> None:
    answer = door.route(method, target)
    assert isinstance(answer, Response) and answer.status == status
    assert answer.body.endswith(b"\n") and len(answer.body) > 20


@given(st.sampled_from(["GET", "HEAD", "POST", "X"]), st.text(max_size=600))
def test_any_target_is_a_query_or_an_answer(method: str, target: str) -> None:
    routed = door.route(method, target)
    assert isinstance(routed, Query | Response)
    if isinstance(routed, Query):
        assert routed.by is not By.FINGERPRINT or len(routed.value) == 40


def test_the_machine_readable_index_as_gpg_reads_it() -> None:
    ws = Workshop()  # in /tmp: the agent's socket path must stay short
    try:
        fpr = ws.gpg.generate("Bob: the 100% <bob@example.org>", expire="1y")
        view = read_key(ws.gpg.export(fpr), datetime.now(UTC))
    finally:
        ws.close()
    now = datetime.now(UTC)
    lines = door.index(view, now, machine_readable=True).body.decode().splitlines()
    created = int(view.primary.created.timestamp())
    expires = int(view.primary.expires.timestamp())
    assert lines == [
        "info:1:1",
        f"pub:{fpr}:22:255:{created}:{expires}:",
        f"uid:Bob%3A%20the%20100%25%20<bob@example.org>:{created}::",
    ]
    expired = door.index(view, view.primary.expires, machine_readable=True).body.decode()
    assert expired.splitlines()[1].endswith(":e")


def test_refusals_are_audited_once_per_interval_with_a_count() -> None:
    log = door.RefusalLog(interval=60)
    assert log.refused(1000.0) == 1
    assert [log.refused(1000.0 + t) for t in (1, 2, 59)] == [None, None, None]
    assert log.refused(1061.0) == 4  # the three held back, and this one


def test_the_owner_of_a_real_loopback_connection_is_this_user() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, peer = server.accept()
        try:
            table = Path("/proc/net/tcp").read_text()
            here = accepted.getsockname()
            assert tcptable.owner(table, peer, here) == os.getuid()
            assert tcptable.owner(table, here, ("127.0.0.1", 1)) is None  # no such connection
        finally:
            client.close()
            accepted.close()


def test_a_made_up_table_names_the_other_user() -> None:
    local, remote = tcptable.endpoint("127.0.0.1", 40000), tcptable.endpoint("127.0.0.1", 11371)
    assert remote.endswith(":2C6B")
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"  # noqa: E501
    row = (
        f"   0: {local} {remote} 01 00000000:00000000 00:00000000 00000000  1001        0 4242 1\n"
    )
    client, server = ("127.0.0.1", 40000), ("127.0.0.1", 11371)
    assert tcptable.owner(header + row, client, server) == 1001
    assert tcptable.owner(header + row.replace(" 4242 ", " 0 "), client, server) is None  # gone
    other = row.replace("  1001 ", "  1002 ")
    assert tcptable.owner(header + row + other, client, server) is None  # rows that disagree
    six = tcptable.endpoint("::1", 40000)
    assert six == "00000000000000000000000001000000:9C40"


@given(st.text(max_size=2000))
def test_any_table_text_gives_a_uid_or_none(text: str) -> None:
    found = tcptable.owner(text, ("127.0.0.1", 1), ("127.0.0.1", 2))
    assert found is None or found >= 0
