"""Make and re-sign the user's own key with pgpy, working around what pgpy 0.6.0 gets wrong.

Rules:
1. A new key is an Ed25519 primary (certify, sign) with a Cv25519 encryption subkey, both
   expiring at the same moment; the expiry is written into the uid self-signature and, as an
   explicit KeyExpirationTime subpacket, into the subkey binding (pgpy's `bind` drops it).
2. Extending writes a new self-signature for every uid that is not revoked and for every
   direct-key signature carrying an expiry, and a new binding for every subkey given a new
   expiry. Each new signature copies every hashed subpacket of the one it supersedes (flags,
   preferences, features, primary-uid, keyserver preferences, notations, unknown ones), then sets
   its own creation time and key expiry. Signing-capable subkeys get a fresh back-signature.
3. Signatures use SHA-512, SHA-384 or SHA-256 (the first of the key's preferences among them,
   else SHA-256), never SHA-1, whatever the key prefers.
4. Everything about the key is read by openpgp/keyview.py from its public part, at the
   caller's time, like any other key (pgpy's own expiry properties and `verify` are wrong for
   expired keys and subkeys); the signatures superseded are the ones that view relies on.
   pgpy parses the secret key once per call and only signs (and decrypts).
5. A protected key stays protected with the same passphrase; a wrong or missing passphrase raises
   Locked and nothing is returned.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pgpy import PGPUID, PGPKey, PGPMessage, PGPSignature
from pgpy.constants import (
    CompressionAlgorithm,
    EllipticCurveOID,
    HashAlgorithm,
    KeyFlags,
    KeyServerPreferences,
    PubKeyAlgorithm,
    SignatureType,
    SymmetricKeyAlgorithm,
)
from pgpy.errors import PGPDecryptionError

from refreshd.core.ownpolicy import OwnComponent, Role
from refreshd.errors import KeyRejected, OwnKeyError
from refreshd.openpgp.keyview import (
    Component,
    Flag,
    KeyView,
    SelfSigned,
    hash_preferences,
    parse_one,
    self_signed,
    stated_flags,
    states_key_expiry,
)
from refreshd.openpgp.packets import Signature

__all__ = [
    "BadKey",
    "BadMessage",
    "Locked",
    "OwnKey",
    "decrypt",
    "extend",
    "generate",
    "read_own",
]

STRONG_HASHES = (HashAlgorithm.SHA512, HashAlgorithm.SHA384, HashAlgorithm.SHA256)
CIPHERS = [SymmetricKeyAlgorithm.AES256, SymmetricKeyAlgorithm.AES128]
DIGESTS = [HashAlgorithm.SHA512, HashAlgorithm.SHA256]
COMPRESSION = [
    CompressionAlgorithm.ZLIB,
    CompressionAlgorithm.ZIP,
    CompressionAlgorithm.Uncompressed,
]
# Subpackets every new signature sets itself instead of copying from the superseded one.
RESET = {
    "CreationTime",
    "KeyExpirationTime",
    "SignatureExpirationTime",
    "Issuer",
    "IssuerFingerprint",
    "EmbeddedSignature",
}
ENCRYPT = {KeyFlags.EncryptCommunications, KeyFlags.EncryptStorage}


class Locked(OwnKeyError):
    """The secret key could not be unlocked; the message says why."""


class BadKey(OwnKeyError):
    """The input is not a usable secret key; the message says why."""


class BadMessage(OwnKeyError):
    """An encrypted message the own key cannot open; the message says why."""


@dataclass(frozen=True)
class OwnKey:
    fingerprint: str
    addresses: tuple[str, ...]
    components: tuple[OwnComponent, ...]
    last_signature: datetime
    protected: bool
    public: str  # the transferable public key, ASCII-armored (VKS, HKP and WKS take it so)
    view: KeyView  # the public key as keyview reads it


def generate(
    address: str, name: str | None, *, now: datetime, expiry: timedelta, passphrase: str | None
) -> str:
    """A new armored secret key for `address`, expiring `expiry` after `now` (rule 1)."""
    created = now.astimezone(UTC).replace(microsecond=0)
    with _quiet():
        primary = PGPKey.new(PubKeyAlgorithm.EdDSA, EllipticCurveOID.Ed25519, created=created)
        uid = PGPUID.new(name, email=address) if name else PGPUID.new(f"<{address}>")
        primary.add_uid(
            uid,
            selfsign=True,
            usage={KeyFlags.Certify, KeyFlags.Sign},
            ciphers=CIPHERS,
            hashes=DIGESTS,
            compression=COMPRESSION,
            keyserver_flags={KeyServerPreferences.NoModify},
            primary=True,
            key_expiration=expiry,
            created=created,
            hash=HashAlgorithm.SHA512,
        )
        sub = PGPKey.new(PubKeyAlgorithm.ECDH, EllipticCurveOID.Curve25519, created=created)
        primary.add_subkey(sub, usage=ENCRYPT, created=created, hash=HashAlgorithm.SHA512)
        sub = next(iter(primary.subkeys.values()))
        binding = PGPSignature.new(
            SignatureType.Subkey_Binding,
            primary.key_algorithm,
            HashAlgorithm.SHA512,
            primary.fingerprint.keyid,
            created=created,
        )
        binding._signature.subpackets.addnew("KeyFlags", hashed=True, flags=ENCRYPT)
        binding._signature.subpackets.addnew("KeyExpirationTime", hashed=True, expires=expiry)
        _drop_signatures(sub)
        sub |= primary._sign(sub, binding)
        if passphrase:
            primary.protect(passphrase, SymmetricKeyAlgorithm.AES256, HashAlgorithm.SHA256)
    return str(primary)


def read_own(armored_secret: str | bytes, now: datetime) -> OwnKey:
    """The facts the expiry policy needs about a secret key at now (rule 4)."""
    return _parse(armored_secret, now)[1]


def extend(
    armored_secret: str,
    passphrase: str | None,
    new_expiries: Mapping[str, datetime],
    *,
    sig_time: datetime,
    now: datetime,
) -> str:
    """The key with new self-signatures giving each named component its new expiry (rule 2)."""
    primary, facts, signed = _parse(armored_secret, now)
    signed_at = sig_time.astimezone(UTC)
    if signed_at > now:
        raise ValueError(f"signature time {signed_at:%Y-%m-%dT%H:%M:%SZ} is in the future")
    if signed_at <= facts.last_signature:
        raise ValueError(
            f"signature time {signed_at:%Y-%m-%dT%H:%M:%SZ} is not after the newest "
            f"self-signature ({facts.last_signature:%Y-%m-%dT%H:%M:%SZ})"
        )
    known = {c.fingerprint: c for c in facts.components}
    unknown = set(new_expiries) - set(known)
    if unknown:
        raise ValueError(f"not components of this key: {', '.join(sorted(unknown))}")
    revoked = sorted(f for f in new_expiries if known[f].revoked)
    if revoked:
        raise ValueError(f"revoked components are never extended: {', '.join(revoked)}")
    for fpr, expires in new_expiries.items():
        if expires <= signed_at:
            raise ValueError(f"new expiry of {fpr} is not after the signature time")
    with _quiet(), _unlocked(primary, passphrase):
        resigner = _Resigner(primary, signed, signed_at)
        primary_expiry = new_expiries.get(facts.fingerprint)
        if primary_expiry is not None:
            resigner.primary(primary_expiry)
        for component, binding in signed.subkeys:
            sub_expiry = new_expiries.get(component.fingerprint)
            if sub_expiry is not None:
                resigner.subkey(component, binding, sub_expiry)
        return str(primary)


def decrypt(armored_secret: str | bytes, passphrase: str | None, armored_message: str) -> bytes:
    """The plaintext of a message encrypted to the own key (a WKS confirmation request)."""
    primary = _secret(armored_secret)
    with _quiet():
        try:
            message = PGPMessage.from_blob(armored_message)
        except Exception as exc:  # pgpy's parse errors are of every kind
            raise BadMessage(f"not an OpenPGP message: {type(exc).__name__}") from exc
        if not message.is_encrypted:
            raise BadMessage("the message is not encrypted")
        with _unlocked(primary, passphrase):
            try:
                plain = primary.decrypt(message).message
            except Exception as exc:  # wrong recipient, damaged data, unsupported algorithm
                raise BadMessage(f"cannot decrypt: {type(exc).__name__}: {exc}") from exc
    return plain.encode() if isinstance(plain, str) else bytes(plain)


def _secret(armored_secret: str | bytes) -> PGPKey:
    """The secret key as pgpy holds it, for signing and decrypting; every packet is looked at
    here, so later steps meet no surprise."""
    try:
        with _quiet():
            key, _ = PGPKey.from_blob(armored_secret)
            if not isinstance(key, PGPKey) or key._key is None:
                raise BadKey("not an OpenPGP key")
            if key.is_public:
                raise BadKey("a public key was given where the secret key is needed")
            if not key.is_primary:
                raise BadKey("the key has no primary key")
            return key
    except BadKey:
        raise
    except Exception as exc:  # pgpy raises anything from ValueError to IndexError on bad input
        raise BadKey(f"not a usable OpenPGP key: {type(exc).__name__}: {exc}") from exc


def _parse(armored_secret: str | bytes, now: datetime) -> tuple[PGPKey, OwnKey, SelfSigned]:
    """The key parsed once: pgpy's object to sign with, and the facts keyview reads from its
    public part at now (rule 4)."""
    primary = _secret(armored_secret)
    try:
        with _quiet():
            public = primary.pubkey
            signed = self_signed(parse_one(bytes(public), keep_all=True), now)
            armored_public = str(public)
    except KeyRejected as exc:
        raise BadKey(exc.reason) from exc
    except Exception as exc:  # pgpy may fail to write back what it read
        raise BadKey(f"not a usable OpenPGP key: {type(exc).__name__}: {exc}") from exc
    view = signed.view
    if not view.primary.bound:
        raise BadKey("the key has no valid self-signature")
    live = sorted(
        (u for u in view.uids if u.address and not u.revoked), key=lambda u: not u.primary
    )
    addresses = tuple(dict.fromkeys(u.address for u in live if u.address))
    components = [
        OwnComponent(
            view.fingerprint, Role.PRIMARY, view.primary.created, view.expires, view.revoked
        ),
        *(
            OwnComponent(c.fingerprint, _role(c.flags), c.created, c.expires, c.revoked)
            for c in view.subkeys
        ),
    ]
    facts = OwnKey(
        view.fingerprint,
        addresses,
        tuple(components),
        view.newest_self_signature,
        bool(primary.is_protected),
        armored_public,
        view,
    )
    return primary, facts, signed


@contextmanager
def _quiet() -> Iterator[None]:
    """pgpy warns about its own unfinished checks on every call; none of those are news."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextmanager
def _unlocked(primary: PGPKey, passphrase: str | None) -> Iterator[None]:
    if not primary.is_protected:
        yield
        return
    if not passphrase:
        raise Locked("the own key is passphrase-protected and no passphrase is configured")
    try:
        with primary.unlock(passphrase):
            yield
    except PGPDecryptionError as exc:
        raise Locked("the configured passphrase does not unlock the own key") from exc


# a subkey's role: the first of these flags it has
ROLE_OF = ((Flag.ENCRYPT, Role.ENCRYPT), (Flag.SIGN, Role.SIGN), (Flag.AUTH, Role.AUTH))


def _role(flags: frozenset[Flag]) -> Role:
    return next((role for flag, role in ROLE_OF if flag in flags), Role.OTHER)


def _hash_for(signed: SelfSigned) -> HashAlgorithm:
    """The first strong hash the key's user id bindings prefer, else SHA-256 (rule 3)."""
    for _, binding in signed.uids:
        for value in hash_preferences(binding):
            if value in STRONG_HASHES:
                return HashAlgorithm(value)
    return HashAlgorithm.SHA256


def _identity(sig: PGPSignature) -> tuple[int, int, bytes]:
    """What ties a signature pgpy holds to the one keyview read: type, creation second and the
    hash's first two octets (two self-signatures alike in all three would copy alike)."""
    return int(sig.type), int(sig.created.timestamp()), bytes(sig._signature.hash2)


class _Resigner:
    """Writes successors of the self-signatures keyview chose, with pgpy's signing."""

    def __init__(self, primary: PGPKey, signed: SelfSigned, signed_at: datetime) -> None:
        self.key = primary
        self.signed = signed
        self.signed_at = signed_at
        self.halg = _hash_for(signed)
        held = [*primary._signatures]
        held += [sig for uid in primary._uids for sig in uid._signatures]
        held += [sig for sub in primary.subkeys.values() for sig in sub._signatures]
        self.held = {_identity(sig): sig for sig in held}

    def _superseded(self, sig: Signature) -> PGPSignature:
        found = self.held.get((sig.sigtype, sig.created or 0, sig.left16))
        if found is None:
            raise BadKey("pgpy does not hold a self-signature the key's reading relies on")
        return found

    def _successor(self, sig: Signature, lifetime: timedelta) -> PGPSignature:
        """A signature of the same type carrying every hashed subpacket of `sig` but the RESET
        ones, with its own creation time and the given key lifetime (rule 2)."""
        old = self._superseded(sig)
        key = self.key
        new = PGPSignature.new(
            old.type, key.key_algorithm, self.halg, key.fingerprint.keyid, created=self.signed_at
        )
        for (name, _), packet in old._signature.subpackets._hashed_sp.items():
            if name not in RESET:
                new._signature.subpackets["h_" + name] = packet
        new._signature.subpackets.addnew("KeyExpirationTime", hashed=True, expires=lifetime)
        return new

    def primary(self, expires: datetime) -> None:
        key, signed = self.key, self.signed
        lifetime = expires - signed.view.primary.created
        if signed.direct is not None and states_key_expiry(signed.direct):
            key |= key._sign(key, self._successor(signed.direct, lifetime))
        uids = {uid.userid: uid for uid in key._uids if uid.is_uid}
        for user_id, binding in signed.uids:
            subject = uids.get(user_id.uid)
            if user_id.revoked or subject is None:
                continue
            subject |= key._sign(subject, self._successor(binding, lifetime))

    def subkey(self, component: Component, binding: Signature, expires: datetime) -> None:
        key = self.key
        sub = next(s for s in key.subkeys.values() if _fpr(s) == component.fingerprint)
        sig = self._successor(binding, expires - component.created)
        flags = stated_flags(binding)
        if flags is None or Flag.SIGN in flags:
            back = PGPSignature.new(
                SignatureType.PrimaryKey_Binding,
                sub.key_algorithm,
                self.halg,
                sub.fingerprint.keyid,
                created=self.signed_at,
            )
            back = sub._sign(key, back)
            sig._signature.subpackets.addnew(
                "EmbeddedSignature", hashed=False, _sig=back._signature
            )
        sub |= key._sign(sub, sig)


def _fpr(key: PGPKey) -> str:
    return str(key.fingerprint).replace(" ", "").upper()


def _drop_signatures(sub: PGPKey) -> None:
    """Remove the binding pgpy made without an expiry, so only the explicit one remains."""
    sub._signatures.clear()
