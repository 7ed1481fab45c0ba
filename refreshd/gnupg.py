"""Living beside GnuPG: import a keyring into refreshd, and write refreshed keys back into it.

Rules:
- Reading a keyring changes nothing in it: only `--export`, `--export-ownertrust` (when there
  is a trust db) and the listings run, with `--no-auto-check-trustdb` and the listings with
  `--trust-model always`, so not even the trust db is written or created.
- Every key goes through the decision engine once for each address of a valid self-signed
  user id: at weak-chain (source `gnupg`), or at known-key (source `gnupg-trusted`) when GnuPG
  trusts it ultimately or holds its secret key (the user's own keys).
- Keys are considered oldest first, with the certifications other keyring keys and registered
  keys made on them, so a newer key of the same person can arrive as a verified transition
  (rule 3.1) from the older one.
- Writing back (`gnupg.sync`) imports with `--import-options merge-only`: gpg updates the keys
  it has, never adds a key it does not have, and never removes anything. Changed keys are
  coalesced by fingerprint and written in one gpg run after a short settle delay; only one gpg
  runs from here at a time. gpg's lock file serialises our writes with the user's; GnuPG 2.2
  readers take no lock, so a user's gpg started during a write may fail once (as beside any
  other writer, parcimonie included), which is why writes happen only for real changes.
- A failed write is retried with backoff, at most MAX_ATTEMPTS times; each outcome is audited
  (`gnupg.synced`, `gnupg.sync_failed`).
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from refreshd.audit import AuditLog
from refreshd.config import Config, expand_path
from refreshd.core import levels
from refreshd.core.levels import Way
from refreshd.core.rules import DecisionKind
from refreshd.core.schedule import backoff
from refreshd.errors import GpgFailed, InvalidRequest, KeyRejected
from refreshd.keymanager import Found, KeyManager
from refreshd.openpgp.intake import Intake, read_cert
from refreshd.openpgp.packets import Cert, StreamingKeyFilter, key_fingerprint

__all__ = ["GnupgBridge"]

GPG = "gpg"
GPG_TIMEOUT = 60.0  # one gpg run; a stale lock held by a live process ends here
EXPORT_TIMEOUT = 600.0  # exporting a large keyring
EXPORT_LIMIT = 1 << 40  # the keyring is the user's own: no size cap on the whole export
MAX_ATTEMPTS = 8
RETRY_BASE = 30.0
RETRY_CAP = 3600.0
SETTLE = 1.0  # after the first change, wait this long so a burst becomes one gpg run
ULTIMATE = "6"  # ownertrust value of an ultimately trusted key
# IMPORT_OK flag bits (doc/DETAILS of GnuPG) -> what changed in the keyring
IMPORT_FLAGS = ((1, "new key"), (2, "new user ids"), (4, "new signatures"), (8, "new subkeys"))
IMPORT_PROBLEMS = {
    "0": "no specific reason",
    "1": "invalid certificate",
    "2": "issuer certificate missing",
    "3": "certificate chain too long",
    "4": "error storing certificate",
}
NO_TRUSTDB = ("--trust-model", "always")  # a listing that neither reads nor creates trustdb.gpg
NO_ADDRESS = "The key has no valid self-signed user ID with an email address."


# --- pure: reading gpg's output ----------------------------------------------------------------


def resolve_homedir(requested: str, configured: str, env: Mapping[str, str]) -> Path:
    """The GnuPG home: the one asked for, else gnupg.homedir, else $GNUPGHOME, else ~/.gnupg."""
    chosen = requested or configured or env.get("GNUPGHOME", "") or "~/.gnupg"
    return expand_path(chosen)


def ultimately_trusted(ownertrust: str) -> frozenset[str]:
    """Fingerprints with ultimate ownertrust in `gpg --export-ownertrust` output."""
    found = set()
    for line in ownertrust.splitlines():
        fields = line.strip().split(":")
        if not line.startswith("#") and len(fields) >= 2 and fields[1] == ULTIMATE:
            found.add(fields[0].upper())
    return frozenset(found)


def primary_fingerprints(colons: str, record: str) -> frozenset[str]:
    """Fingerprints of primary keys in a `--with-colons` listing (record "pub" or "sec")."""
    found = set()
    after_primary = False
    for line in colons.splitlines():
        fields = line.split(":")
        if fields[0] == "fpr" and after_primary and len(fields) > 9:
            found.add(fields[9].upper())
        if fields[0] != "grp":
            after_primary = fields[0] == record
    return frozenset(found)


@dataclass(frozen=True)
class ImportReport:
    """What `gpg --import --status-fd` said, per fingerprint."""

    changed: Mapping[str, tuple[str, ...]]  # fingerprint -> what changed
    unchanged: frozenset[str]
    problems: Mapping[str, str]  # fingerprint -> reason
    summary: bool  # gpg reached IMPORT_RES: the run itself completed


def parse_import_status(status: str) -> ImportReport:
    changed: dict[str, tuple[str, ...]] = {}
    unchanged: set[str] = set()
    problems: dict[str, str] = {}
    summary = False
    for line in status.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "[GNUPG:]":
            continue
        kind, args = words[1], words[2:]
        if kind == "IMPORT_OK" and len(args) >= 2 and args[0].isdigit():
            flags = int(args[0])
            what = tuple(name for bit, name in IMPORT_FLAGS if flags & bit)
            if what:
                changed[args[1].upper()] = what
            else:
                unchanged.add(args[1].upper())
        elif kind == "IMPORT_PROBLEM" and len(args) >= 2:
            problems[args[1].upper()] = IMPORT_PROBLEMS.get(args[0], f"problem {args[0]}")
        elif kind == "IMPORT_RES":
            summary = True
    return ImportReport(changed, frozenset(unchanged), problems, summary)


@dataclass(frozen=True)
class WriteOutcome:
    updated: Mapping[str, tuple[str, ...]]
    unchanged: frozenset[str]
    absent: frozenset[str]  # not in the keyring: merge-only left them out
    retry: frozenset[str]


def write_outcome(offered: frozenset[str], report: ImportReport, returncode: int) -> WriteOutcome:
    """What one merge-only import did with the offered keys. gpg exits 0 only when every key
    was merged, found unchanged or skipped as new; otherwise, and for every key it names a
    problem with, a key it did not confirm is written again later."""
    confirmed = (report.changed.keys() | report.unchanged) & offered
    if not report.summary or returncode:
        retry = offered - confirmed
    else:
        retry = (report.problems.keys() & offered) - confirmed
    return WriteOutcome(
        updated={f: w for f, w in report.changed.items() if f in offered},
        unchanged=report.unchanged & offered,
        absent=offered - confirmed - retry,
        retry=frozenset(retry),
    )


def failure_reason(returncode: int, stderr: bytes) -> str:
    """gpg's last words, as one line."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    tail = "; ".join(lines[-3:]) if lines else "no message"
    return f"gpg exited with status {returncode}: {tail}"


# --- the shell ---------------------------------------------------------------------------------


class GnupgBridge:
    def __init__(self, cfg: Config, keys: KeyManager, audit: AuditLog) -> None:
        self.cfg = cfg
        self.keys = keys
        self.audit = audit
        self.timeout = GPG_TIMEOUT
        self.retry_base = RETRY_BASE
        self.settle = SETTLE
        self.rng = random.Random()
        self._gpg_lock = trio.Lock()  # never two gpg runs from here at once
        self._import_lock = trio.Lock()
        # the import under way, for `status`: keys decided of how many, since when
        self.importing: dict[str, Any] | None = None
        self._pending: dict[str, bytes] = {}
        self._wake = trio.Event()
        if cfg.gnupg.sync:
            keys.on_key_changed = self._changed

    @property
    def sync_homedir(self) -> Path:
        return resolve_homedir("", self.cfg.gnupg.homedir, os.environ)

    # -- running gpg ------------------------------------------------------------------------
    def _command(self, home: Path, *args: str) -> list[str]:
        return [GPG, "--homedir", str(home), "--batch", "--no-tty", "--no-auto-check-trustdb",
                *args]  # fmt: skip

    async def _gpg(self, home: Path, *args: str, stdin: bytes = b"") -> tuple[int, bytes, bytes]:
        """One gpg run under the lock and a timeout: (returncode, stdout, stderr)."""
        async with self._gpg_lock:
            try:
                with trio.fail_after(self.timeout):
                    done = await trio.run_process(
                        self._command(home, *args),
                        stdin=stdin,
                        capture_stdout=True,
                        capture_stderr=True,
                        check=False,
                    )
            except trio.TooSlowError as exc:
                raise GpgFailed(f"gpg did not finish within {self.timeout:.0f} s") from exc
            except OSError as exc:
                raise GpgFailed(f"gpg could not be run: {exc}") from exc
        return done.returncode, done.stdout, done.stderr

    async def _read(self, home: Path, *args: str) -> str:
        code, out, err = await self._gpg(home, *args)
        if code:
            raise GpgFailed(failure_reason(code, err))
        return out.decode("utf-8", "replace")

    async def _export(self, home: Path, keep: frozenset[str]) -> list[Cert]:
        """`gpg --export`, stripped as it streams (certifications by `keep` are kept)."""
        filt = StreamingKeyFilter(
            max_response_bytes=EXPORT_LIMIT, max_key_bytes=EXPORT_LIMIT, keep_issuers=keep
        )
        errors = bytearray()

        async def pump(stream: trio.abc.ReceiveStream, sink: Callable[[bytes], object]) -> None:
            async for chunk in stream:
                sink(chunk)

        async with self._gpg_lock:
            try:
                with trio.fail_after(EXPORT_TIMEOUT):
                    async with trio.open_nursery() as nursery:
                        proc = await nursery.start(
                            partial(
                                trio.run_process,
                                self._command(home, "--export"),
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE,
                                check=False,
                            )
                        )
                        nursery.start_soon(pump, proc.stderr, errors.extend)
                        await pump(proc.stdout, filt.feed)
                code = proc.returncode
            except trio.TooSlowError as exc:
                raise GpgFailed(
                    f"gpg --export did not finish within {EXPORT_TIMEOUT:.0f} s"
                ) from exc
            except OSError as exc:
                raise GpgFailed(f"gpg could not be run: {exc}") from exc
            except KeyRejected as exc:
                raise GpgFailed(f"the exported keyring could not be read: {exc.reason}") from exc
        if code:
            raise GpgFailed(failure_reason(code, bytes(errors)))
        if filt.bytes_in == 0:
            return []
        try:
            return filt.finish_certificates()
        except KeyRejected as exc:
            raise GpgFailed(f"the exported keyring could not be read: {exc.reason}") from exc

    # -- import -----------------------------------------------------------------------------
    async def import_keyring(self, homedir: str) -> dict[str, Any]:
        """Register the public keys of a GnuPG keyring (socket method import_gnupg)."""
        home = resolve_homedir(homedir, self.cfg.gnupg.homedir, os.environ)
        if not home.is_dir():
            raise InvalidRequest(f"{home} is not a directory")
        async with self._import_lock:
            trusted, warnings = await self._trusted(home)
            try:
                listed = await self._read(home, *NO_TRUSTDB, "--with-colons", "--list-keys")
                keep = primary_fingerprints(listed, "pub") | self.keys.keep_for(None)
                certs = await self._export(home, keep)
            except GpgFailed as exc:
                raise GpgFailed(f"Reading {home} failed: {exc.reason}") from exc
            result = await self._consider_all(certs, trusted)
        self.audit.emit("gnupg.imported", homedir=str(home),
                        **{k: v for k, v in result.items() if k != "skipped"},
                        skipped=len(result["skipped"]), warnings=warnings)  # fmt: skip
        return {"homedir": str(home), **result, "warnings": warnings}

    async def _trusted(self, home: Path) -> tuple[frozenset[str], list[str]]:
        """Keys GnuPG trusts ultimately or holds the secret of; what could not be read of that
        (no gpg-agent, a read-only home) only lowers those keys to weak-chain, with a warning."""
        trusted: frozenset[str] = frozenset()
        warnings = []
        if (home / "trustdb.gpg").exists():  # without one, nothing is trusted yet
            try:
                trusted = ultimately_trusted(await self._read(home, "--export-ownertrust"))
            except GpgFailed as exc:
                warnings.append(f"Ownertrust could not be read ({exc.reason}).")
        try:
            listing = await self._read(home, *NO_TRUSTDB, "--with-colons", "--list-secret-keys")
            trusted |= primary_fingerprints(listing, "sec")
        except GpgFailed as exc:
            warnings.append(
                f"Secret keys could not be listed ({exc.reason}); the user's own keys count as "
                "known-key only if they are ultimately trusted."
            )
        return trusted, warnings

    async def _consider_all(self, certs: list[Cert], trusted: frozenset[str]) -> dict[str, Any]:
        counts = dict.fromkeys((kind.value for kind in DecisionKind), 0)
        skipped: list[dict[str, str]] = []
        views = []
        for cert in certs:
            try:
                parsed = read_cert(cert, self.keys.clock())
                views.append((parsed.view, Intake((parsed,), ())))
            except KeyRejected as exc:
                fpr = key_fingerprint(cert.primary.packet.body).hex().upper()
                skipped.append({"fingerprint": fpr, "reason": f"Unreadable: {exc.reason}"})
            await trio.lowlevel.checkpoint()
        views.sort(key=lambda vd: (vd[0].primary.created, vd[0].fingerprint))
        self.importing = {
            "done": 0,
            "total": len(views),
            "started_at": self.keys.clock().timestamp(),
        }
        try:
            addresses = await self._decide_all(views, trusted, counts, skipped)
        finally:
            self.importing = None
        return {"keys": len(certs), "addresses": addresses, **counts, "skipped": skipped}

    async def _decide_all(
        self,
        views: list[tuple[Any, Intake]],
        trusted: frozenset[str],
        counts: dict[str, int],
        skipped: list[dict[str, str]],
    ) -> int:
        """Each key through the rules, oldest first; the number of addresses decided."""
        addresses = 0
        for view, data in views:
            assert self.importing is not None
            self.importing["done"] += 1
            source = Way.GNUPG_TRUSTED if view.fingerprint in trusted else Way.GNUPG
            found = Found(source, *levels.for_source(source))
            if not view.addresses():
                skipped.append({"fingerprint": view.fingerprint, "reason": NO_ADDRESS})
                continue
            decisions = [self.keys.consider(a, data, found) for a in sorted(view.addresses())]
            addresses += len(decisions)
            for d in decisions:
                counts[d.decision.value] += 1
            if not any(d.registers for d in decisions):
                skipped.append({"fingerprint": view.fingerprint, "reason": decisions[-1].reason})
            await trio.lowlevel.checkpoint()
        return addresses

    # -- sync -------------------------------------------------------------------------------
    def _changed(self, fingerprint: str, key_bytes: bytes) -> None:
        """KeyManager callback: queue the merged key for writing back (never blocks)."""
        self._pending[fingerprint] = key_bytes
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write changed keys back, one batch at a time, for as long as the daemon runs."""
        task_status.started()
        if not self.cfg.gnupg.sync:
            await trio.sleep_forever()
        while True:
            await self._wake.wait()
            await trio.sleep(self.settle)
            self._wake = trio.Event()
            if self._pending:
                await self.sync_pending()

    async def sync_pending(self) -> None:
        """Write everything queued; retry what failed, with backoff, up to MAX_ATTEMPTS."""
        home = self.sync_homedir
        for attempt in range(1, MAX_ATTEMPTS + 1):
            batch, self._pending = {**self._pending}, {}
            if not batch:
                return
            failed, reason = await self._write(home, batch)
            if not failed:
                return
            for fpr in failed:  # a newer copy queued meanwhile wins
                self._pending.setdefault(fpr, batch[fpr])
            final = attempt == MAX_ATTEMPTS
            delay = backoff(attempt, base=self.retry_base, cap=RETRY_CAP, rng=self.rng)
            self.audit.emit(
                "gnupg.sync_failed",
                homedir=str(home),
                fingerprints=sorted(failed),
                attempt=attempt,
                reason=reason,
                **({"gave_up": True} if final else {"retry_in": round(delay, 1)}),
            )
            if final:
                for fpr in failed:
                    if self._pending.get(fpr) is batch[fpr]:  # a newer copy gets its own tries
                        del self._pending[fpr]
                return
            await trio.sleep(delay)

    async def _write(self, home: Path, batch: dict[str, bytes]) -> tuple[frozenset[str], str]:
        """One merge-only import of the batch; the fingerprints to retry, and why."""
        try:
            code, out, err = await self._gpg(
                home, "--import-options", "merge-only", "--status-fd", "1", "--import",
                stdin=b"".join(batch.values()),
            )  # fmt: skip
        except GpgFailed as exc:
            return frozenset(batch), exc.reason
        report = parse_import_status(out.decode("utf-8", "replace"))
        done = write_outcome(frozenset(batch), report, code)
        if done.updated or done.unchanged or done.absent:
            self.audit.emit(
                "gnupg.synced",
                homedir=str(home),
                written=len(batch) - len(done.retry),
                updated={fpr: list(what) for fpr, what in done.updated.items()},
                unchanged=len(done.unchanged),
                not_in_keyring=len(done.absent),
            )
        problems = {fpr: report.problems[fpr] for fpr in done.retry if fpr in report.problems}
        reason = "; ".join(f"{f}: {w}" for f, w in sorted(problems.items()))
        return done.retry, reason or failure_reason(code, err)
