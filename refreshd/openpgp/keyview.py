"""What decisions need to know about a public key at a given time, computed and verified here.

pgpy mis-reads expiry and does not check self-signatures fully, so every fact below comes from
signatures this module verified itself (refreshd.openpgp.verify) over the packets as received.
A view is taken at a time `now` (the caller's clock): it says what RFC 4880 / RFC 9580, gpg and
sq say the key is at that moment.

Rules:
- Only signatures by the primary key count, and only if they verify, were made at or before
  now, are not older than the key they speak about, and have no critical subpacket we do not
  understand. No notation is understood, so a critical notation (subpacket 20) voids its
  signature, as in gpg and sq. v3 signatures count like v4 ones (a v3 key revocation revokes).
- Signatures count where they sign, not where they sit: a key revocation or direct-key
  signature anywhere in the blob (after the subkeys, as a second armor block, ahead of the key)
  belongs to the primary; a certification or binding that does not verify where it stands is
  tried on the other components of its kind and moved to the one it signs (at most
  MAX_RELOCATIONS tries per key, so a hostile key cannot make this quadratic).
- Two copies of one certificate in a blob are read as one (packets.merge_copies).
- A key whose primary was created after now is refused ("created in the future"); so is a
  subkey, a signature, a revocation made after now ignored.
- Signature expiration (subpacket 3): the newest binding of a user id or subkey decides; when
  it has expired at now the component is not valid (an older binding does not step in).
- A user id is listed only with a valid, unexpired self-certification (0x10-0x13), the newest
  one (a tie goes to the later packet, as gpg and sq do); it is revoked when a valid
  certification revocation (0x30) is at least as new as that binding.
- The primary key is bound by a valid, unexpired direct-key signature (0x1F) or user id
  binding (a revoked user id still binds, as in gpg and sq). Without one the key is still read
  (its revocations are known, a copy without user ids still merges) but it is not usable and
  has no capability: a subkey binding alone never makes a key.
- Primary key expiry and flags: from the newest valid direct-key signature and the binding of
  the primary user id, the newer one that states them wins (a tie goes to the direct-key
  signature, as gpg does; a key expiration time of 0 states nothing, as in gpg and sq). The
  primary user id is the non-revoked one flagged primary, else the one with the newest
  self-certification.
- A subkey is listed only with a valid, unexpired binding (0x18), its newest, which gives expiry
  and flags; "sign" needs a valid embedded back-signature (0x19). Any valid revocation (0x20 for
  the key, 0x28 for a subkey) revokes.
- Without a key-flags subpacket, capabilities follow the algorithm; flags the algorithm cannot
  do are masked off. A bound primary key can always certify.
- Absurd or weak RSA material is refused before any arithmetic (verify.material_refusal: a
  primary refuses the key, a subkey is left out); when the backend cannot verify the primary
  (verify.backend_refusal, e.g. DSA with a 1017-bit p), that limit is the reason, never "no
  valid self-signature".
- A key without any valid self-signature is rejected; a key without user ids is not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import wraps
from typing import ParamSpec, TypeVar

import idna

from refreshd.errors import KeyRejected
from refreshd.openpgp.packets import (
    ALGORITHMS,
    SUB_EMBEDDED,
    SUB_KEY_EXPIRES,
    SUB_KEY_FLAGS,
    SUB_PREF_HASH,
    SUB_PRIMARY_UID,
    SUB_SIG_EXPIRES,
    TAG_USER_ID,
    Bundle,
    Cert,
    Packet,
    PublicKey,
    Signature,
    StreamingKeyFilter,
    parse_public_key,
    parse_signature,
)
from refreshd.openpgp.verify import (
    backend_refusal,
    key_context,
    material_refusal,
    uid_context,
    verify,
)

__all__ = [
    "CERTIFICATIONS",
    "CERT_REVOCATION",
    "DIRECT_KEY",
    "KEY_REVOCATION",
    "SUBKEY_BINDING",
    "SUBKEY_REVOCATION",
    "Component",
    "Flag",
    "KeyView",
    "SelfSigned",
    "certifiers",
    "hash_preferences",
    "normalize_address",
    "parse_one",
    "placed",
    "primary_key",
    "read_key",
    "rejecting",
    "self_signed",
    "stated_flags",
    "states_key_expiry",
    "valid_sigs",
    "view_of",
]

CERTIFICATIONS = frozenset({0x10, 0x11, 0x12, 0x13})
SUBKEY_BINDING, PRIMARY_BINDING, DIRECT_KEY = 0x18, 0x19, 0x1F
KEY_REVOCATION, SUBKEY_REVOCATION, CERT_REVOCATION = 0x20, 0x28, 0x30
PRIMARY_TYPES = frozenset({DIRECT_KEY, KEY_REVOCATION})
UID_TYPES = CERTIFICATIONS | {CERT_REVOCATION}
SUBKEY_TYPES = frozenset({SUBKEY_BINDING, SUBKEY_REVOCATION})
# subpackets whose meaning we know; an unknown one marked critical invalidates the signature.
# Notation data (20) is not among them: no notation is known, so a critical one voids.
KNOWN_SUBPACKETS = frozenset(
    {2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 16, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33}
)
MAX_RELOCATIONS = 256


class Flag(StrEnum):
    """A capability of a key or subkey (the key-flags subpacket, or what its algorithm can)."""

    CERTIFY = "certify"
    SIGN = "sign"
    ENCRYPT = "encrypt"
    AUTH = "auth"


FLAG_BITS = (
    (0x01, Flag.CERTIFY),
    (0x02, Flag.SIGN),
    (0x04, Flag.ENCRYPT),
    (0x08, Flag.ENCRYPT),
    (0x20, Flag.AUTH),
)
SIGNING = frozenset({Flag.CERTIFY, Flag.SIGN, Flag.AUTH})
ENCRYPTING = frozenset({Flag.ENCRYPT})
# algorithm -> what it can do at all
CAPABLE = {
    1: SIGNING | ENCRYPTING,
    2: ENCRYPTING,
    3: SIGNING,
    16: ENCRYPTING,
    17: SIGNING,
    18: ENCRYPTING,
    19: SIGNING,
    20: ENCRYPTING,
    22: SIGNING,
    25: ENCRYPTING,
    26: ENCRYPTING,
    27: SIGNING,
    28: SIGNING,
}

_P = ParamSpec("_P")
_R = TypeVar("_R")


def rejecting(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Boundary of the core: malformed input leaves as KeyRejected, never as another error."""

    @wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except KeyRejected:
            raise
        except (ValueError, IndexError, OverflowError, UnicodeError) as exc:
            raise KeyRejected(f"the key data is malformed ({exc})") from exc

    return wrapper


@dataclass(frozen=True)
class Component:
    fingerprint: str
    key_id: str
    algorithm: str
    bits: int | None
    created: datetime
    expires: datetime | None
    revoked: bool
    flags: frozenset[Flag]
    bound: bool = True  # a primary without any valid binding is read but never usable

    def live(self, now: datetime) -> bool:
        """Bound, not revoked, already created and not expired at now."""
        return (
            self.bound
            and not self.revoked
            and self.created <= now
            and (self.expires is None or now < self.expires)
        )


@dataclass(frozen=True)
class UserID:
    uid: str
    address: str | None
    created: datetime
    revoked: bool
    primary: bool
    expires: datetime | None = None  # the binding's signature expiration

    def valid(self, now: datetime) -> bool:
        """Not revoked and its binding not expired at now."""
        return not self.revoked and (self.expires is None or now < self.expires)


@dataclass(frozen=True)
class KeyView:
    fingerprint: str
    primary: Component
    uids: tuple[UserID, ...]
    subkeys: tuple[Component, ...]
    newest_self_signature: datetime

    @property
    def key_id(self) -> str:
        return self.primary.key_id

    @property
    def expires(self) -> datetime | None:
        return self.primary.expires

    @property
    def revoked(self) -> bool:
        return self.primary.revoked

    def addresses(self) -> frozenset[str]:
        return frozenset(u.address for u in self.uids if u.address and not u.revoked)

    def usable(self, now: datetime) -> bool:
        return self.primary.live(now)

    def encryption_subkeys(self, now: datetime) -> tuple[Component, ...]:
        if not self.usable(now):
            return ()
        return tuple(s for s in self.subkeys if Flag.ENCRYPT in s.flags and s.live(now))

    def can_encrypt(self, now: datetime) -> bool:
        return bool(self.encryption_subkeys(now)) or (
            self.usable(now) and Flag.ENCRYPT in self.primary.flags
        )


# --- addresses ---------------------------------------------------------------------------------

_LOCAL = re.compile(r'[^\s<>@",;:()\[\]\\]{1,64}')
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def normalize_address(text: str) -> str | None:
    """The one e-mail address in a user id, local part exact, domain lower-case ASCII (IDNA)."""
    text = text.strip()
    if "<" in text or ">" in text:
        if text.count("<") != 1 or text.count(">") != 1 or not text.endswith(">"):
            return None
        text = text[text.index("<") + 1 : -1].strip()
    local, at, domain = text.rpartition("@")
    if not at or not _LOCAL.fullmatch(local) or not domain:
        return None
    ascii_domain = _ascii_domain(domain)
    if ascii_domain is None:
        return None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return f"{local}@{ascii_domain}"


def _ascii_domain(domain: str) -> str | None:
    """The domain in lower-case ASCII. A plain ASCII name without punycode labels maps to its
    lower case under UTS 46, so only the others need the (slow) IDNA codec."""
    if domain.isascii() and "xn--" not in domain.lower():
        return domain.lower()
    try:
        return idna.encode(domain, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError):
        return None


# --- signatures --------------------------------------------------------------------------------


def _time(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _issued_by(sig: Signature, fpr: bytes) -> bool:
    """False when the signature names an issuer other than fpr (one naming none may be tried)."""
    for kind, _critical, payload in sig.hashed + sig.unhashed:
        if kind == 33 and len(payload) == 21 and payload[0] == 4 and payload[1:] != fpr:
            return False
        if kind == 16 and len(payload) == 8 and payload != fpr[-8:]:
            return False
    return True


def _understood(sig: Signature) -> bool:
    """No critical subpacket we do not understand (a critical notation never is)."""
    return not any(crit and (kind not in KNOWN_SUBPACKETS) for kind, crit, _ in sig.hashed)


def valid_sigs(
    packets: Iterable[bytes],
    signer: PublicKey,
    context: bytes,
    types: frozenset[int],
    since: int,
    at: int | None = None,
) -> list[Signature]:
    """Signatures of the given types by signer over context that verify, created >= since
    (and <= at when given)."""
    fpr = signer.fingerprint
    found = []
    for body in packets:
        try:
            sig = parse_signature(body)
        except KeyRejected:
            continue
        created = sig.created
        if (
            sig.sigtype in types
            and created is not None
            and created >= since
            and (at is None or created <= at)
            and _issued_by(sig, fpr)
            and _understood(sig)
            and verify(signer, sig, context)
        ):
            found.append(sig)
    return found


def sig_expires(sig: Signature) -> int | None:
    """When the signature itself expires (subpacket 3), None for never."""
    payload = sig.first(SUB_SIG_EXPIRES)
    seconds = int.from_bytes(payload, "big") if payload and len(payload) == 4 else 0
    return (sig.created or 0) + seconds if seconds else None


def _alive(sig: Signature, at: int) -> bool:
    until = sig_expires(sig)
    return until is None or at < until


def newest(sigs: Iterable[Signature]) -> Signature | None:
    """The newest signature; the later one wins a tie (as gpg and sq pick)."""
    best: Signature | None = None
    for sig in sigs:
        if best is None or (sig.created or 0) >= (best.created or 0):
            best = sig
    return best


def stated_flags(sig: Signature | None) -> frozenset[Flag] | None:
    """The capabilities a signature's key-flags subpacket states; None when it states none."""
    payload = sig.first(SUB_KEY_FLAGS) if sig else None
    if payload is None:
        return None
    first = payload[0] if payload else 0
    return frozenset(name for bit, name in FLAG_BITS if first & bit)


def hash_preferences(sig: Signature) -> tuple[int, ...]:
    """The hash algorithms a self-signature says the key prefers (subpacket 21), in order."""
    return tuple(sig.first(SUB_PREF_HASH) or b"")


def states_key_expiry(sig: Signature) -> bool:
    """Whether the signature gives its key an expiry (a key expiration time of 0 gives none)."""
    return _expiry(sig, 0) is not None


def _expiry(sig: Signature, created: int) -> datetime | None:
    payload = sig.first(SUB_KEY_EXPIRES)
    seconds = int.from_bytes(payload, "big") if payload and len(payload) == 4 else 0
    return _time(created + seconds) if seconds else None


def _component(
    key: PublicKey,
    expires: datetime | None,
    revoked: bool,
    flags: frozenset[Flag] | None,
    *,
    primary: bool,
    bound: bool = True,
) -> Component:
    capable = CAPABLE.get(key.algorithm, frozenset())
    granted = capable if flags is None else flags & capable
    if primary and capable & SIGNING:
        granted |= {Flag.CERTIFY}
    if not bound:
        granted = frozenset()
    fpr = key.fingerprint
    return Component(
        fingerprint=fpr.hex().upper(),
        key_id=fpr[-8:].hex().upper(),
        algorithm=ALGORITHMS.get(key.algorithm, f"algorithm {key.algorithm}"),
        bits=key.bits,
        created=_time(key.created),
        expires=expires,
        revoked=revoked,
        flags=frozenset(granted),
        bound=bound,
    )


# --- where signatures belong ------------------------------------------------------------------


@dataclass
class _Slot:
    context: bytes | None  # None: a subkey packet that cannot be read
    types: frozenset[int]
    sigs: list[Packet]

    def signed_by(self, primary: PublicKey, sig: Signature) -> bool:
        return (
            self.context is not None
            and sig.sigtype in self.types
            and verify(primary, sig, self.context)
        )


def _subkey_or_none(body: bytes) -> PublicKey | None:
    try:
        return parse_public_key(body)
    except KeyRejected:
        return None


def placed(cert: Cert) -> Cert:
    """cert with every self-signature on the component it signs (module rules); cert itself
    when nothing moves."""
    primary = parse_public_key(cert.primary.packet.body)
    pctx = key_context(primary)
    slots = [_Slot(pctx, PRIMARY_TYPES, [])]
    slots += [
        _Slot(pctx + uid_context(b.packet.tag, b.packet.body), UID_TYPES, []) for b in cert.uids
    ]
    for bundle in cert.subkeys:
        sub = _subkey_or_none(bundle.packet.body)
        slots.append(_Slot(None if sub is None else pctx + key_context(sub), SUBKEY_TYPES, []))
    budget, moved = MAX_RELOCATIONS, False
    for home, bundle in enumerate((cert.primary, *cert.uids, *cert.subkeys)):
        for packet in bundle.sigs:
            target = home
            try:
                sig: Signature | None = parse_signature(packet.body)
            except KeyRejected:
                sig = None
            if (
                sig is not None
                and _issued_by(sig, primary.fingerprint)
                and not slots[home].signed_by(primary, sig)
            ):
                for i, slot in enumerate(slots):
                    if i == home or sig.sigtype not in slot.types or budget <= 0:
                        continue
                    budget -= 1
                    if slot.signed_by(primary, sig):
                        target, moved = i, True
                        break
            slots[target].sigs.append(packet)
    if not moved:
        return cert
    n = len(cert.uids)
    return Cert(
        Bundle(cert.primary.packet, tuple(slots[0].sigs)),
        tuple(
            Bundle(b.packet, tuple(s.sigs))
            for b, s in zip(cert.uids, slots[1 : 1 + n], strict=True)
        ),
        tuple(
            Bundle(b.packet, tuple(s.sigs))
            for b, s in zip(cert.subkeys, slots[1 + n :], strict=True)
        ),
    )


# --- the view ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _UidFacts:
    view: UserID
    binding: Signature
    revocations: tuple[Signature, ...]


@dataclass(frozen=True)
class _SubkeyFacts:
    view: Component
    binding: Signature
    revocations: tuple[Signature, ...]


@dataclass(frozen=True)
class SelfSigned:
    """A key's view and the self-signatures that decide it at that time: the ones a re-signer
    supersedes (openpgp/resign.py copies their subpackets into its new signatures)."""

    view: KeyView
    direct: Signature | None  # the newest valid, unexpired direct-key signature
    uids: tuple[tuple[UserID, Signature], ...]  # each listed user id and its newest binding
    subkeys: tuple[tuple[Component, Signature], ...]  # each listed subkey and its newest binding


def _uid_facts(bundle: Bundle, primary: PublicKey, at: int) -> _UidFacts | None:
    context = key_context(primary) + uid_context(bundle.packet.tag, bundle.packet.body)
    bodies = [s.body for s in bundle.sigs]
    binding = newest(valid_sigs(bodies, primary, context, CERTIFICATIONS, primary.created, at))
    if binding is None or binding.created is None or not _alive(binding, at):
        return None
    revocations = valid_sigs(
        bodies, primary, context, frozenset({CERT_REVOCATION}), primary.created, at
    )
    uid = bundle.packet.body.decode("utf-8", "replace")
    flag = binding.first(SUB_PRIMARY_UID)
    until = sig_expires(binding)
    return _UidFacts(
        UserID(
            uid=uid,
            address=normalize_address(uid),
            created=_time(binding.created),
            revoked=any((r.created or 0) >= binding.created for r in revocations),
            primary=bool(flag and flag[0]),
            expires=None if until is None else _time(until),
        ),
        binding,
        tuple(revocations),
    )


def _subkey(bundle: Bundle, primary: PublicKey, at: int) -> _SubkeyFacts | None:
    sub = _subkey_or_none(bundle.packet.body)
    if sub is None or sub.created > at or material_refusal(sub):
        return None
    context = key_context(primary) + key_context(sub)
    bodies = [s.body for s in bundle.sigs]
    bindings = valid_sigs(bodies, primary, context, frozenset({SUBKEY_BINDING}), sub.created, at)
    binding = newest(bindings)
    if binding is None or not _alive(binding, at):
        return None
    revocations = valid_sigs(
        bodies, primary, context, frozenset({SUBKEY_REVOCATION}), sub.created, at
    )
    flags = stated_flags(binding)
    if flags is not None and Flag.SIGN in flags and not _back_signed(binding, sub, context, at):
        flags = flags - {Flag.SIGN}
    component = _component(
        sub, _expiry(binding, sub.created), bool(revocations), flags, primary=False
    )
    return _SubkeyFacts(component, binding, tuple(revocations))


def _back_signed(binding: Signature, sub: PublicKey, context: bytes, at: int) -> bool:
    for kind, _critical, payload in binding.hashed + binding.unhashed:
        if kind == SUB_EMBEDDED and valid_sigs(
            [payload], sub, context, frozenset({PRIMARY_BINDING}), sub.created, at
        ):
            return True
    return False


def _readable(primary: PublicKey, at: int) -> None:
    """KeyRejected for a primary key refreshd does not read at all at `at`."""
    refusal = material_refusal(primary)
    if refusal:
        raise KeyRejected(f"the key is refused: {refusal}")
    if primary.created > at:
        when = _time(primary.created).strftime("%Y-%m-%d %H:%M:%S UTC")
        raise KeyRejected(f"the key was created in the future ({when})")


def view_of(cert: Cert, now: datetime) -> KeyView:
    """The KeyView of a parsed certificate at now (the caller's clock); KeyRejected if nothing
    in it is validly self-signed."""
    return self_signed(cert, now).view


def self_signed(cert: Cert, now: datetime) -> SelfSigned:
    """The KeyView of a parsed certificate at now with the self-signatures that decide it
    (module rules); KeyRejected if nothing in it is validly self-signed."""
    at = int(now.timestamp())
    primary = parse_public_key(cert.primary.packet.body)
    _readable(primary, at)
    cert = placed(cert)
    context = key_context(primary)
    own = [s.body for s in cert.primary.sigs]
    since = primary.created
    directs = valid_sigs(own, primary, context, frozenset({DIRECT_KEY}), since, at)
    revocations = valid_sigs(own, primary, context, frozenset({KEY_REVOCATION}), since, at)
    uid_facts = [
        facts
        for bundle in cert.uids
        if bundle.packet.tag == TAG_USER_ID and (facts := _uid_facts(bundle, primary, at))
    ]
    subkeys = [found for bundle in cert.subkeys if (found := _subkey(bundle, primary, at))]

    live = [f for f in uid_facts if not f.view.revoked]
    chosen = sorted(live, key=lambda f: (f.view.primary, f.view.created), reverse=True)[:1]
    direct = newest(directs)
    if direct is not None and not _alive(direct, at):
        direct = None
    # newest first; on a tie the direct-key signature comes first
    candidates = sorted(
        [*([direct] if direct else []), *(f.binding for f in chosen)],
        key=lambda s: s.created or 0,
        reverse=True,
    )
    expiry_sig = next((s for s in candidates if _expiry(s, 0) is not None), None)
    flags = next((f for s in candidates if (f := stated_flags(s)) is not None), None)

    all_valid = [
        *directs,
        *revocations,
        *(sig for f in uid_facts for sig in (f.binding, *f.revocations)),
        *(sig for f in subkeys for sig in (f.binding, *f.revocations)),
    ]
    if not all_valid:
        raise KeyRejected(backend_refusal(primary) or "the key has no valid self-signature")
    expires = _expiry(expiry_sig, primary.created) if expiry_sig else None
    bound = direct is not None or bool(uid_facts)
    view = KeyView(
        fingerprint=primary.fingerprint.hex().upper(),
        primary=_component(primary, expires, bool(revocations), flags, primary=True, bound=bound),
        uids=tuple(f.view for f in uid_facts),
        subkeys=tuple(f.view for f in subkeys),
        newest_self_signature=_time(max(s.created or 0 for s in all_valid)),
    )
    return SelfSigned(
        view,
        direct,
        tuple((f.view, f.binding) for f in uid_facts),
        tuple((f.view, f.binding) for f in subkeys),
    )


def parse_one(
    data: bytes, keep_issuers: frozenset[str] = frozenset(), *, keep_all: bool = False
) -> Cert:
    """Exactly one certificate from data (binary or armored), third-party certifications
    other than keep_issuers' dropped (none with keep_all: a key read back from the store
    keeps the certifications it was stored with)."""
    size = max(len(data), 1)
    filt = StreamingKeyFilter(
        max_response_bytes=size, max_key_bytes=size, keep_issuers=keep_issuers, keep_all=keep_all
    )
    filt.feed(data)
    certs = filt.finish_certificates()
    if len(certs) != 1:
        raise KeyRejected(f"expected one key, found {len(certs)}")
    return certs[0]


@rejecting
def read_key(data: bytes, now: datetime) -> KeyView:
    """The view of one public key at now, binary or armored (KeyRejected with a reason
    otherwise)."""
    return view_of(parse_one(data), now)


def certifiers(
    cert: Cert, address: str, signers: Iterable[PublicKey], now: datetime
) -> frozenset[str]:
    """The fingerprints of those signers (other keys) that made a valid certification of
    cert's valid, unrevoked user id for address: verifying, not expired at now, and not
    withdrawn by a later certification revocation of the same signer. Whether a signer itself
    is still valid is the caller's question."""
    target = normalize_address(address)
    subject = parse_public_key(cert.primary.packet.body)
    view = view_of(cert, now)
    wanted = {u.uid for u in view.uids if not u.revoked and u.address == target}
    others = [s for s in signers if s.fingerprint != subject.fingerprint]
    if target is None or not wanted or not others:
        return frozenset()
    found: set[str] = set()
    for bundle in cert.uids:
        uid = bundle.packet.body.decode("utf-8", "replace")
        if bundle.packet.tag != TAG_USER_ID or uid not in wanted:
            continue
        context = key_context(subject) + uid_context(bundle.packet.tag, bundle.packet.body)
        bodies = [s.body for s in bundle.sigs]
        for signer in others:
            made = valid_sigs(bodies, signer, context, CERTIFICATIONS, subject.created)
            withdrawn = valid_sigs(
                bodies, signer, context, frozenset({CERT_REVOCATION}), subject.created
            )
            if any(
                _current(c, now) and all((r.created or 0) < (c.created or 0) for r in withdrawn)
                for c in made
            ):
                found.add(signer.fingerprint.hex().upper())
    return frozenset(found)


def _current(sig: Signature, now: datetime) -> bool:
    """A signature is current until its own expiration time (subpacket 3), if it has one."""
    at = int(now.timestamp())
    return (sig.created or 0) <= at and _alive(sig, at)


def primary_key(cert: Cert) -> PublicKey:
    return parse_public_key(cert.primary.packet.body)
