"""Importing a real GnuPG keyring: what refreshd records for every address agrees with gpg.

The keyring holds 50 keys made by gpg and sq: live, expired, revoked, multi-uid with a revoked
uid, one without any email address, an ultimately trusted one, the user's own (secret) key, a
verified transition (old key certifies new key) and an expired key followed by a new one.
gpg's own --with-colons listing is the oracle.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from refreshd.audit import AuditLog
from refreshd.cli import progress_line
from refreshd.config import Config, DaemonConfig, GnupgConfig
from refreshd.errors import InvalidRequest
from refreshd.gnupg import NO_ADDRESS, GnupgBridge
from refreshd.keymanager import KeyManager
from refreshd.store import Store
from tests.keyfactory import Gpg, Sq

NOW = datetime.now(UTC).replace(microsecond=0)
DOMAINS = ("example.org", "example.net", "Example.COM")


@dataclass
class Listed:
    fingerprint: str
    validity: str  # gpg's key validity: e expired, r revoked, u ultimate, - f q ... live
    expires: str  # seconds since the epoch, "" for none
    uids: list[tuple[str, str]]  # (uid validity, uid text)


def colons(home: Path, what: str) -> str:
    """gpg's machine-readable listing (--list-keys, --list-secret-keys) of the keyring."""
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--with-colons", what],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()


def listing(home: Path) -> dict[str, Listed]:
    """gpg's view of every key in the keyring."""
    out = colons(home, "--list-keys")
    keys: dict[str, Listed] = {}
    current: Listed | None = None
    want_fpr = False
    for line in out.splitlines():
        f = line.split(":")
        if f[0] == "pub":
            current, want_fpr = Listed("", f[1], f[6], []), True
        elif f[0] == "fpr" and want_fpr and current is not None:
            current.fingerprint, want_fpr = f[9], False
            keys[current.fingerprint] = current
        elif f[0] == "uid" and current is not None:
            current.uids.append((f[1], f[9].replace("\\x3a", ":")))
        elif f[0] == "sub":
            want_fpr = False
    return keys


def stop_agent(home: Path) -> None:
    """The bridge's --list-secret-keys may have started gpg-agent for this home."""
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, timeout=30)


def secret_keys(home: Path) -> set[str]:
    out = colons(home, "--list-secret-keys")
    lines = [line.split(":") for line in out.splitlines()]
    return {b[9] for a, b in itertools.pairwise(lines) if a[0] == "sec" and b[0] == "fpr"}


def email_of(uid: str) -> str | None:
    m = re.search(r"<([^<>@\s]+)@([^<>\s]+)>$", uid)
    return f"{m.group(1)}@{m.group(2).lower()}" if m else None


def files_digest(home: Path) -> dict[str, str]:
    """Content of every regular file of a GnuPG home (sockets aside)."""
    return {
        str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(home.rglob("*"))
        if p.is_file()
    }


@dataclass
class Rig:
    """A key manager on a fresh store and audit log, with its GnuPG bridge."""

    state: Path
    keys: KeyManager
    bridge: GnupgBridge
    audit: AuditLog

    def events(self, event: str) -> list[dict]:
        lines = (self.state / "audit.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["event"] == event]

    def close(self) -> None:
        self.keys.store.close()
        self.audit.close()


def make_rig(state: Path, *, sync: bool = False, homedir: str = "") -> Rig:
    cfg = Config(
        daemon=DaemonConfig(state_dir=state), gnupg=GnupgConfig(sync=sync, homedir=homedir)
    )
    audit = AuditLog(state / "audit.jsonl")
    keys = KeyManager(Store(state / "refreshd.sqlite3"), audit, cfg)
    return Rig(state, keys, GnupgBridge(cfg, keys, audit), audit)


@dataclass(frozen=True)
class Keyring:
    home: Path
    own: str  # fingerprint of the user's own key (secret in the keyring)
    trusted: str  # fingerprint given ultimate ownertrust
    no_address: str
    old: str  # certifies new on moving@example.org
    new: str


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyring]:
    root = tmp_path_factory.mktemp("gnupg-keyring")
    maker, user, sq = Gpg(root / "maker"), Gpg(root / "user"), Sq(root / "sq")
    past = NOW - timedelta(days=730)
    try:
        live = [
            maker.generate(f"Person {i} <p{i}@{DOMAINS[i % 3]}>", "future-default", "default", "1y")
            for i in range(27)
        ]
        no_address = maker.generate("Only A Name", "future-default", "default", "1y")
        for i in range(4):
            fpr = maker.generate(f"Multi {i} <m{i}@example.org>", "future-default", "default", "2y")
            maker.add_uid(fpr, f"Multi {i} at work <m{i}.work@example.net>")
            maker.add_uid(fpr, f"Multi {i} old <m{i}.old@example.com>")
            if i == 0:
                maker.revoke_uid(fpr, f"Multi {i} old <m{i}.old@example.com>")
        for i in range(4):
            maker.generate(
                f"Expired {i} <x{i}@example.org>", "future-default", "default", "1y", at=past
            )
        for i in range(3):
            fpr = maker.generate(
                f"Revoked {i} <r{i}@example.net>", "future-default", "default", "1y"
            )
            maker.run("--import", data=maker.revocation(fpr))
        old = maker.generate("Mover <moving@example.org>", "future-default", "default", "2y",
                             at=NOW - timedelta(days=30))  # fmt: skip
        new = maker.generate("Mover <moving@example.org>", "future-default", "default", "2y")
        maker.certify(old, new, "Mover <moving@example.org>")
        maker.generate("Renewed <renewed@example.org>", "future-default", "default", "1y", at=past)
        maker.generate("Renewed <renewed@example.org>", "future-default", "default", "2y")
        user.run("--import", data=maker.run("--export"))
        for i in range(4):
            user.run("--import", data=sq.cert(sq.generate(f"Sq {i} <sq{i}@example.net>")))
        user.run("--import", data=sq.cert(sq.generate("Sq two <sq.a@example.org>",
                                                      "Sq two <sq.b@example.com>")))  # fmt: skip
        user.run("--import", data=sq.cert(sq.generate("Sq old <sq.x@example.org>",
                                                      expires_in="1y", created=past)))  # fmt: skip
        own = user.generate("Me <me@example.org>", "future-default", "default", "1y")
        trusted = live[0]  # ultimate ownertrust without a secret key; the own key the reverse
        user.run("--import-ownertrust", data=f"{trusted}:6:\n{own}:5:\n".encode())
        user.close()  # the agent started by keygen; the bridge must cope without it
        yield Keyring(user.home, own, trusted, no_address, old, new)
    finally:
        maker.close()
        user.close()


async def test_import_matches_gpg_for_every_address(
    keyring: Keyring, rigs: Callable[..., Rig]
) -> None:
    rig = rigs()
    keys, bridge = rig.keys, rig.bridge
    before = files_digest(keyring.home)
    result = await bridge.import_keyring(str(keyring.home))
    assert files_digest(keyring.home) == before  # reading changed nothing, trust db included
    assert result["warnings"] == []
    stop_agent(keyring.home)

    gpg = listing(keyring.home)
    secret = secret_keys(keyring.home)
    assert len(gpg) == 50 == result["keys"]
    assert gpg[keyring.trusted].validity == "u" and keyring.trusted not in secret
    assert gpg[keyring.own].validity != "u" and secret == {keyring.own}

    expected: dict[str, list[Listed]] = {}
    for key in gpg.values():
        for validity, uid in key.uids:
            address = email_of(uid)
            if address and (validity != "r" or key.validity == "r"):  # a revoked key's uids show r
                expected.setdefault(address, []).append(key)
    assert result["addresses"] == sum(len(v) for v in expected.values())
    revoked_uid = email_of("<m0.old@example.com>")
    assert revoked_uid not in expected and keys.history(revoked_uid)["keys"] == []

    for address, listed in expected.items():
        rows = {r["fingerprint"]: r for r in keys.history(address)["keys"]}
        assert set(rows) == {k.fingerprint for k in listed}, address
        for key in listed:
            row = rows[key.fingerprint]
            if key.validity == "e":
                assert row["status"] == "rejected" and "expired" in row["reason"], row
            elif key.validity == "r":
                assert row["status"] == "rejected" and "revoked" in row["reason"], row
            elif key.validity == "u" or key.fingerprint in secret:
                assert (row["status"], row["validation"]) == ("registered", "known-key"), row
                assert row["source"] == "gnupg-trusted"
            else:
                assert row["validation"] == "weak-chain" and row["source"] == "gnupg", row
                assert row["status"] == ("retired" if key.fingerprint == keyring.old
                                         else "registered"), row  # fmt: skip
        registration = keys.store.registration(address)
        live = [k for k in listed if k.validity not in ("e", "r")]
        assert (registration is None) == (not live), address
    assert keys.store.registration("moving@example.org").fingerprint == keyring.new
    moved = keys.history("moving@example.org")["decisions"]
    assert [d["rule"] for d in moved] == ["1", "3.1"]  # the transition certification was kept

    skipped = {s["fingerprint"]: s["reason"] for s in result["skipped"]}
    dead = {k.fingerprint for k in gpg.values() if k.validity in ("e", "r")}
    assert set(skipped) == dead | {keyring.no_address}
    assert skipped[keyring.no_address] == NO_ADDRESS
    assert (
        result["registered"] + result["replaced"]
        == len([a for a in expected if keys.store.registration(a)]) + 1
    )  # moving@ was registered, then replaced


async def test_second_import_changes_nothing(keyring: Keyring, rigs: Callable[..., Rig]) -> None:
    rig = rigs()
    keys, bridge = rig.keys, rig.bridge
    first = await bridge.import_keyring(str(keyring.home))
    counts = keys.store.counts()
    again = await bridge.import_keyring(str(keyring.home))
    stop_agent(keyring.home)
    assert keys.store.counts() == counts
    assert again["registered"] == again["replaced"] == again["merged"] == 0
    # every registration is kept; the retired key of moving@ is now a rejected stranger
    assert again["kept"] == first["registered"] + first["replaced"] - 1
    assert again["rejected"] == first["rejected"] + 1
    assert again["addresses"] == first["addresses"]


async def test_missing_homedir_and_empty_keyring(tmp_path: Path, rigs: Callable[..., Rig]) -> None:
    rig = rigs()
    bridge = rig.bridge
    with pytest.raises(InvalidRequest) as info:
        await bridge.import_keyring(str(tmp_path / "nowhere"))
    assert "not a directory" in info.value.reason
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    result = await bridge.import_keyring(str(empty))
    stop_agent(empty)
    assert result["keys"] == result["addresses"] == 0 and result["skipped"] == []
    assert rig.events("gnupg.imported")[-1]["keys"] == 0


async def test_no_trust_db_and_no_agent(tmp_path: Path, rigs: Callable[..., Rig]) -> None:
    """A keyring without a trust db and where gpg-agent cannot start: the import creates
    neither, and the user's own key, no longer recognisable, is only weak-chain."""
    user = Gpg(tmp_path / "home")
    own = user.generate("Me <me@example.org>")
    user.close()
    (user.home / "trustdb.gpg").unlink()
    (user.home / "gpg.conf").write_text("agent-program /nonexistent/gpg-agent\n")
    before = files_digest(user.home)
    rig = rigs()
    result = await rig.bridge.import_keyring(str(user.home))
    assert files_digest(user.home) == before
    assert (
        len(result["warnings"]) == 1
        and "Secret keys could not be listed" in (result["warnings"][0])
    )
    registration = rig.keys.store.registration("me@example.org")
    assert (registration.fingerprint, registration.level.value) == (own, "weak-chain")
    assert rig.events("gnupg.imported")[-1]["warnings"] == result["warnings"]


async def test_an_import_shows_its_progress_while_it_runs(
    keyring: Keyring, rigs: Callable[..., Rig]
) -> None:
    """`status` reads bridge.importing (keys decided of how many): it counts up while the
    import runs and is gone once it has answered."""
    rig = rigs()
    bridge = rig.bridge
    seen: list[tuple[int, int]] = []

    async def watch() -> None:
        while True:
            if bridge.importing is not None:
                seen.append((bridge.importing["done"], bridge.importing["total"]))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        result = await bridge.import_keyring(str(keyring.home))
        nursery.cancel_scope.cancel()
    stop_agent(keyring.home)
    assert bridge.importing is None
    totals = {total for _, total in seen}
    assert totals == {result["keys"]}  # every key read is decided (none unreadable here)
    done = [d for d, _ in seen]
    # the import may clear its progress right after the last key, before the watcher looks
    assert done == sorted(done) and result["keys"] - 1 <= done[-1] <= result["keys"]
    assert len(set(done)) >= result["keys"] // 2  # seen counting up, not only at the end


def test_the_progress_line_gives_a_count_a_share_and_a_rate() -> None:
    line = progress_line({"done": 1500, "total": 6000, "started_at": 100.0}, 110.0)
    assert line == "importing: 1,500 of 6,000 keys (25%), 150 keys/s"
    assert progress_line({"done": 0, "total": 0, "started_at": 5.0}, 5.0).startswith(
        "importing: 0 of 0 keys,"
    )
