"""State stays bounded however often the same thing happens (issue 14): a key observed again
and again for one address is one decision row with a count, lookups do not read history, and
rejected keys are kept by fingerprint and reason, their bytes only within a small budget."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
from datetime import timedelta

from refreshd.openpgp.packets import armor
from refreshd.store import REJECTED_BYTES
from tests.daemon_proc import Daemon, write_config
from tests.keyfactory import pgpy_key

BOB = "bob@example.org"


def pipelined(d: Daemon, line: dict, times: int) -> list[dict]:
    data = (json.dumps(line).encode() + b"\n") * times
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(120)
        s.connect(str(d.socket))
        writer = threading.Thread(target=s.sendall, args=(data,))
        writer.start()
        buf = b""
        while buf.count(b"\n") < times:
            chunk = s.recv(1 << 20)
            assert chunk
            buf += chunk
        writer.join()
    return [json.loads(x) for x in buf.splitlines()]


def test_unchanged_observes_are_one_decision_row(tmp_path):
    key = armor(pgpy_key(f"Bob <{BOB}>", expires=timedelta(days=400)))
    d = Daemon(write_config(tmp_path, {}))
    try:
        observe = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "observe",
            "params": {"address": BOB, "key": key, "origin": "autocrypt"},
        }
        answers = pipelined(d, observe, 600)
        assert all("result" in a for a in answers)
        decisions = d.call("history", address=BOB)["decisions"]
        assert len(decisions) <= 2  # registered once, then the same decision repeated
        assert sum(x["times"] for x in decisions) == 600
        assert decisions[-1]["last_ts"] >= decisions[-1]["ts"]
        assert d.call("lookup", address=BOB, discover=False)["state"] == "registered"
    finally:
        d.stop()
    db = sqlite3.connect(tmp_path / "state" / "refreshd.sqlite3")
    (rows,) = db.execute("SELECT count(*) FROM decisions WHERE address = ?", (BOB,)).fetchone()
    db.close()
    assert rows <= 2
    audited = [json.loads(x) for x in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert len([e for e in audited if e["event"].startswith("key.")]) == 600  # each one audited


def test_rejected_keys_are_kept_by_fingerprint_and_their_bytes_bounded(tmp_path):
    d = Daemon(write_config(tmp_path, {}))
    fingerprints = []
    try:
        for i in range(12):  # keys for someone else: rejected (SPEC 5.3)
            key = armor(pgpy_key(f"Other{i} <other{i}@example.net>", rsa=True))
            got = d.call("observe", address=BOB, key=key, origin="attachment")
            assert got["decision"] == "rejected"
            fingerprints.append(got["fingerprint"])
        history = {k["fingerprint"]: k for k in d.call("history", address=BOB)["keys"]}
        assert set(fingerprints) <= set(history)
        assert all(
            history[f]["status"] == "rejected" and history[f]["reason"] for f in fingerprints
        )
        # a recent rejected key can still be verified by the user (its bytes are kept)
        verified = d.call("verify", address=BOB, fingerprint=fingerprints[-1])
        assert "holds no key" not in verified["reason"]
    finally:
        d.stop()
    db = sqlite3.connect(tmp_path / "state" / "refreshd.sqlite3")
    stored = {r[0] for r in db.execute("SELECT fingerprint FROM keys")}
    (kept,) = db.execute("SELECT coalesce(sum(length(data)), 0) FROM rejected_keys").fetchone()
    db.close()
    assert not (set(fingerprints[:-1]) & stored)  # rejected keys are not stored as keys
    assert kept <= REJECTED_BYTES


def test_rejected_key_bytes_stay_within_the_budget_newest_kept(tmp_path):
    from datetime import UTC, datetime

    from refreshd.store import Store

    store = Store(tmp_path / "db.sqlite3")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(40):
        with store.transaction():
            data = bytes([i]) * (REJECTED_BYTES // 16)
            store.put_rejected_key(f"{i:040X}", data, start + timedelta(seconds=i))
    (total,) = store.db.execute("SELECT sum(length(data)) FROM rejected_keys").fetchone()
    assert total <= REJECTED_BYTES
    assert store.held_key(f"{39:040X}") == bytes([39]) * (REJECTED_BYTES // 16)
    assert store.held_key(f"{0:040X}") is None
    store.close()
