"""Writing refreshed keys back into a real GnuPG keyring (gnupg.sync = true).

"Upstream" is a second GnuPG home holding the secret keys: it extends an expiry, and the
exported copy reaches the key manager as a refresh from WKD would. The user's keyring is then
read back with gpg itself.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from refreshd.core.levels import Level, Way
from refreshd.keymanager import Found
from tests.keyfactory import Gpg
from tests.test_gnupg_import import Rig, listing, stop_agent

WKD = Found(Way.WKD, Level.PROVIDER_TRUST, True)
# How GnuPG 2.2 itself fails beside any other writer of the same keyring (a plain
# `gpg --import`, as parcimonie runs, does the same); none damages the keyring, and the failed
# run changed nothing:
# - pubring.kbx is replaced by two renames (old -> pubring.kbx~, new -> pubring.kbx); a run
#   that opens the file between them fails with "No such file or directory";
# - a writer finds its key before it takes the lock; if another write replaced the file
#   meanwhile, the update refuses the stale offset ("Provided object is too large/short") or
#   no longer finds the block there ("keydb_get_keyblock failed: Value not found").
GNUPG_RACE = re.compile(
    r"gpg: (keydb_search\w* failed|update failed|keydb_get_keyblock failed): "
    r"(No such file or directory|Provided object is too (large|short)|Value not found)"
)
# gpg's lock protocol logs an error when the holder releases the lock while it reads the lock
# file, says "lockfile disappeared" and takes the lock; waiting for the lock is no error either
LOCK_NOISE = re.compile(
    r"gpg: (error opening lockfile '[^']*': No such file or directory|lockfile disappeared"
    r"|waiting for lock .*)"
)


def lock_errors(stderr: str) -> list[str]:
    return [
        line for line in stderr.splitlines() if "lock" in line and not LOCK_NOISE.fullmatch(line)
    ]


@dataclass
class Homes:
    upstream: Gpg
    user: Gpg
    keys: dict[str, str] = field(default_factory=dict)  # address -> fingerprint, in both
    stranger: tuple[str, str] = ("", "")  # address, fingerprint only upstream has


def make_homes(root: Path, count: int) -> Homes:
    upstream, user = Gpg(root / "upstream"), Gpg(root / "user")
    homes = Homes(upstream, user)
    for i in range(count):
        address = f"c{i}@example.org"
        homes.keys[address] = upstream.generate(f"Contact {i} <{address}>")
    user.run("--import", data=upstream.run("--export"))
    homes.stranger = ("stranger@example.net", upstream.generate("S <stranger@example.net>"))
    return homes


@pytest.fixture
def homes(tmp_path: Path) -> Iterator[Homes]:
    made = make_homes(tmp_path, 3)
    yield made
    made.upstream.close()
    made.user.close()


def keyring_digest(home: Path) -> str:
    out = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--export"], capture_output=True, check=True
    ).stdout
    return hashlib.sha256(out).hexdigest()


async def wait_for(rig: Rig, event: str, count: int, seconds: float = 60) -> dict:
    """The count-th audit event of that name, once it is there."""
    with trio.fail_after(seconds):
        while True:
            found = rig.events(event)
            if len(found) >= count:
                return found[count - 1]
            await trio.sleep(0.05)


async def wait_written(rig: Rig, keys: int) -> list[dict]:
    """The gnupg.synced events once they account for that many keys written."""
    with trio.fail_after(60):
        while True:
            found = rig.events("gnupg.synced")
            if sum(e["written"] for e in found) >= keys:
                return found
            await trio.sleep(0.05)


def hold_lock(home: Path) -> subprocess.Popen:
    """A live process named in the keyring's lock file, as a stuck gpg run would leave it."""
    holder = subprocess.Popen(["sleep", "60"])
    (home / "pubring.kbx.lock").write_text(f"{holder.pid:10d}\n{os.uname().nodename}\n")
    return holder


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


async def test_extended_key_reaches_the_keyring_and_nothing_else_does(
    homes: Homes, rigs: Callable[..., Rig]
) -> None:
    rig = rigs(sync=True, homedir=str(homes.user.home))
    rig.bridge.settle = 0.05
    (address, fpr), (other_address, other) = list(homes.keys.items())[:2]
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.bridge.run)
        imported = await rig.bridge.import_keyring("")
        assert imported["registered"] == 3
        first = await wait_written(rig, 3)  # the imported keys, written back as they were
        assert all(e["updated"] == {} for e in first)
        assert sum(e["unchanged"] for e in first) == 3
        n = len(first)

        homes.upstream.set_expire(fpr, "3y")
        assert rig.keys.consider(address, homes.upstream.export(fpr), WKD).decision == "merged"
        second = await wait_for(rig, "gnupg.synced", n + 1)
        assert second["updated"] == {fpr: ["new signatures"]}
        assert listing(homes.user.home)[fpr].expires == listing(homes.upstream.home)[fpr].expires

        # a key the keyring never had is registered in refreshd but not added to GnuPG
        s_address, s_fpr = homes.stranger
        assert rig.keys.consider(s_address, homes.upstream.export(s_fpr), WKD).registers
        third = await wait_for(rig, "gnupg.synced", n + 2)
        assert third["not_in_keyring"] == 1 and third["updated"] == {}
        assert s_fpr not in listing(homes.user.home)

        # tampered copies: another uid in place of the address, another key for it
        before = keyring_digest(homes.user.home)
        genuine = homes.upstream.export(fpr)
        forged = genuine.replace(address.encode(), b"zz" + address.encode()[2:])
        assert forged != genuine and len(forged) == len(genuine)
        # (merged with the stored copy it brings nothing: the forged uid is not self-signed)
        assert rig.keys.consider(address, forged, WKD).decision in ("kept", "rejected")
        wrong = Found(Way.VKS, Level.WEAK_CHAIN, True, asked_fingerprint=fpr)
        assert rig.keys.consider(address, homes.upstream.export(other), wrong).decision == (
            "rejected"
        )
        # even if a forged copy reached the writer, gpg's merge drops what is not self-signed
        rig.bridge._changed(fpr, forged)
        fourth = await wait_for(rig, "gnupg.synced", n + 3)
        assert fourth["updated"] == {} and fourth["unchanged"] == 1
        assert keyring_digest(homes.user.home) == before
        assert rig.keys.store.registration(other_address).fingerprint == other

        # the next genuine change still goes through, without the forged uid
        homes.upstream.set_expire(fpr, "4y")
        assert rig.keys.consider(address, homes.upstream.export(fpr), WKD).decision == "merged"
        await wait_for(rig, "gnupg.synced", n + 4)
        after = listing(homes.user.home)[fpr]
        assert after.expires == listing(homes.upstream.home)[fpr].expires
        assert [uid for _, uid in after.uids] == [f"Contact 0 <{address}>"]
        nursery.cancel_scope.cancel()
    assert rig.events("gnupg.sync_failed") == []
    stop_agent(homes.user.home)


async def test_sync_off_leaves_the_keyring_alone(homes: Homes, rigs: Callable[..., Rig]) -> None:
    rig = rigs(sync=False, homedir=str(homes.user.home))
    address, fpr = next(iter(homes.keys.items()))
    before = keyring_digest(homes.user.home)
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.bridge.run)
        await rig.bridge.import_keyring("")
        homes.upstream.set_expire(fpr, "3y")
        assert rig.keys.consider(address, homes.upstream.export(fpr), WKD).decision == "merged"
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert rig.keys.on_key_changed is None
    assert rig.events("gnupg.synced") == [] and keyring_digest(homes.user.home) == before
    stop_agent(homes.user.home)


async def test_held_lock_times_out_and_the_write_is_retried(
    homes: Homes, rigs: Callable[..., Rig]
) -> None:
    rig = rigs(sync=True, homedir=str(homes.user.home))
    rig.bridge.timeout, rig.bridge.retry_base, rig.bridge.settle = 2.0, 0.4, 0.05
    address, fpr = next(iter(homes.keys.items()))
    await rig.bridge.import_keyring("")
    await rig.bridge.sync_pending()
    n = len(rig.events("gnupg.synced"))
    holder = hold_lock(homes.user.home)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(rig.bridge.run)
            homes.upstream.set_expire(fpr, "3y")
            assert rig.keys.consider(address, homes.upstream.export(fpr), WKD).registers
            failed = await wait_for(rig, "gnupg.sync_failed", 1)
            assert failed["fingerprints"] == [fpr] and failed["attempt"] == 1
            assert "did not finish within 2 s" in failed["reason"] and failed["retry_in"] > 0
            holder.send_signal(signal.SIGTERM)
            holder.wait()
            (homes.user.home / "pubring.kbx.lock").unlink()
            done = await wait_for(rig, "gnupg.synced", n + 1)
            assert done["updated"] == {fpr: ["new signatures"]}
            nursery.cancel_scope.cancel()
    finally:
        holder.kill()
        holder.wait()
    assert listing(homes.user.home)[fpr].expires == listing(homes.upstream.home)[fpr].expires
    stop_agent(homes.user.home)


async def test_gpg_missing_is_retried_then_given_up(
    homes: Homes, rigs: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = rigs(sync=True, homedir=str(homes.user.home))
    rig.bridge.retry_base = 0.01
    monkeypatch.setattr("refreshd.gnupg.GPG", "/nonexistent/gpg")
    fpr = next(iter(homes.keys.values()))
    rig.bridge._changed(fpr, homes.upstream.export(fpr))
    await rig.bridge.sync_pending()
    failures = rig.events("gnupg.sync_failed")
    assert [f["attempt"] for f in failures] == list(range(1, 9))
    assert failures[-1].get("gave_up") is True and "could not be run" in failures[-1]["reason"]
    assert all("retry_in" in f for f in failures[:-1])
    assert rig.bridge._pending == {}


@dataclass
class Runs:
    codes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)


async def loop_gpg(home: Path, args: list[str], runs: Runs, stop: trio.Event) -> None:
    while not stop.is_set():
        done = await trio.run_process(
            ["gpg", "--homedir", str(home), "--batch", "--no-tty", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        runs.codes.append(done.returncode)
        runs.errors.append(done.stderr.decode("utf-8", "replace"))
        runs.counts.append(len(re.findall(rb"^pub:", done.stdout, re.M)))


@pytest.mark.slow
async def test_burst_of_syncs_beside_user_gpg(tmp_path: Path, rigs: Callable[..., Rig]) -> None:
    homes = make_homes(tmp_path, 30)
    try:
        own = homes.user.generate("Me <me@example.org>")
        rig = rigs(sync=True, homedir=str(homes.user.home))
        rig.bridge.settle, rig.bridge.retry_base = 0.05, 0.2
        await rig.bridge.import_keyring("")
        await rig.bridge.sync_pending()
        extended = {}
        for address, fpr in homes.keys.items():
            homes.upstream.set_expire(fpr, "3y")
            extended[address] = homes.upstream.export(fpr)
        readers, writers = Runs(), Runs()
        stop = trio.Event()
        async with trio.open_nursery() as daemon:
            await daemon.start(rig.bridge.run)
            async with trio.open_nursery() as user:
                user.start_soon(loop_gpg, homes.user.home, ["--with-colons", "--list-keys"],
                                readers, stop)  # fmt: skip
                # the user's own gpg writes too: it changes the expiry of the user's key
                user.start_soon(loop_gpg, homes.user.home, ["--pinentry-mode", "loopback",
                                "--passphrase", "", "--quick-set-expire", own, "2y"],
                                writers, stop)  # fmt: skip
                synced = len(rig.events("gnupg.synced"))
                for address, data in extended.items():
                    assert rig.keys.consider(address, data, WKD).decision == "merged"
                    synced += 1
                    await wait_for(rig, "gnupg.synced", synced)
                stop.set()  # the loops finish their current run
            daemon.cancel_scope.cancel()
        failed = rig.events("gnupg.sync_failed")
        updated = {f for e in rig.events("gnupg.synced") for f in e["updated"]}
        assert updated == set(homes.keys.values())
        for f in failed:  # our write met gpg's race: retried, never given up
            assert "retry_in" in f and (
                GNUPG_RACE.search(f["reason"]) or LOCK_NOISE.search(f["reason"])
            )

        assert writers.codes
        for code, err in zip(writers.codes, writers.errors, strict=True):
            assert code == 0 or (code == 2 and (GNUPG_RACE.search(err) or LOCK_NOISE.search(err)))
        assert not any(lock_errors(e) for e in writers.errors + readers.errors)
        again = run("gpg", "--homedir", str(homes.user.home), "--batch", "--pinentry-mode",
                    "loopback", "--passphrase", "", "--quick-set-expire", own, "3y")  # fmt: skip
        assert again.returncode == 0, again.stderr
        keys_total = len(homes.keys) + 1
        for code, err, count in zip(readers.codes, readers.errors, readers.counts, strict=True):
            if code:  # only ever gpg's own race, never a lock error or a broken file:
                # the race hits either the listing (nothing listed) or the trustdb check
                # that runs ahead of it (the whole listing follows); never half a keyring
                assert code == 2 and GNUPG_RACE.search(err) and count in (0, keys_total), err
            else:
                assert count == keys_total, err
        window = sum(map(bool, readers.codes))
        stale = sum(map(bool, writers.codes))
        print(f"readers {len(readers.codes)}, {window} failed in gpg's race; user writes "
              f"{len(writers.codes)}, {stale} failed in gpg's race; "
              f"our retried writes {len(failed)}")  # fmt: skip

        check = run("gpg", "--homedir", str(homes.user.home), "--batch", "--check-trustdb")
        assert check.returncode == 0, check.stderr
        stats = run("kbxutil", "--stats", str(homes.user.home / "pubring.kbx"))
        assert stats.returncode == 0 and re.search(r"openpgp:\s+31\b", stats.stdout), stats
        final, upstream = listing(homes.user.home), listing(homes.upstream.home)
        assert all(final[f].expires == upstream[f].expires for f in homes.keys.values())
    finally:
        homes.upstream.close()
        homes.user.close()
