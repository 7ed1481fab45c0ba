"""The audit chain detects every kind of edit, across rotation."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from refreshd.audit import GENESIS, AuditLog, DiskFull, chain_hash, rotated_files, verify


def make_log(tmp_path: Path, n: int = 6) -> Path:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(n):
        log.emit("key.registered", address=f"a{i}@example.org", fingerprint=f"{i:040X}")
    log.close()
    return tmp_path / "audit.jsonl"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_untouched_log_verifies(tmp_path):
    path = make_log(tmp_path)
    verdict = verify(path)
    assert verdict.ok and verdict.lines == 6
    first = json.loads(lines(path)[0])
    assert first["prev"] == GENESIS and first["seq"] == 1


def test_reopen_continues_chain(tmp_path):
    path = make_log(tmp_path, 3)
    log = AuditLog(path)
    log.emit("tor.state", state="ready")
    log.close()
    assert verify(path).ok and verify(path).lines == 4


def test_edited_field_fails_at_that_line(tmp_path):
    path = make_log(tmp_path)
    ls = lines(path)
    ls[2] = ls[2].replace("a2@example.org", "mallory@example.org")
    path.write_text("".join(ls))
    v = verify(path)
    assert not v.ok and v.line == 3 and "hash" in v.reason


def test_deleted_line_fails(tmp_path):
    path = make_log(tmp_path)
    ls = lines(path)
    del ls[3]
    path.write_text("".join(ls))
    v = verify(path)
    assert not v.ok and v.line == 4


def test_deleted_first_line_fails(tmp_path):
    path = make_log(tmp_path)
    path.write_text("".join(lines(path)[1:]))
    v = verify(path)
    assert not v.ok and v.line == 1


def test_swapped_lines_fail(tmp_path):
    path = make_log(tmp_path)
    ls = lines(path)
    ls[1], ls[2] = ls[2], ls[1]
    path.write_text("".join(ls))
    v = verify(path)
    assert not v.ok and v.line == 2


def test_forged_append_fails(tmp_path):
    path = make_log(tmp_path)
    forged = {"seq": 7, "ts": "2026-01-01T00:00:00Z", "event": "key.replaced", "prev": "f" * 64}
    forged["hash"] = chain_hash(forged["prev"], forged)
    with path.open("a") as fh:
        fh.write(json.dumps(forged) + "\n")
    v = verify(path)
    assert not v.ok and v.line == 7


def test_truncated_last_line_fails(tmp_path):
    path = make_log(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    v = verify(path)
    assert not v.ok and v.line == 6


def test_rotation_keeps_the_chain(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.emit("a.b", n=1)
    rotated = log.rotate()
    log.emit("a.b", n=2)
    log.close()
    first_new = json.loads(lines(tmp_path / "audit.jsonl")[0])
    last_old = json.loads(lines(rotated)[-1])
    assert first_new["prev"] == last_old["hash"]
    assert verify(tmp_path / "audit.jsonl").ok
    # a new process resumes from the current file after rotation
    log = AuditLog(tmp_path / "audit.jsonl")
    log.emit("a.b", n=3)
    log.close()
    assert verify(tmp_path / "audit.jsonl").lines == 3
    rotated.unlink()
    assert not verify(tmp_path / "audit.jsonl").ok  # a missing rotated file breaks the chain


# -- crashes, a full disk, rotation ---------------------------------------------------------


def test_a_torn_tail_is_cut_at_start_and_the_cut_is_the_next_line(tmp_path):
    path = make_log(tmp_path, 4)
    whole = path.read_bytes()
    torn = b'{"event":"key.registered","seq":5,"ts":"2026-'
    path.write_bytes(whole + torn)
    log = AuditLog(path)
    log.emit("tor.state", state="ready")
    log.close()
    records = [json.loads(x) for x in lines(path)]
    assert verify(path).ok and verify(path).lines == 6
    cut = records[4]
    assert cut["event"] == "audit.truncated" and cut["seq"] == 5
    assert cut["lost_bytes"] == len(torn) and cut["lost"] == torn.decode()
    assert path.read_bytes().startswith(whole)


def test_an_unreadable_last_line_is_cut_too(tmp_path):
    path = make_log(tmp_path, 3)
    with path.open("ab") as fh:
        fh.write(b"\x00\x00\x00 garbage \xff\n")
    AuditLog(path).close()
    assert verify(path).ok
    assert json.loads(lines(path)[-1])["event"] == "audit.truncated"


def test_line_breaking_characters_and_surrogates_stay_on_their_line(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    odd = "a\u2028b\u2029c\x85d\x9be\ud800f\nNEL"
    log.emit("key.rejected", address=odd, url="https://example.org/\udc00")
    log.emit("tor.state", state="ready")
    log.close()
    text = (tmp_path / "audit.jsonl").read_text()
    assert len(text.splitlines()) == 2
    assert json.loads(text.splitlines()[0])["address"] == odd
    assert verify(tmp_path / "audit.jsonl").ok


def test_a_committed_decision_without_its_line_is_written_at_the_next_start(tmp_path):
    """The state a SIGKILL between commit and write leaves: the store holds the line."""
    from refreshd.store import Store

    path = tmp_path / "audit.jsonl"
    log, store = AuditLog(path), Store(tmp_path / "db.sqlite3")
    log.emit("daemon.started")
    intent = log.intent("key.registered", address="bob@example.org", fingerprint="A" * 40)
    with store.transaction():
        store.put_audit_intent(intent.seq, intent.line, log.written_seq)
    log.close()  # the process dies here: commit() never ran
    log = AuditLog(path)
    assert log.recover(store.audit_intents()) == 1
    assert log.recover(store.audit_intents()) == 0  # never twice
    log.close()
    store.close()
    records = [json.loads(x) for x in lines(path)]
    assert [r["event"] for r in records] == ["daemon.started", "key.registered"]
    assert records[1] == intent.record and verify(path).ok


def test_a_rolled_back_decision_leaves_no_line(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.intent("key.registered", address="bob@example.org")  # its transaction failed
    log.emit("tor.state", state="ready")
    log.close()
    assert [json.loads(x)["event"] for x in lines(path)] == ["tor.state"] and verify(path).ok


def test_rotation_by_size_and_age_keeps_one_chain(tmp_path):
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, clock=lambda: clock[0], rotate_bytes=2000, rotate_age=86400)
    for i in range(30):
        log.emit("refresh.fetched", fingerprint=f"{i:040X}", status=200)
    assert len(rotated_files(path)) >= 3
    before = len(rotated_files(path))
    clock[0] += timedelta(days=2)
    log.emit("refresh.fetched", fingerprint="F" * 40, status=304)  # the file got too old
    log.close()
    assert len(rotated_files(path)) == before + 1
    assert all(p.stat().st_size <= 2000 for p in [*rotated_files(path), path])
    assert verify(path).ok and verify(path).lines == 31


def test_retention_removes_old_files_and_says_so_in_the_chain(tmp_path):
    clock = [datetime(2026, 1, 1, tzinfo=UTC)]
    path = tmp_path / "audit.jsonl"
    log = AuditLog(
        path, clock=lambda: clock[0], rotate_bytes=1 << 20, rotate_age=86400, keep=10 * 86400
    )
    for _ in range(30):
        log.emit("refresh.fetched", status=200)
        clock[0] += timedelta(days=1)
    log.close()
    assert not (tmp_path / "audit.jsonl.1").exists()
    events = [json.loads(x)["event"] for p in [*rotated_files(path), path] for x in lines(p)]
    assert "audit.pruned" in events
    assert verify(path).ok
    # removing one more file by hand is not a recorded removal: the chain is broken
    rotated_files(path)[0].unlink()
    assert not verify(path).ok


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs, unmounted after the test."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(mount):
    """Fill the disk at mount to the last block; the file that fills it, to free it again."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    return filler


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to mount a tmpfs")
def test_a_full_disk_leaves_nothing_half_written_and_the_chain_goes_on(small_disk):
    mount = small_disk
    path = mount / "audit.jsonl"
    log = AuditLog(path)
    log.emit("daemon.started")
    filler = fill(mount)
    with pytest.raises(DiskFull) as full:
        for i in range(100):
            intent = log.intent("key.registered", address=f"a{i}@example.org", pad="x" * 3000)
            log.commit(intent)
    assert str(mount) in str(full.value)
    assert path.read_bytes().endswith(b"\n")  # whole lines only
    assert verify(path).ok
    with pytest.raises(DiskFull):  # lines wait: no decision may skip ahead of them
        log.intent("key.registered", address="late@example.org")
    log.emit("tor.state", state="ready")  # background lines wait quietly
    filler.unlink()
    log.emit("tor.state", state="off")
    log.close()
    records = [json.loads(x) for x in lines(path)]
    assert verify(path).ok and records[-1]["state"] == "off"
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to mount a tmpfs")
def test_recovery_on_a_full_disk_keeps_the_stores_copy_until_written(small_disk, tmp_path):
    from refreshd.store import Store

    mount = small_disk
    path = mount / "audit.jsonl"
    log, store = AuditLog(path), Store(tmp_path / "db.sqlite3")
    log.emit("daemon.started")
    intent = log.intent("key.registered", address="bob@example.org", pad="x" * 9000)
    with store.transaction():
        store.put_audit_intent(intent.seq, intent.line, log.written_seq)
    log.close()  # killed between commit and write
    filler = fill(mount)
    log = AuditLog(path)  # the next start, on a full disk: not fatal
    assert log.recover(store.audit_intents()) == 1
    with store.transaction():
        store.clear_audit_intents(log.written_seq)
    assert [s for s, _ in store.audit_intents()] == [intent.seq]  # kept: not written yet
    filler.unlink()
    log.emit("tor.state", state="ready")
    with store.transaction():
        store.clear_audit_intents(log.written_seq)
    assert store.audit_intents() == []
    log.close()
    store.close()
    records = [json.loads(x) for x in lines(path)]
    assert [r["event"] for r in records] == ["daemon.started", "key.registered", "tor.state"]
    assert verify(path).ok
