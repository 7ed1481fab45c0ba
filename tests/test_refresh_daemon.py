"""The refresh engine in a real `refreshd run` process against a loopback HTTPS keyserver.

The daemon runs with Tor off and clearnet allowed (tests only); network.connect_to maps the
keyserver names to tests/refresh_keyserver.py, which logs every request with its start and end
times. Keys come in through the socket (`observe`, `lookup`); what the daemon did is read from
the server's log, its audit log and, read-only, its SQLite state. SPEC section 6, issue 5.
"""

from __future__ import annotations

import itertools
import json
import socket
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from refreshd.openpgp.keyview import read_key
from refreshd.openpgp.packets import armor
from tests.daemon_proc import Daemon, write_config
from tests.keyfactory import pgpy_key
from tests.refresh_keyserver import Hit, KeyServer
from tests.world.ca import LocalCA

N_KEYS = 60
GOOD = "keys.example.net"
BAD = "bad.example.net"


class Key:
    def __init__(self, i: int) -> None:
        self.address = f"k{i}@example.org"
        self.armored = armor(pgpy_key(f"K{i} <{self.address}>"))
        self.fpr = read_key(self.armored.encode(), datetime.now(UTC)).fingerprint


@pytest.fixture(scope="module")
def keyring() -> list[Key]:
    return [Key(i) for i in range(N_KEYS)]


@pytest.fixture
def server(test_ca: LocalCA, keyring: list[Key]) -> Iterator[KeyServer]:
    cert = test_ca.issue([GOOD, BAD])
    with KeyServer(cert.server_context()) as srv:
        for key in keyring:
            srv.add(key.fpr, key.armored.encode())
        yield srv


def start(
    root: Path,
    server: KeyServer,
    ca: LocalCA,
    *,
    period: str,
    minimum_lapse: str,
    timeout: str = "5s",
) -> Daemon:
    config = write_config(
        root,
        {
            "tor": {"mode": "off", "allow_clearnet": True},
            "network": {
                "ca_file": str(ca.ca_file),
                "connect_to": [f"{h}:443:127.0.0.1:{server.port}" for h in (GOOD, BAD)],
                "timeout": timeout,
            },
            "refresh": {"period": period, "minimum_lapse": minimum_lapse},
            "discovery": {"order": ["vks"], "vks": [f"https://{GOOD}", f"https://{BAD}"]},
        },
    )
    return Daemon(config)


def register(daemon: Daemon, keys: list[Key]) -> None:
    for key in keys:
        got = daemon.call("observe", address=key.address, key=key.armored, origin="autocrypt")
        assert got["decision"] == "registered" and got["fingerprint"] == key.fpr


def audit_events(root: Path, name: str) -> list[dict[str, Any]]:
    """Complete lines of the audit log (the daemon may be writing the next one)."""
    text = (root / "state" / "audit.jsonl").read_text()
    lines = [json.loads(x) for x in text.split("\n")[:-1]]
    return [e for e in lines if e["event"] == name]


def cycle_state(root: Path) -> dict[str, Any]:
    """The persisted cycle state, read-only, with its order as fingerprints: the small part
    is a JSON row, the order 8 bytes per key id, the ids named in refresh_keys."""
    db = sqlite3.connect(f"file:{root / 'state' / 'refreshd.sqlite3'}?mode=ro", uri=True)
    try:
        (value,) = db.execute("SELECT value FROM state WHERE name = 'refresh.cycle'").fetchone()
        (packed,) = db.execute("SELECT ids FROM refresh_order").fetchone()
        names = dict(db.execute("SELECT id, fingerprint FROM refresh_keys").fetchall())
    finally:
        db.close()
    ids = array("q")
    ids.frombytes(packed)
    state = json.loads(value)
    assert state["keys"] == len(ids)
    return {**state, "order": [names[i] for i in ids]}


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def refreshes(hits: list[Hit], host: str = GOOD) -> list[Hit]:
    return [h for h in hits if h.kind == "fingerprint" and h.host == host]


def assert_one_at_a_time(server: KeyServer, hits: list[Hit]) -> None:
    assert server.max_in_flight == 1
    ordered = sorted(hits, key=lambda h: h.start)
    for before, after in itertools.pairwise(ordered):
        assert after.start >= before.end, f"{after} started while {before} was in flight"


def blocks(hits: list[Hit], size: int) -> list[list[Hit]]:
    """The complete consecutive runs of `size` requests."""
    return [hits[i : i + size] for i in range(0, len(hits) - size + 1, size)]


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_one_fetch_in_flight_and_every_key_once_per_cycle(
    tmp_path: Path, server: KeyServer, test_ca: LocalCA, keyring: list[Key]
) -> None:
    """Acceptance 3: about 200 refreshes with lapses of a few tens of ms and answers that take
    20 ms: never two requests in flight. Each run of 59 answered requests holds every key once,
    although the sixtieth key fails every time and its retries (every few seconds, the period
    being 6 s) take slots between them."""
    healthy, failing = keyring[:-1], keyring[-1]
    server.behaviour.delay = 0.02
    server.behaviour.failing_keys.add(failing.fpr)
    daemon = start(tmp_path, server, test_ca, period="6s", minimum_lapse="0s")
    try:
        register(daemon, keyring)
        server.wait_for(
            lambda h: len([x for x in h if x.status == 200]) >= 3 * len(healthy), timeout=90
        )
    finally:
        daemon.stop()
    hits = server.log()
    # keys met in mail are asked by fingerprint; the failing one gives way to the second server
    assert all(h.kind == "fingerprint" for h in hits)
    assert all(h.host == GOOD for h in hits if h.subject != failing.fpr)
    assert_one_at_a_time(server, hits)
    # the stop may cut the last request short (the server logs status 0: no answer sent)
    answered = hits[:-1] if hits[-1].status == 0 else hits
    good = [h for h in answered if h.subject != failing.fpr]
    assert all(h.status == 200 for h in good), [(i, h.status) for i, h in enumerate(hits)]
    cycles = blocks(good, len(healthy))
    assert len(cycles) >= 3
    for cycle in cycles:
        assert sorted(h.subject for h in cycle) == sorted(k.fpr for k in healthy)
    retries = [h for h in answered if h.subject == failing.fpr]
    assert retries and all(h.status == 500 for h in retries)
    # The audit log tells the same story in the same order (the last fetch may have been cut
    # short by the stop).
    fetches = audit_events(tmp_path, "refresh.fetched") + audit_events(tmp_path, "refresh.failed")
    fetches.sort(key=lambda e: e["seq"])
    assert len(hits) - 1 <= len(fetches) <= len(hits)
    assert [e["fingerprint"] for e in fetches] == [h.subject for h in hits][: len(fetches)]
    assert all(
        (e["event"] == "refresh.failed") == (e["fingerprint"] == failing.fpr) for e in fetches
    )


def test_restart_resumes_the_cycle_where_it_stopped(
    tmp_path: Path, server: KeyServer, test_ca: LocalCA, keyring: list[Key]
) -> None:
    """Acceptance 2: SIGTERM a quarter to half way through a cycle, start again with the same
    config: the keys not yet refreshed in that cycle come first, each once, before any key
    that was already refreshed in it."""
    daemon = start(tmp_path, server, test_ca, period="10s", minimum_lapse="0s")
    try:
        register(daemon, keyring)
        wait_until(
            lambda: N_KEYS // 4 <= daemon.call("status")["refresh"]["position"] <= N_KEYS // 2,
            60,
            "a cycle a quarter through",
        )
    finally:
        daemon.stop()
    saved = cycle_state(tmp_path)
    order, position = saved["order"], saved["position"]
    assert 0 < position < N_KEYS and sorted(order) == sorted(k.fpr for k in keyring)
    done, pending = order[:position], order[position:]
    # What the daemon recorded agrees with the audit log and with what the server served.
    assert [e["fingerprint"] for e in audit_events(tmp_path, "refresh.fetched")][-position:] == done
    served = [h.subject for h in refreshes(server.log()) if h.status == 200]
    assert done in (served[-position:], served[-position - 1 : -1])  # + one cut by the stop?

    seen_before = len(server.log())
    daemon = Daemon(daemon.config)
    try:
        after = server.wait_for(
            lambda h: len(refreshes(h[seen_before:])) >= len(pending), timeout=60
        )
        wait_until(
            lambda: daemon.call("status")["refresh"]["cycle"] == saved["cycle"] + 1,
            30,
            "the next cycle",
        )
    finally:
        daemon.stop()
    resumed = [h.subject for h in refreshes(after[seen_before:])][: len(pending)]
    assert sorted(resumed) == sorted(pending)
    assert not set(resumed) & set(done)
    assert len(audit_events(tmp_path, "daemon.started")) == 2


def sick_key(server: KeyServer, keyring: list[Key]) -> Key:
    """A key that discovery finds on bad.example.net, which then fails every lookup by
    fingerprint: the key's refresh source fails every time."""
    sick = keyring[-1]
    server.behaviour.failing_hosts.add(BAD)
    server.by_email[(BAD, sick.address)] = sick.fpr
    return sick


def discover(daemon: Daemon, key: Key) -> None:
    found = daemon.call("lookup", address=key.address, wait=30)
    assert found["state"] == "registered" and found["fingerprint"] == key.fpr
    assert found["source"] == "vks"


def backoffs(root: Path, fpr: str) -> list[dict[str, Any]]:
    return [e for e in audit_events(root, "refresh.backoff") if e["fingerprint"] == fpr]


def test_failing_source_leaves_the_other_keys_on_their_cycle(
    tmp_path: Path, server: KeyServer, test_ca: LocalCA, keyring: list[Key]
) -> None:
    """Acceptance 4 (the other keys) and the status of issue 5 item 4; a `refresh` request
    jumps the queue. Six keys seen in mail are refreshed from keys.example.net; a seventh,
    found on bad.example.net, is refreshed from there and fails every time."""
    healthy, sick = keyring[:6], sick_key(server, keyring)
    period, lapse = 12, 1
    daemon = start(tmp_path, server, test_ca, period=f"{period}s", minimum_lapse=f"{lapse}s")
    try:
        register(daemon, healthy)
        discover(daemon, sick)
        wait_until(
            lambda: (
                len(backoffs(tmp_path, sick.fpr)) >= 3
                and len(blocks(refreshes(server.log()), len(healthy))) >= 3
            ),
            120,
            "three backoffs of the failing key and three cycles of the others",
        )

        status = daemon.call("status")
        refresh = status["refresh"]
        now = time.time()
        assert refresh["keys_in_cycle"] == 7 and 0 <= refresh["position"] <= 7
        assert refresh["cycle"] >= 3
        assert refresh["effective_period_seconds"] == period and refresh["lengthened"] is False
        assert status["next_refresh_at"] == refresh["next_refresh_at"]
        assert now - 3 <= at(refresh["next_refresh_at"]) <= now + period
        assert refresh["failures_by_host"].get(BAD, 0) >= 3
        assert GOOD not in refresh["failures_by_host"]
        last = refresh["last"]
        assert last["fingerprint"] in {k.fpr for k in [*healthy, sick]}
        assert last["source"] == "vks"
        assert last["outcome"] in ("key", "unchanged", "retry-later")
        assert now - period <= at(last["at"]) <= now + 1

        # A `refresh` request right after a fetch, while the loop waits at least a minimum
        # lapse: the requested key is the next fetch, within a minimum lapse (plus slack).
        # The key asked for is one the cycle would fetch last (or one already done).
        seen = len(server.log())
        server.wait_for(lambda h: len(h) > seen, timeout=30)
        state = cycle_state(tmp_path)
        candidates = [*state["order"][: state["position"]], state["order"][-1]]
        urgent = next(f for f in candidates if f != sick.fpr)
        requested_at = time.time()
        mark = len(server.log())
        answer = daemon.call("refresh", fingerprint=urgent)
        assert answer["fingerprint"] == urgent
        assert requested_at - 1 <= at(answer["scheduled_at"]) <= requested_at + lapse + 1
        next_hit = server.wait_for(lambda h: len(h) > mark, timeout=30)[mark]
    finally:
        daemon.stop()
    assert next_hit.subject == urgent and next_hit.host == GOOD
    assert next_hit.start - requested_at <= lapse + 2

    hits = server.log()
    assert_one_at_a_time(server, hits)
    # The failing source: every attempt a 500, audited as failed and followed by a backoff
    # that counts the failures; past the cap (one period) the delay stays in [period/2, period].
    sick_hits = refreshes(hits, BAD)
    assert all(h.status == 500 and h.subject == sick.fpr for h in sick_hits)
    failed = [e for e in audit_events(tmp_path, "refresh.failed") if e["fingerprint"] == sick.fpr]
    assert len(sick_hits) - 1 <= len(failed) <= len(sick_hits)
    assert all(e["status"] == 500 and e["outcome"] == "retry-later" for e in failed)
    assert all(e["url"].startswith(f"https://{BAD}/") for e in failed)
    events = backoffs(tmp_path, sick.fpr)
    assert [e["failures"] for e in events] == list(range(1, len(events) + 1))
    delays = [at(e["retry_at"]) - at(e["ts"]) for e in events]  # retry_at is whole seconds
    assert all(period / 2 - 1 <= d <= period for d in delays), delays

    # The healthy keys, up to the request: every one once per cycle, and every cycle after the
    # first (which started with the daemon, before the keys came) within its period.
    good = refreshes(hits[:mark])
    assert all(h.status == 200 for h in good)
    cycles = blocks(good, len(healthy))
    assert len(cycles) >= 3
    for cycle in cycles:
        assert sorted(h.subject for h in cycle) == sorted(k.fpr for k in healthy)
    for cycle in cycles[1:]:
        assert cycle[-1].end - cycle[0].start <= period + 2


def test_failing_source_backs_off_with_growing_delays(
    tmp_path: Path, server: KeyServer, test_ca: LocalCA, keyring: list[Key]
) -> None:
    """Acceptance 4 (the growing delay): with a long period, each failure of the key doubles the
    delay before its retry (from about a minute), as the audit log shows; the retries wait.
    The failures are brought about by `refresh` requests, which are fetched at once."""
    sick = sick_key(server, keyring)
    daemon = start(tmp_path, server, test_ca, period="1h", minimum_lapse="1s")
    try:
        register(daemon, keyring[:1])
        discover(daemon, sick)
        for failures in range(1, 5):
            daemon.call("refresh", fingerprint=sick.fpr)
            wait_until(lambda n=failures: len(backoffs(tmp_path, sick.fpr)) == n, 30, "the backoff")
        status = daemon.call("status")["refresh"]
    finally:
        daemon.stop()
    events = backoffs(tmp_path, sick.fpr)
    assert [e["failures"] for e in events] == [1, 2, 3, 4]
    delays = [at(e["retry_at"]) - at(e["ts"]) for e in events]  # retry_at is whole seconds
    for failures, delay in enumerate(delays, start=1):
        ceiling = 60 * 2 ** (failures - 1)
        assert ceiling / 2 - 1 <= delay <= ceiling, delays
    assert status["failures_by_host"] == {BAD: 4}
    # Only the four requested fetches reached the failing host: no retry came early.
    assert len(refreshes(server.log(), BAD)) == 4


def test_lengthened_cycle_keeps_the_minimum_lapse_and_waits_out_a_hung_server(
    tmp_path: Path, server: KeyServer, test_ca: LocalCA, keyring: list[Key]
) -> None:
    """Four keys, a 4 s period and a 1 s minimum lapse do not fit: the cycle lengthens, status
    says so, and no fetch follows the previous one sooner than the minimum lapse. The server
    never answers for one key: that fetch ends at network.timeout, and nothing else is
    fetched meanwhile."""
    keys, hung = keyring[:3], keyring[3]
    server.behaviour.hanging_keys.add(hung.fpr)
    daemon = start(tmp_path, server, test_ca, period="4s", minimum_lapse="1s", timeout="1s")
    try:
        register(daemon, [*keys, hung])
        server.wait_for(
            lambda h: len([x for x in h if x.status == 200]) >= 2 * len(keys), timeout=90
        )
        refresh = daemon.call("status")["refresh"]
    finally:
        daemon.stop()
    assert refresh["lengthened"] is True
    assert refresh["effective_period_seconds"] == pytest.approx(4 * 1 * 1.5)
    hits = server.log()
    assert_one_at_a_time(server, hits)
    assert all(b.start - a.end >= 1.0 for a, b in itertools.pairwise(hits))
    answered = [h for h in hits if h.subject != hung.fpr]
    for cycle in blocks(answered, len(keys)):
        assert sorted(h.subject for h in cycle) == sorted(k.fpr for k in keys)
    held = [h for h in hits if h.subject == hung.fpr]
    # the server's clock starts once the head is read, after the connection and TLS handshake
    # that the daemon's timeout already counts: under load that takes a good part of a second
    assert held and all(h.status == 0 and h.end - h.start >= 0.5 for h in held[:-1])
    failed = audit_events(tmp_path, "refresh.failed")
    assert failed and all(e["fingerprint"] == hung.fpr for e in failed)
    assert all("timed out" in e["reason"] for e in failed)


def test_the_server_sees_requests_that_overlap(test_ca: LocalCA, keyring: list[Key]) -> None:
    """The instrument itself: two clients at once are two requests in flight."""
    cert = test_ca.issue([GOOD])
    key = keyring[0]
    with KeyServer(cert.server_context()) as srv:
        srv.add(key.fpr, key.armored.encode())
        srv.behaviour.delay = 0.3

        def get() -> None:
            tls = test_ca.client_context()
            raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            with raw, tls.wrap_socket(raw, server_hostname=GOOD) as conn:
                request = f"GET /vks/v1/by-fingerprint/{key.fpr} HTTP/1.1\r\nHost: {GOOD}\r\n\r\n"
                conn.sendall(request.encode())
                while conn.recv(65536):
                    pass

        clients = [threading.Thread(target=get) for _ in range(2)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(10)
        hits = srv.log()
    assert [h.status for h in hits] == [200, 200] and srv.max_in_flight == 2
    with pytest.raises(AssertionError):
        assert_one_at_a_time(srv, hits)
