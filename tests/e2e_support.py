"""A refreshd daemon wired to the loopback world, observed the way an operator would observe it.

Why: the end-to-end scenarios drive a real `refreshd run` through its socket and command line,
and judge it by what it leaves behind (the audit log, the SQLite store opened read-only) and by
what the servers and Tor saw. This module holds the wiring and the patient waits they share.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.daemon_proc import Daemon, write_config
from tests.keyfactory import Gpg
from tests.world import names
from tests.world.ca import LocalCA
from tests.world.sks import SksServer
from tests.world.tornet import TorNetwork

HKP_NAME = names.HKP_HOSTS[0]
AuditLine = dict[str, Any]


def daemon_sections(tor: TorNetwork, ca: LocalCA, sks: SksServer) -> dict[str, dict[str, Any]]:
    """Config sections (on top of tests.daemon_proc.write_config's defaults): the private
    network's client Tor, the world's CA, SKS under its mapped test name, fast refreshes on
    request but a long cycle so that background refreshes stay rare, own key uploads to SKS."""
    return {
        "tor": tor.daemon_config(),
        "network": {"ca_file": str(ca.ca_file), "timeout": "30s"},
        "refresh": {"period": "1h", "minimum_lapse": "1s"},
        "discovery": {
            "order": ["wkd", "hkp"],
            "vks": [],
            "hkp": [f"hkp://{HKP_NAME}:{sks.port}"],
        },
        "own": {"upload": ["hkp"]},
    }


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy; AssertionError naming `what` if never."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Scene:
    """The daemon under test plus the keyring that makes the keys the servers publish."""

    daemon: Daemon
    gpg: Gpg
    state_dir: Path

    # -- talking to the daemon ------------------------------------------------------------
    def lookup(self, address: str, wait: float = 20) -> dict[str, Any]:
        result: dict[str, Any] = self.daemon.call("lookup", address=address, wait=wait)
        return result

    def history(self, address: str) -> dict[str, Any]:
        result: dict[str, Any] = self.daemon.call("history", address=address)
        return result

    def statuses(self, address: str) -> dict[str, str]:
        """fingerprint -> status (registered, retired, rejected) from `history`."""
        return {k["fingerprint"]: k["status"] for k in self.history(address)["keys"]}

    def tor_state(self) -> str:
        state: str = self.daemon.call("status")["tor"]["state"]
        return state

    def wait_tor(self, state: str, timeout: float) -> None:
        wait_for(lambda: self.tor_state() == state, timeout, f"Tor state {state!r}")

    def refresh(self, address: str, timeout: float = 60) -> AuditLine:
        """Ask for a refresh of the address's key; the refresh.fetched/failed line it caused,
        once the lines of the decision that fetch led to are in the log too.

        The daemon writes the fetch's line and then, with no await between, the decision's
        (key.kept, key.merged, ...): a reader of the file can see the first without the
        second, but the daemon answers no request in between, so one socket call after
        seeing the fetch's line waits for the decision's."""
        after = self.last_seq()
        fingerprint = self.daemon.call("refresh", address=address)["fingerprint"]
        line = self.wait_audit(
            lambda e: (
                e["event"] in ("refresh.fetched", "refresh.failed")
                and e.get("fingerprint") == fingerprint
            ),
            after,
            timeout,
        )
        self.daemon.call("status")
        return line

    # -- observing ------------------------------------------------------------------------
    def audit(self) -> list[AuditLine]:
        path = self.state_dir / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def last_seq(self) -> int:
        lines = self.audit()
        return int(lines[-1]["seq"]) if lines else 0

    def audit_since(self, after: int) -> list[AuditLine]:
        return [e for e in self.audit() if e["seq"] > after]

    def wait_audit(
        self, match: Callable[[AuditLine], bool], after: int, timeout: float = 60
    ) -> AuditLine:
        """The first audit line after seq `after` that `match`es, waiting for it."""

        def found() -> AuditLine | None:
            return next((e for e in self.audit_since(after) if match(e)), None)

        line: AuditLine = wait_for(found, timeout, "a matching audit line")
        return line

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """Read the daemon's store without writing to it (read-only URI, no WAL checkpoint)."""
        uri = f"file:{self.state_dir / 'refreshd.sqlite3'}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=10) as db:
            return [tuple(row) for row in db.execute(sql, args).fetchall()]

    def key_row(self, fingerprint: str) -> tuple[Any, ...] | None:
        rows = self.query(
            "SELECT data, expires, revoked, updated FROM keys WHERE fingerprint = ?", fingerprint
        )
        return rows[0] if rows else None

    # -- keys -----------------------------------------------------------------------------
    def new_key(self, uid: str, **kwargs: Any) -> str:
        return self.gpg.generate(uid, **kwargs)

    def public(self, fingerprint: str) -> bytes:
        return self.gpg.export(fingerprint)

    def armored(self, fingerprint: str) -> str:
        return self.gpg.run("--armor", "--export", fingerprint).decode("ascii")

    def revoke(self, fingerprint: str) -> bytes:
        """The key with the revocation certificate gpg made at generation merged in."""
        self.gpg.run("--import", data=self.gpg.revocation(fingerprint))
        return self.public(fingerprint)


@contextmanager
def recv_keyring(keyserver: str) -> Iterator[Callable[[str], str]]:
    """A throw-away GNUPGHOME whose dirmngr asks `keyserver`; yields recv(fingerprint) that
    runs `gpg --recv-keys` and returns the key's --with-colons listing. Its agent and dirmngr
    are stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="refreshd-recv-") as tmp:
        home = Path(tmp)
        home.chmod(0o700)
        # dirmngr's own DNS resolver fails without a DNS server even for an IP literal ("No
        # keyserver available"); the system resolver passes literals through untouched.
        (home / "dirmngr.conf").write_text(f"keyserver {keyserver}\nstandard-resolver\n")
        env = {**os.environ, "GNUPGHOME": str(home)}
        base = ["gpg", "--batch", "--no-tty"]

        def recv(fingerprint: str) -> str:
            received = subprocess.run(
                [*base, "--recv-keys", fingerprint], env=env, capture_output=True, timeout=60
            )
            if received.returncode != 0:
                raise AssertionError(f"gpg --recv-keys failed: {received.stderr.decode()}")
            listing = subprocess.run(
                [*base, "--with-colons", "--fixed-list-mode", "--list-keys", fingerprint],
                env=env,
                check=True,
                capture_output=True,
                timeout=60,
            )
            return listing.stdout.decode()

        try:
            yield recv
        finally:
            subprocess.run(
                ["gpgconf", "--homedir", str(home), "--kill", "all"],
                env=env,
                check=False,
                timeout=30,
            )


def colon_expiry(listing: str, record: str = "pub") -> int | None:
    """Field 7 (expiry, seconds since the epoch) of the first `record` line of a colon listing."""
    for line in listing.splitlines():
        fields = line.split(":")
        if fields[0] == record:
            return int(fields[6]) if fields[6] else None
    raise AssertionError(f"no {record} line in:\n{listing}")


def children_of(pid: int) -> list[tuple[int, str]]:
    """Live (pid, command line) pairs of the processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains `text` (e.g. a temp dir we created)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append((int(entry.name), cmdline.strip()))
    return found


@contextmanager
def running_scene(root: Path, sections: dict[str, dict[str, Any]]) -> Iterator[Scene]:
    """A real daemon configured with `sections` under `root`, a GnuPG home beside it, Tor
    ready; on leaving, the daemon stops cleanly (exit 0) and leaves no process behind."""
    gpg = Gpg(root / "keyring")
    daemon = Daemon(write_config(root, sections))
    try:
        scene = Scene(daemon, gpg, root / "state")
        scene.wait_tor("ready", 60)
        yield scene
    finally:
        daemon.stop()
        gpg.close()
    assert daemon.proc.returncode == 0, (root / "daemon.log").read_text()[-3000:]
    assert [c for c in children_of(os.getpid()) if "-m refreshd " in c[1]] == []
    assert processes_mentioning(str(gpg.home)) == []
