"""The audit chain detects every kind of edit, across rotation."""

from __future__ import annotations

import json
from pathlib import Path

from refreshd.audit import GENESIS, AuditLog, chain_hash, verify


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
