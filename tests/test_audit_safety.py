"""The audit log of a real `refreshd run` survives what a machine does to it: SIGKILL, a torn
last line, a full disk. After each, `refreshd audit verify` passes and no decision lacks its
line (SPEC 9)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from refreshd.openpgp.packets import armor
from tests.daemon_proc import REFRESHD, Daemon, RpcFailed, write_config
from tests.keyfactory import pgpy_key

FPR = "0123456789ABCDEF0123456789ABCDEF01234567"


def audit_lines(state: Path) -> list[dict]:
    return [json.loads(x) for x in (state / "audit.jsonl").read_text().splitlines()]


def audit_verify(d: Daemon) -> subprocess.CompletedProcess[str]:
    return d.cli("audit", "verify")


def kill(d: Daemon) -> None:
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d.log.close()


def test_a_torn_last_line_is_cut_at_start_and_audited(tmp_path):
    config = write_config(tmp_path, {})
    d = Daemon(config)
    d.call("used", address="bob@example.org", fingerprint=FPR, event="sent-encrypted")
    kill(d)
    audit = tmp_path / "state" / "audit.jsonl"
    torn = b'{"address":"carol@example.org","event":"key.used","fingerp'
    with audit.open("ab") as fh:  # the power went while this line was written
        fh.write(torn)
    d = Daemon(config)  # before: JSONDecodeError at every start
    try:
        assert d.call("status")["version"]
        result = audit_verify(d)
        assert result.returncode == 0, result.stdout + result.stderr
        cut = [r for r in audit_lines(tmp_path / "state") if r["event"] == "audit.truncated"]
        assert len(cut) == 1 and cut[0]["lost_bytes"] == len(torn)
        assert cut[0]["lost"] == torn.decode()
    finally:
        d.stop()


def test_sigkill_never_parts_a_decision_from_its_line(tmp_path):
    """Writes go on from another thread while the daemon is killed; after each restart every
    stored use has its key.used line and the chain is whole."""
    config = write_config(tmp_path, {})
    for round_ in range(4):
        d = Daemon(config)
        stop = threading.Event()

        def writer(d: Daemon = d, round_: int = round_, stop: threading.Event = stop) -> None:
            i = 0
            while not stop.is_set():
                try:
                    d.call(
                        "used",
                        address=f"u{round_}x{i}@example.org",
                        fingerprint=FPR,
                        event="received-signed",
                    )
                except (OSError, ValueError, RpcFailed):
                    return
                i += 1

        threads = [threading.Thread(target=writer) for _ in range(3)]
        for t in threads:
            t.start()
        threading.Event().wait(0.5 + 0.3 * round_)
        kill(d)
        stop.set()
        for t in threads:
            t.join()
    d = Daemon(config)
    try:
        assert audit_verify(d).returncode == 0
    finally:
        d.stop()
    db = sqlite3.connect(tmp_path / "state" / "refreshd.sqlite3")
    stored = {r[0] for r in db.execute("SELECT address FROM usage")}
    db.close()
    audited = {r["address"] for r in audit_lines(tmp_path / "state") if r["event"] == "key.used"}
    assert stored and stored <= audited


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to mount a tmpfs")
def test_a_full_disk_is_a_clear_error_and_the_chain_survives_it(tmp_path):
    root = tmp_path / "r"
    state = root / "state"
    state.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(state)], check=True
    )
    d: Daemon | None = None
    try:
        d = Daemon(write_config(root, {}))
        keys = [
            armor(pgpy_key(f"P{i} <p{i}@example.org>", expires=timedelta(days=400)))
            for i in range(12)
        ]
        d.call("observe", address="p0@example.org", key=keys[0], origin="autocrypt")
        filler = state / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError:
            pass
        os.close(fd)
        failures = []
        for i in range(1, 11):  # the disk is full: every answer is a result or a clear error
            try:
                d.call(
                    "observe",
                    address=f"p{i}@example.org",
                    key=keys[i],
                    origin="autocrypt",
                    url="https://example.org/" + "x" * 2000,
                )
            except RpcFailed as exc:
                failures.append(exc.message)
        assert failures, "the disk never filled up"
        assert all("no space left on the disk holding" in m and str(state) in m for m in failures)
        assert d.proc.poll() is None
        filler.unlink()
        got = d.call("observe", address="p11@example.org", key=keys[11], origin="autocrypt")
        assert got["decision"] == "registered"
    finally:
        if d is not None:
            d.stop()
        result = subprocess.run(
            [*REFRESHD, "--config", str(root / "config.toml"), "audit", "verify"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        registered = set()
        if (state / "refreshd.sqlite3").exists():
            db = sqlite3.connect(state / "refreshd.sqlite3")
            registered = {r[0] for r in db.execute("SELECT address FROM addresses")}
            db.close()
        lines = audit_lines(state) if (state / "audit.jsonl").exists() else []
        subprocess.run(["umount", "-l", str(state)], check=True)
    assert result.returncode == 0, result.stdout + result.stderr
    audited = {r["address"] for r in lines if r["event"] == "key.registered"}
    assert "p11@example.org" in registered and registered <= audited


def test_the_configured_rotation_applies_and_the_chain_spans_the_files(tmp_path):
    d = Daemon(write_config(tmp_path, {"audit": {"rotate_size": 4096, "rotate_age": "1d"}}))
    try:
        for i in range(40):
            d.call("used", address=f"c{i}@example.org", fingerprint=FPR, event="sent-encrypted")
        result = audit_verify(d)
    finally:
        d.stop()
    rotated = sorted((tmp_path / "state").glob("audit.jsonl.*"))
    assert len(rotated) >= 3 and all(p.stat().st_size <= 4096 for p in rotated)
    assert result.returncode == 0, result.stdout + result.stderr
