"""SIGKILL in the middle of 1,000 registrations: the database opens and every committed decision
is there (a real child process, killed for real)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from refreshd.store import Store

CHILD = textwrap.dedent("""
    import sys
    from datetime import UTC, datetime
    from pathlib import Path
    from refreshd.core.levels import Level, Way
    from refreshd.core.rules import Decision, DecisionKind, Rule
    from refreshd.store import KeyFacts, Store

    store = Store(Path(sys.argv[1]))
    now = datetime.now(UTC)
    for i in range(1000):
        fpr = f"{i:040X}"
        d = Decision(DecisionKind.REGISTERED, fpr, Level.WEAK_CHAIN, Way.HKP, False,
                     Rule.FIRST_CONTACT, f"decision {i}")
        with store.transaction():
            store.put_key(KeyFacts(fpr, None, False, True, None), b"k" * 2000, now)
            store.apply(f"user{i}@example.org", d, now)
        print(i, flush=True)
""")


def test_sigkill_mid_batch_keeps_every_committed_decision(tmp_path):
    db = tmp_path / "refreshd.sqlite3"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert child.stdout is not None
    committed = -1
    for line in child.stdout:
        committed = int(line)
        if committed >= 300:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    store = Store(db)  # opens cleanly: WAL recovery
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for i in range(committed + 1):
        reg = store.registration(f"user{i}@example.org")
        assert reg is not None and reg.fingerprint == f"{i:040X}"
        assert store.decisions(f"user{i}@example.org")[0]["reason"] == f"decision {i}"
    total = store.counts()["addresses"]
    assert committed + 1 <= total < 1000  # killed mid-batch, nothing half-written
    rows = store.db.execute("SELECT count(*) FROM keys").fetchone()[0]
    assert rows == total  # key and registration were one transaction
    store.close()
