"""What refreshd, gpg and sq each say about one blob of the shared key corpus.

The corpus (`../shared/corpus/keys/`, see its SOURCES.md) is not part of the project; it is
found next to the checkout or next to one of its parents. Each blob is read three ways at one
reference time and reduced to the same facts per certificate: accepted (read and bound by a
valid self-signature), primary expiry, revoked, the encryption-capable components live at that
time (with their expiry) and, for a key live at that time, the addresses of its valid user
ids. gpg is asked with `--faked-system-time`; sq 0.27 has no clock option, so only its
time-free statements are used (expiry times, revocations, "no binding" and policy verdicts)
and liveness is computed here at the reference time.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from refreshd.errors import KeyRejected
from refreshd.openpgp.keyview import KeyView, normalize_address, view_of
from refreshd.openpgp.packets import SecretKeyRefused, StreamingKeyFilter

REFERENCE = datetime(2026, 9, 1, tzinfo=UTC)  # after the newest snapshot in SOURCES.md
ORACLE_TIMEOUT = 20  # seconds for one oracle on one blob


def corpus_dir(start: Path | None = None) -> Path | None:
    """shared/corpus/keys next to the checkout or one of its parents (REFRESHD_CORPUS wins)."""
    env = os.environ.get("REFRESHD_CORPUS")
    if env:
        return Path(env) if Path(env).is_dir() else None
    here = (start or Path(__file__)).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "corpus" / "keys"
        if candidate.is_dir():
            return candidate
    return None


def blobs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "MANIFEST.json")


@dataclass(frozen=True)
class CertFacts:
    """One certificate as one reader sees it at REFERENCE."""

    fingerprint: str
    accepted: bool
    expires: int | None = None
    revoked: bool = False
    encrypt: frozenset[tuple[str, int | None]] = frozenset()
    addresses: frozenset[str] = frozenset()


@dataclass
class BlobFacts:
    certs: dict[str, CertFacts] = field(default_factory=dict)
    error: str | None = None  # the whole blob was refused (no certificate at all)
    secret: bool = False  # the reader saw secret key material


def _stamp(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp())


# --- refreshd ------------------------------------------------------------------------------


def refreshd_facts(data: bytes) -> BlobFacts:
    """The certificates refreshd's strip + read path finds in data."""
    size = max(len(data), 1)
    filt = StreamingKeyFilter(max_response_bytes=size, max_key_bytes=size)
    try:
        filt.feed(data)
        certs = filt.finish_certificates()
    except KeyRejected as exc:
        return BlobFacts(error=exc.reason, secret=isinstance(exc, SecretKeyRefused))
    out = BlobFacts()
    for cert in certs:
        fpr = cert.fingerprint()
        try:
            view = view_of(cert, REFERENCE)
        except KeyRejected as exc:
            out.certs[fpr] = CertFacts(fpr, False)
            out.error = exc.reason
            continue
        out.certs[fpr] = _view_facts(view)
    return out


def _view_facts(view: KeyView) -> CertFacts:
    enc = {(s.fingerprint, _stamp(s.expires)) for s in view.encryption_subkeys(REFERENCE)}
    if view.usable(REFERENCE) and "encrypt" in view.primary.flags:
        enc.add((view.fingerprint, _stamp(view.expires)))
    return CertFacts(
        view.fingerprint,
        view.primary.bound,
        _stamp(view.expires),
        view.revoked,
        frozenset(enc),
        frozenset(
            u.address
            for u in view.uids
            if u.address and u.valid(REFERENCE) and view.usable(REFERENCE)
        ),
    )


# --- gpg -----------------------------------------------------------------------------------


def gpg_facts(path: Path, at: datetime = REFERENCE) -> BlobFacts | None:
    """gpg 2.2's show-only import listing at `at`, in a throw-away home (None when gpg gives
    no answer in time)."""
    with tempfile.TemporaryDirectory(prefix="oracle-gpg-") as home:
        try:
            done = subprocess.run(
                [
                    "gpg", "--homedir", home, "--batch", "--no-tty", "--no-autostart",
                    "--with-colons", "--fixed-list-mode", "--faked-system-time",
                    at.strftime("%Y%m%dT%H%M%S!"),
                    "--import-options", "show-only", "--import", str(path),
                ],
                capture_output=True,
                timeout=ORACLE_TIMEOUT,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return None
    return parse_gpg(done.stdout.decode("utf-8", "replace"), at)


def _unescape(text: str) -> str:
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


_NOT_VALID = frozenset("reind")  # gpg validity letters of a component that is not valid


@dataclass
class _GpgCert:
    accepted: bool
    revoked: bool
    live: bool
    expires: int | None
    fingerprint: str = ""
    encrypt: set[tuple[str, int | None]] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)

    def facts(self) -> CertFacts:
        return CertFacts(
            self.fingerprint,
            self.accepted,
            self.expires,
            self.revoked,
            frozenset(self.encrypt),
            frozenset(self.addresses),
        )


def parse_gpg(listing: str, at: datetime = REFERENCE) -> BlobFacts:
    """The colon listing of `--import-options show-only`, one record per line."""
    out = BlobFacts()
    cur: _GpgCert | None = None
    pending: tuple[str, int | None, bool] | None = None  # (kind, expiry, encrypts) of the
    # key or subkey whose fpr record comes next
    for line in listing.splitlines():
        f = line.split(":") + [""] * 12  # short records read as empty fields
        kind, validity = f[0], f[1]
        expiry = int(f[6]) if f[6] else None
        if kind in ("pub", "sec"):
            if cur is not None:
                out.certs[cur.fingerprint] = cur.facts()
            out.secret |= kind == "sec"
            live = validity not in _NOT_VALID
            cur = _GpgCert(validity != "i", validity == "r", live, expiry)
            pending = (kind, expiry, "e" in f[11] and live)
        elif kind in ("sub", "ssb") and cur is not None:
            pending = (kind, expiry, "e" in f[11] and validity not in _NOT_VALID and cur.live)
        elif kind == "fpr" and cur is not None and pending is not None:
            if pending[0] in ("pub", "sec"):
                cur.fingerprint = f[9]
            if pending[2] and (pending[1] is None or pending[1] > at.timestamp()):
                cur.encrypt.add((f[9], pending[1]))
            pending = None
        elif kind == "uid" and cur is not None and validity not in _NOT_VALID:
            address = normalize_address(_unescape(f[9]))
            if address:
                cur.addresses.add(address)
    if cur is not None:
        out.certs[cur.fingerprint] = cur.facts()
    return out


# --- sq ------------------------------------------------------------------------------------

_SQ_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


def sq_facts(path: Path) -> BlobFacts | None:
    """sq inspect's reading, None when sq gives no answer in time (some fuzzer inputs make
    sq 0.27 spin)."""
    try:
        done = subprocess.run(
            ["sq", "inspect", str(path)], capture_output=True, timeout=ORACLE_TIMEOUT, env=_sq_env()
        )
    except subprocess.TimeoutExpired:
        return None
    return parse_sq(done.stdout.decode("utf-8", "replace"))


def _sq_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SQ_")}


def _when(text: str) -> int:
    found = _SQ_TIME.search(text)
    assert found, text
    return int(
        datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
    )


# Invalid reasons that only say the component is not live at sq's own (real) clock: liveness
# is computed here at REFERENCE instead.
_CLOCK_ONLY = ("not live", "expired", "is not alive", "creation time is in the future")


@dataclass
class _SqComponent:
    kind: str
    fingerprint: str
    revoked: bool = False
    invalid: bool = False
    created: int | None = None
    expires: int | None = None
    encrypt: bool = False


def parse_sq(listing: str) -> BlobFacts:
    out = BlobFacts()
    comps: list[_SqComponent] = []
    uids: list[tuple[str, bool]] = []  # (uid, valid)

    def close() -> None:
        if not comps:
            return
        primary = comps[0]
        if primary.invalid and not primary.revoked:
            out.certs[primary.fingerprint] = CertFacts(primary.fingerprint, False)
        else:
            enc = set()
            ref = REFERENCE.timestamp()
            key_live = (
                not primary.revoked
                and (primary.created or 0) <= ref
                and (primary.expires is None or ref < primary.expires)
            )
            for c in comps:
                live = (
                    key_live
                    and not c.revoked
                    and not c.invalid
                    and (c.created or 0) <= ref
                    and (c.expires is None or ref < c.expires)
                )
                if c.encrypt and live:
                    enc.add((c.fingerprint, c.expires))
            addresses = {a for u, ok in uids if ok and key_live and (a := normalize_address(u))}
            out.certs[primary.fingerprint] = CertFacts(
                primary.fingerprint,
                True,
                primary.expires,
                primary.revoked,
                frozenset(enc),
                frozenset(addresses),
            )
        comps.clear()
        uids.clear()

    state: str | None = None
    for raw in listing.splitlines():
        line = raw.strip()
        if raw.endswith(("OpenPGP Certificate.", "OpenPGP Key.")):
            close()
            state = None
            continue
        key, _, value = line.partition(":")
        value = value.strip()
        if key in ("Fingerprint", "Subkey"):
            if key == "Fingerprint":
                close()
            comps.append(_SqComponent(key, value))
            state = "component"
        elif key == "UserID":
            uids.append((value, True))
            state = "uid"
        elif key in ("UserAttribute",):
            state = "other"
        elif key == "Revoked":
            if state == "component":
                comps[-1].revoked = True
            elif state == "uid":
                uids[-1] = (uids[-1][0], False)
        elif key == "Invalid":
            clock_only = any(word in value for word in _CLOCK_ONLY)
            if state == "component" and not clock_only:
                comps[-1].invalid = True
            elif state == "uid" and not (clock_only and "binding" not in value):
                uids[-1] = (uids[-1][0], False)
        elif key == "Creation time" and state == "component":
            comps[-1].created = _when(value)
        elif key == "Expiration time" and state == "component":
            comps[-1].expires = _when(value)
        elif key == "Key flags" and state == "component":
            comps[-1].encrypt = "encryption" in value
    close()
    return out


# --- comparison ----------------------------------------------------------------------------

FIELDS = ("accepted", "expires", "revoked", "encrypt", "addresses")


def differences(ours: BlobFacts, gpg: BlobFacts | None, sq: BlobFacts | None) -> list[str]:
    """Every fact where refreshd agrees with neither gpg nor sq (those that answered), one
    line each."""
    found = []
    answered = [o if o is not None else BlobFacts() for o in (gpg, sq)]
    fprs = set(ours.certs).union(*(o.certs for o in answered))
    for fpr in sorted(fprs):
        mine = ours.certs.get(fpr, CertFacts(fpr, False))
        theirs = [o.certs.get(fpr, CertFacts(fpr, False)) for o in answered]
        for name in FIELDS:
            if not mine.accepted and name != "accepted":
                continue
            ok = [
                t
                for t, o in zip(theirs, (gpg, sq), strict=True)
                if o is not None and (t.accepted or name == "accepted")
            ]
            if ok and all(getattr(t, name) != getattr(mine, name) for t in ok):
                found.append(
                    f"{fpr} {name}: refreshd {_show(getattr(mine, name))}, "
                    f"gpg {_show(getattr(theirs[0], name))}, sq {_show(getattr(theirs[1], name))}"
                )
    return found


def _show(value: object) -> str:
    if isinstance(value, frozenset):
        return "{" + ", ".join(sorted(map(str, value))) + "}"
    return str(value)


def oracles(path: Path) -> tuple[BlobFacts | None, BlobFacts | None]:
    return gpg_facts(path), sq_facts(path)
