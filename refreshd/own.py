"""The user's own key: kept in own.key_file, extended by core/ownpolicy.py, uploaded (SPEC 7).

The shell reads the key file and the passphrase (own.passphrase_file, else the systemd
credential refreshd-passphrase), asks the pure policy what to do, re-signs with
openpgp/resign.py, writes the file atomically (0600) and uploads the public part with each
mechanism of own.upload over Tor, retrying with backoff. If the key cannot be unlocked,
status says so and nothing else is affected.

OwnAudit (at the end) audits what the directories publish for the own addresses: at random
moments (core/ownaudit.py states the rules), every directory of discovery.order, one at a time,
each request on its own circuit; the result is an own.audit event, kept for `own`/`status`, a
re-upload where a directory still serves an old expiry, and own.audit_command run on a new
mismatch.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from refreshd.audit import AuditLog
from refreshd.config import Config
from refreshd.core import ownaudit, ownpolicy, schedule
from refreshd.core.levels import Way
from refreshd.core.ownaudit import Upload
from refreshd.core.ownpolicy import Role
from refreshd.errors import FetchFailed, InvalidRequest, KeyRejected, SourceError
from refreshd.keymanager import usable_endorsers
from refreshd.net import hkp, nicknym, vks
from refreshd.net.answers import Outcome
from refreshd.net.fetch import Fetcher, Request
from refreshd.openpgp.intake import Limits, intake
from refreshd.openpgp.keyview import certifiers
from refreshd.openpgp.packets import PublicKey
from refreshd.retrieve import Got, Retriever
from refreshd.store import Store, iso

if TYPE_CHECKING:
    from types import ModuleType

    from refreshd.mail.publish import MailPublisher
    from refreshd.openpgp.resign import OwnKey

__all__ = ["OwnAudit", "OwnKeys"]

AUDIT_STATE = "own_audit"
UPLOAD_RETRY_BASE = 300.0
UPLOAD_RETRY_CAP = 86400.0
UPLOAD_ATTEMPTS = 8
MAIL_MECHANISMS = (Upload.WKS, Upload.KPP)


def write_private(path: Path, text: str) -> None:
    """Atomic 0600 write: a crash never leaves a half-written secret key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".own-key.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _resign() -> ModuleType:
    """The re-signing module, loaded on first use: it brings pgpy (several MB), which a daemon
    without an own key never needs."""
    from refreshd.openpgp import resign

    return resign


class OwnKeys:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        audit: AuditLog,
        fetcher: Fetcher,
        clock: Callable[[], datetime],
        *,
        rng: random.Random | None = None,
        mail: MailPublisher | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.audit = audit
        self.fetcher = fetcher
        self.clock = clock
        self.rng = rng or random.SystemRandom()
        self.mail = mail
        self.path = cfg.own_key_file
        self.problem: str | None = None  # e.g. "own key locked: cannot extend"
        self._session_passphrase: str | None = None
        self._uploads: trio.MemorySendChannel[str] | None = None
        self._queued: set[Upload] = set()

    # -- reading ----------------------------------------------------------------------------
    def passphrase(self) -> str | None:
        if self._session_passphrase is not None:
            return self._session_passphrase
        candidates = []
        if self.cfg.own.passphrase_file:
            candidates.append(Path(self.cfg.own.passphrase_file).expanduser())
        if os.environ.get("CREDENTIALS_DIRECTORY"):
            candidates.append(Path(os.environ["CREDENTIALS_DIRECTORY"]) / "refreshd-passphrase")
        for path in candidates:
            try:
                return path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError:
                continue
        return None

    def _armored(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def _row(self, fingerprint: str) -> dict[str, Any] | None:
        return self.store.own_key(fingerprint)

    def _seed(self, fingerprint: str, address: str) -> bytes:
        row = self._row(fingerprint)
        if row is None:
            seed = secrets.randbits(62)
            self.store.add_own_key(fingerprint, address, seed)
            return seed.to_bytes(8, "big")
        return int(row["seed"]).to_bytes(8, "big")

    def _plan(self, key: OwnKey) -> ownpolicy.Plan:
        return ownpolicy.plan(
            key.components,
            now=self.clock(),
            extend_by=timedelta(seconds=self.cfg.own.extend_by),
            extend_when_left=timedelta(seconds=self.cfg.own.extend_when_left),
            previous_signature=key.last_signature,
            seed=self._seed(key.fingerprint, key.addresses[0] if key.addresses else ""),
        )

    # -- audit results (written by OwnAudit, read by `own` and `status`) -----------------------
    def latest_audits(self) -> dict[str, dict[str, Any]]:
        """address -> the latest own.audit result for it, kept across restarts."""
        text = self.store.get_state(AUDIT_STATE)
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def record_audit(self, address: str, result: dict[str, Any]) -> None:
        latest = self.latest_audits()
        latest[address] = result
        self.store.put_state(AUDIT_STATE, json.dumps(latest, sort_keys=True))

    def audit_summary(self, fingerprint: str, addresses: tuple[str, ...]) -> dict[str, Any]:
        """The `audit` field of `own` (SPEC 4): the latest audit of every own address of the
        key, combined; each finding names its address."""
        latest = self.latest_audits()
        audits = [
            latest.get(a) if latest.get(a, {}).get("fingerprint") == fingerprint else None
            for a in addresses
        ]
        findings = [
            {**f, "address": a}
            for a, audit in zip(addresses, audits, strict=True)
            if audit is not None
            for f in audit["findings"]
        ]
        states = [ownaudit.State.UNCHECKED if a is None else a["state"] for a in audits]
        if ownaudit.State.MISMATCH in states:
            state = ownaudit.State.MISMATCH
        elif states and all(s == ownaudit.State.OK for s in states):
            state = ownaudit.State.OK
        else:
            state = ownaudit.State.UNCHECKED
        checked = [a["checked_at"] for a in audits if a is not None]
        return {
            "state": str(state),
            "checked_at": max(checked) if checked else None,
            "findings": findings,
        }

    def report(self) -> list[dict[str, Any]]:
        armored = self._armored()
        if armored is None:
            return []
        resign = _resign()
        try:
            key = resign.read_own(armored, self.clock())
        except resign.BadKey as exc:
            return [{"fingerprint": None, "problem": f"own key file unreadable: {exc}"}]
        plan = self._plan(key)
        row = self._row(key.fingerprint) or {}
        primary = next(c for c in key.components if c.role is Role.PRIMARY)
        return [
            {
                "fingerprint": key.fingerprint,
                "address": key.addresses[0] if key.addresses else None,
                "addresses": list(key.addresses),
                "expires": iso(primary.expires),
                "components": [
                    {
                        "fingerprint": c.fingerprint,
                        "role": c.role.value,
                        "expires": iso(c.expires),
                        "revoked": c.revoked,
                    }
                    for c in key.components
                ],
                "next_extension_at": iso(plan.planned_at),
                "last_upload": row.get("last_upload"),
                "protected": key.protected,
                "problem": self.problem,
                "audit": self.audit_summary(key.fingerprint, key.addresses),
            }
        ]

    # -- changing ---------------------------------------------------------------------------
    async def import_key(self, armored: str, passphrase: str | None) -> dict[str, Any]:
        resign = _resign()
        try:
            key = resign.read_own(armored, self.clock())
        except (resign.BadKey, ValueError) as exc:
            raise InvalidRequest(f"not a usable secret key ({exc})") from None
        if passphrase is not None:
            self._session_passphrase = passphrase
        write_private(self.path, armored)
        self.audit.emit("own.imported", fingerprint=key.fingerprint, addresses=list(key.addresses))
        await self.check()  # first: an extension it makes is what the one upload sends
        self.queue_upload()  # (one per mechanism: the extension's, if queued, is this one)
        return self.report()[0]

    async def generate(self, address: str, name: str | None) -> dict[str, Any]:
        resign = _resign()
        if self._armored() is not None:
            raise InvalidRequest(f"an own key exists in {self.path}; move it away first")
        armored = resign.generate(
            address,
            name,
            now=self.clock(),
            expiry=timedelta(seconds=self.cfg.own.new_key_expiry),
            passphrase=self.passphrase(),
        )
        write_private(self.path, armored)
        key = resign.read_own(armored, self.clock())
        self.audit.emit("own.generated", fingerprint=key.fingerprint, address=address)
        self.queue_upload()
        await self.check()
        return self.report()[0]

    async def check(self) -> None:
        """The expiry policy: at start, after import/generate, and daily. An unexpected
        error is audited and reported by status; it never stops the daemon."""
        try:
            await self._check()
        except Exception as exc:
            self.problem = f"own key check failed: {type(exc).__name__}: {exc}"[:300]
            self.audit.emit("own.error", error=self.problem)

    async def _check(self) -> None:
        armored = self._armored()
        if armored is None:
            return
        resign = _resign()
        try:
            key = resign.read_own(armored, self.clock())
        except resign.BadKey as exc:
            self.problem = f"own key file unreadable: {exc}"
            return
        plan = self._plan(key)
        if not plan.extend_now or not plan.new_expiries or plan.signature_time is None:
            if key.protected and self.passphrase() is None:
                self.problem = "own key locked: cannot extend (no passphrase configured)"
            return
        try:
            extended = resign.extend(
                armored,
                self.passphrase(),
                plan.new_expiries,
                sig_time=plan.signature_time,
                now=self.clock(),
            )
        except resign.Locked as exc:
            self.problem = f"own key locked: cannot extend ({exc})"
            self.audit.emit("own.locked", fingerprint=key.fingerprint, reason=str(exc))
            return
        write_private(self.path, extended)
        self.problem = None
        self.audit.emit(
            "own.extended",
            fingerprint=key.fingerprint,
            reason=plan.reason,
            signature_time=iso(plan.signature_time),
            expiries={fpr: iso(t) for fpr, t in plan.new_expiries.items()},
        )
        self.queue_upload()

    # -- uploading --------------------------------------------------------------------------
    def queue_upload(self, mechanisms: tuple[Upload, ...] | None = None) -> None:
        """An upload per mechanism; one already waiting to start is enough, since an upload
        reads the key file when it starts (a mail exchange must not run twice at once)."""
        if self._uploads is not None:
            for mechanism in self.cfg.own.upload if mechanisms is None else mechanisms:
                if mechanism in self._queued:
                    continue
                with contextlib.suppress(trio.WouldBlock):
                    self._uploads.send_nowait(mechanism)
                    self._queued.add(mechanism)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        send, receive = trio.open_memory_channel[Upload](16)
        self._uploads = send
        task_status.started()
        await self.check()
        async with trio.open_nursery() as nursery:
            async for mechanism in receive:
                self._queued.discard(mechanism)
                nursery.start_soon(self._upload_with_retries, mechanism)

    async def _upload_with_retries(self, mechanism: Upload) -> None:
        for attempt in range(1, UPLOAD_ATTEMPTS + 1):
            ok, reason = await self.upload(mechanism)
            if ok:
                return
            delay = schedule.backoff(
                attempt, base=UPLOAD_RETRY_BASE, cap=UPLOAD_RETRY_CAP, rng=self.rng
            )
            self.audit.emit(
                "own.upload_retry",
                mechanism=mechanism.value,
                attempt=attempt,
                retry_in_seconds=round(delay),
                reason=reason,
            )
            await trio.sleep(delay)

    def _upload_requests(self, mechanism: Upload, armored_public: str) -> list[Request]:
        if mechanism is Upload.VKS:
            return [vks.upload(base, armored_public) for base in self.cfg.discovery.vks]
        if mechanism is Upload.HKP:
            return [hkp.upload(base, armored_public) for base in self.cfg.discovery.hkp]
        return []

    async def upload(self, mechanism: Upload) -> tuple[bool, str]:
        """One upload of the current public key; audited as own.uploaded either way."""
        if mechanism in MAIL_MECHANISMS:
            return await self._upload_by_mail(mechanism)
        armored = self._armored()
        if armored is None:
            return True, "no own key"
        own = _resign().read_own(armored, self.clock())
        fingerprint = own.fingerprint
        requests = self._upload_requests(mechanism, own.public)
        if not requests:
            reason = (
                f"no {mechanism} server configured"
                if mechanism in (Upload.VKS, Upload.HKP)
                else f"{mechanism} upload needs a submission channel that is not configured"
            )
            self.audit.emit(
                "own.uploaded",
                fingerprint=fingerprint,
                mechanism=mechanism.value,
                ok=False,
                reason=reason,
            )
            return True, reason  # nothing to retry
        all_ok, reasons = True, []
        for req in requests:
            try:
                answer = await self.fetcher.fetch(req)
                read = vks.read_upload if mechanism is Upload.VKS else hkp.read_upload
                read(answer.status, answer.body)
            except (FetchFailed, SourceError) as exc:
                all_ok, outcome = False, {"ok": False, "reason": exc.reason}
                reasons.append(exc.reason)
            else:
                outcome = {"ok": True, "status": answer.status}
            self.audit.emit(
                "own.uploaded",
                fingerprint=fingerprint,
                mechanism=mechanism.value,
                url=req.url,
                **outcome,
            )
        if all_ok:
            self._uploaded(fingerprint)
        return all_ok, "; ".join(reasons)

    def _uploaded(self, fingerprint: str) -> None:
        self.store.own_key_uploaded(fingerprint, self.clock())

    async def _upload_by_mail(self, mechanism: Upload) -> tuple[bool, str]:
        """WKS or KPP through the mail channel (refreshd/mail/publish.py)."""
        armored = self._armored()
        if armored is None:
            return True, "no own key"
        own = _resign().read_own(armored, self.clock())
        if self.mail is None:
            reason = f"{mechanism} upload needs a submission channel that is not configured"
            self.audit.emit(
                "own.uploaded",
                fingerprint=own.fingerprint,
                mechanism=mechanism.value,
                ok=False,
                reason=reason,
            )
            return True, reason  # nothing to retry
        if mechanism is Upload.WKS:
            ok, reason = await self.mail.wks(
                armored, self.passphrase(), own.public, own.view, own.addresses
            )
        else:
            ok, reason = await self.mail.kpp(own.public, own.fingerprint, own.addresses)
        if ok:
            self._uploaded(own.fingerprint)
        return ok, reason


# -- the audit of the own key's publication (SPEC 7) --------------------------------------------

AUDIT_HOOK_TIMEOUT = 60.0
AUDIT_RECHECK = 60.0  # how often the loop looks for new or removed own addresses


def _served(
    data: bytes,
    keep: frozenset[str],
    limits: Limits,
    address: str,
    endorsers: list[PublicKey],
    now: datetime,
) -> tuple[tuple[ownaudit.Served, ...], str]:
    """The keys in a directory's answer as plain facts: fingerprint, expiry and, where the
    provider endorses, whether one of its pinned endorsement keys certifies the uid for the
    address (valid, unrevoked); or why nothing could be read. Pure and CPU-bound: the shell
    runs it in a worker thread."""
    try:
        read = intake(data, keep, limits, now)
    except KeyRejected as exc:
        return (), exc.reason
    served = tuple(
        ownaudit.Served(
            k.fingerprint,
            k.view.expires,
            bool(certifiers(k.cert, address, endorsers, now)) if endorsers else None,
        )
        for k in read.keys
    )
    return served, read.failure


def _observation(
    source: Way,
    gots: list[Got],
    *,
    expected: bool,
    served: tuple[tuple[ownaudit.Served, ...], str] | None = None,
    endorses: bool = False,
) -> ownaudit.Observation:
    """A directory's answers (WKD may take two requests) as plain facts for the core; `served`
    is what the answer that carried a key held."""
    keyed = next((g for g in gots if g.outcome is Outcome.KEY), None)
    if keyed is not None and served is not None:
        keys, failure = served
        if not keys:
            return ownaudit.Observation(
                source, keyed.url, ownaudit.Answer.UNREADABLE, reason=failure
            )
        return ownaudit.Observation(
            source, keyed.url, ownaudit.Answer.KEYS, keys, expected=expected, endorses=endorses
        )
    got = gots[-1]
    answer = AUDIT_ANSWERS.get(got.outcome, ownaudit.Answer.UNREACHABLE)
    return ownaudit.Observation(source, got.url, answer, reason=got.reason, expected=expected)


AUDIT_ANSWERS = {
    Outcome.NOT_FOUND: ownaudit.Answer.NOT_FOUND,
    Outcome.GONE: ownaudit.Answer.NOT_FOUND,
    Outcome.NOT_ENDORSED: ownaudit.Answer.NOT_FOUND,
    Outcome.REJECTED: ownaudit.Answer.UNREADABLE,
    Outcome.RETRY_LATER: ownaudit.Answer.UNREACHABLE,
    Outcome.ERROR: ownaudit.Answer.UNREACHABLE,
}


class OwnAudit:
    """Looks up every own address at every directory at random moments and says what it saw.

    One audit at a time, each directory asked after the previous one answered, each request on
    its own circuit (the fetcher's isolation), through the same retriever as refreshes and
    first contact, so the requests look like any other. The moments follow
    core/ownaudit.next_lapse, drawn afresh per address after every audit.
    """

    def __init__(
        self,
        own: OwnKeys,
        retriever: Retriever,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.own = own
        self.retriever = retriever
        self.cfg = own.cfg
        self.audit = own.audit
        self.rng = rng or random.SystemRandom()
        self._due: dict[str, float] = {}  # address -> trio time of its next audit

    def _mean(self) -> float:
        return float(max(1, self.cfg.own.audit_period))

    async def _own_key(self) -> OwnKey | None:
        """The own key as it is now on disk (parsed in a worker thread: pgpy is slow)."""
        armored = self.own._armored()
        if armored is None:
            return None
        resign = _resign()
        try:
            return await trio.to_thread.run_sync(  # type: ignore[no-any-return]
                resign.read_own, armored, self.own.clock()
            )
        except resign.BadKey:
            return None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if not self.cfg.own.audit:
            return
        while True:
            key = await self._own_key()
            addresses = set(key.addresses) if key is not None else set()
            now = trio.current_time()
            for address in addresses - set(self._due):
                self._due[address] = now + ownaudit.next_lapse(self._mean(), self.rng)
            for address in set(self._due) - addresses:
                del self._due[address]
            if not self._due:
                await trio.sleep(AUDIT_RECHECK)
                continue
            address = min(self._due, key=self._due.__getitem__)
            wait = self._due[address] - now
            if wait > 0:
                await trio.sleep(min(wait, AUDIT_RECHECK))
                continue
            self._due[address] = now + ownaudit.next_lapse(self._mean(), self.rng)
            try:
                await self.audit_address(address)
            except Exception as exc:  # an audit bug must not stop the daemon
                self.audit.emit(
                    "own.audit_error", address=address, error=f"{type(exc).__name__}: {exc}"[:300]
                )

    def _sources(self) -> list[Way]:
        configured = {Way.VKS: bool(self.cfg.discovery.vks), Way.HKP: bool(self.cfg.discovery.hkp)}
        return [s for s in self.cfg.discovery.order if configured.get(s, s is not Way.SMTP)]

    def _endorsement_keys(self, domain: str, now: datetime) -> list[PublicKey]:
        """The provider's pinned endorsement keys that are usable now (SPEC 5.1)."""
        return [key for _, key in usable_endorsers(self.own.store.provider_pins(domain), now)]

    async def _ask(self, source: Way, address: str, key: OwnKey) -> ownaudit.Observation:
        now = self.own.clock()
        endorsers = (
            self._endorsement_keys(address.rpartition("@")[2], now)
            if source in (Way.WKD, Way.NICKNYM)
            else []
        )
        keep = frozenset(
            {key.fingerprint, key.fingerprint[-16:]}
            | {k.fingerprint.hex().upper() for k in endorsers}
            | {k.fingerprint.hex().upper()[-16:] for k in endorsers}
        )
        uploaded = ownaudit.UPLOAD_FOR_SOURCE.get(source) in self.cfg.own.upload
        if source is Way.HKP:
            gots = [
                await self.retriever.key_request(Way.HKP, hkp.lookup(base, key.fingerprint))
                for base in self.cfg.discovery.hkp
            ]
        elif source is Way.NICKNYM:
            uri = await self.retriever.nicknym_uri(address.rpartition("@")[2])
            if isinstance(uri, Got):  # the provider runs no nicknym: nothing to expect
                return _observation(source, [uri], expected=False)
            req = nicknym.by_address(uri, address)
            gots = [await self.retriever.nicknym_request(req, address)]
            uploaded = True  # a provider's nicknym serves its own users
        else:
            gots = await self.retriever.by_address(source, address)
        keyed = next((g for g in gots if g.outcome is Outcome.KEY), None)
        served = None
        if keyed is not None:
            limits = Limits(self.cfg.network.max_response_bytes, self.cfg.network.max_key_bytes)
            served = await trio.to_thread.run_sync(
                _served, keyed.data, keep, limits, address, endorsers, now
            )
        return _observation(
            source, gots, expected=uploaded, served=served, endorses=bool(endorsers)
        )

    async def audit_address(self, address: str) -> ownaudit.Audit | None:
        """One audit of one own address; audited as own.audit, the latest kept for `own`."""
        key = await self._own_key()
        if key is None or address not in key.addresses:
            return None
        primary = next(c for c in key.components if c.role is Role.PRIMARY)
        facts = ownaudit.OwnFacts(key.fingerprint, address, primary.expires)
        observations = [await self._ask(s, address, key) for s in self._sources()]
        row = self.own._row(key.fingerprint) or {}
        last_upload = row.get("last_upload")
        now = self.own.clock()
        result = ownaudit.assess(
            facts,
            observations,
            upload=self.cfg.own.upload,
            last_upload=datetime.fromisoformat(last_upload) if last_upload else None,
            now=now,
            grace=timedelta(seconds=self._mean()),
        )
        previous = self.own.latest_audits().get(address)
        entry = {
            "fingerprint": key.fingerprint,
            "state": str(result.state),
            "checked_at": iso(now),
            "findings": [f.as_json() for f in result.findings],
        }
        self.audit.emit("own.audit", address=address, **entry)
        self.own.record_audit(address, entry)
        before = [] if previous is None else _findings(previous)
        fresh = ownaudit.new_mismatches(before, result.findings)
        if fresh:
            await self.run_hook(address, key.fingerprint, entry["checked_at"], fresh)
        if result.reupload:
            self.audit.emit(
                "own.reupload",
                address=address,
                fingerprint=key.fingerprint,
                mechanisms=[m.value for m in result.reupload],
                reason="a directory still serves an older expiry after the grace period",
            )
            self.own.queue_upload(result.reupload)
        return result

    async def run_hook(
        self, address: str, fingerprint: str, checked_at: str, fresh: list[ownaudit.Finding]
    ) -> None:
        """own.audit_command, without a shell, the new mismatches as JSON on stdin."""
        argv = list(self.cfg.own.audit_command)
        if not argv:
            return
        finding = {
            "address": address,
            "fingerprint": fingerprint,
            "state": str(ownaudit.State.MISMATCH),
            "checked_at": checked_at,
            "findings": [f.as_json() for f in fresh],
        }
        stdin = json.dumps(finding, sort_keys=True).encode("utf-8") + b"\n"
        outcome: dict[str, Any]
        try:
            with trio.fail_after(AUDIT_HOOK_TIMEOUT):
                done = await trio.run_process(
                    argv, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
                )
        except OSError as exc:
            outcome = {"ok": False, "reason": f"cannot run {argv[0]}: {exc.strerror or exc}"}
        except trio.TooSlowError:
            reason = f"{argv[0]} ran longer than {AUDIT_HOOK_TIMEOUT:.0f} s"
            outcome = {"ok": False, "reason": reason}
        else:
            outcome = {"ok": done.returncode == 0, "returncode": done.returncode}
        self.audit.emit("own.audit_command", address=address, command=argv[0], **outcome)


def _findings(entry: dict[str, Any]) -> list[ownaudit.Finding]:
    """Findings read back from a stored audit entry (for `new_mismatches`)."""
    out = []
    for f in entry.get("findings", []):
        try:
            result, source = ownaudit.Result(f["result"]), Way(f["source"])
        except (KeyError, ValueError):
            continue
        out.append(
            ownaudit.Finding(source, result, f.get("detail", ""), served=tuple(f.get("served", ())))
        )
    return out
