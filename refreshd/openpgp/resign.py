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
4. Expiries are read from the newest cryptographically valid self-signature of each component,
   checked here (pgpy's own expiry properties and `verify` are wrong for expired keys and subkeys).
5. A protected key stays protected with the same passphrase; a wrong or missing passphrase raises
   Locked and nothing is returned.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import hashes
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

from refreshd.core.ownpolicy import OwnComponent
from refreshd.errors import OwnKeyError
from refreshd.openpgp.keyview import normalize_address

__all__ = [
    "BadKey",
    "BadMessage",
    "Locked",
    "OwnKey",
    "decrypt",
    "extend",
    "generate",
    "public_armored",
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
CERTIFICATIONS = {
    SignatureType.Generic_Cert,
    SignatureType.Persona_Cert,
    SignatureType.Casual_Cert,
    SignatureType.Positive_Cert,
}
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


def read_own(armored_secret: str | bytes) -> OwnKey:
    """The facts the expiry policy needs about a secret key (rule 4)."""
    return _parse(armored_secret)[1]


def extend(
    armored_secret: str,
    passphrase: str | None,
    new_expiries: Mapping[str, datetime],
    *,
    sig_time: datetime,
) -> str:
    """The key with new self-signatures giving each named component its new expiry (rule 2)."""
    primary, facts = _parse(armored_secret)
    signed_at = sig_time.astimezone(UTC)
    with _quiet():
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
        with _unlocked(primary, passphrase):
            halg = _hash_for(primary)
            primary_expiry = new_expiries.get(facts.fingerprint)
            if primary_expiry is not None:
                _resign_primary(primary, primary_expiry, signed_at, halg)
            for sub in primary.subkeys.values():
                sub_expiry = new_expiries.get(_fpr(sub))
                if sub_expiry is not None:
                    _rebind(primary, sub, sub_expiry, signed_at, halg)
        return str(primary)


def public_armored(armored_secret: str | bytes) -> str:
    """The transferable public key, ASCII-armored (VKS, HKP and WKS take it so)."""
    primary, _ = _parse(armored_secret)
    with _quiet():
        return str(primary.pubkey)


def decrypt(armored_secret: str | bytes, passphrase: str | None, armored_message: str) -> bytes:
    """The plaintext of a message encrypted to the own key (a WKS confirmation request)."""
    primary, _ = _parse(armored_secret)
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


def _parse(armored_secret: str | bytes) -> tuple[PGPKey, OwnKey]:
    """The key and its facts; every packet is looked at here, so later steps meet no surprise."""
    try:
        with _quiet():
            key, _ = PGPKey.from_blob(armored_secret)
            if not isinstance(key, PGPKey) or key._key is None:
                raise BadKey("not an OpenPGP key")
            if key.is_public:
                raise BadKey("a public key was given where the secret key is needed")
            if not key.is_primary:
                raise BadKey("the key has no primary key")
            return key, _facts(key)
    except BadKey:
        raise
    except Exception as exc:  # pgpy raises anything from ValueError to IndexError on bad input
        raise BadKey(f"not a usable OpenPGP key: {type(exc).__name__}: {exc}") from exc


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


def _fpr(key: PGPKey) -> str:
    return str(key.fingerprint).replace(" ", "").upper()


def _verified(primary: PGPKey, subject: object, sig: PGPSignature) -> bool:
    if sig.signer != primary.fingerprint.keyid:
        return False
    try:
        digest = getattr(hashes, sig.hash_algorithm.name)()
        return bool(primary._key.verify(sig.hashdata(subject), sig.__sig__, digest))
    except Exception:  # a malformed or unsupported signature simply does not count
        return False


def _newest(
    primary: PGPKey, subject: object, sigs: list[PGPSignature], types: set[SignatureType]
) -> list[PGPSignature]:
    valid = [s for s in sigs if s.type in types and _verified(primary, subject, s)]
    return sorted(valid, key=lambda s: s.created, reverse=True)


def _expiry(created: datetime, sig: PGPSignature | None) -> datetime | None:
    if sig is None or not sig.key_expiration:
        return None
    expires: datetime = created.astimezone(UTC) + sig.key_expiration
    return expires


def _facts(primary: PGPKey) -> OwnKey:
    created = primary.created.astimezone(UTC)
    times: list[datetime] = []
    direct = _newest(primary, primary, list(primary._signatures), {SignatureType.DirectlyOnKey})
    revoked = bool(
        _newest(primary, primary, list(primary._signatures), {SignatureType.KeyRevocation})
    )
    uid_sigs = []
    addresses = []
    for uid in primary._uids:
        newest = _newest(
            primary, uid, list(uid._signatures), CERTIFICATIONS | {SignatureType.CertRevocation}
        )
        if newest and newest[0].type != SignatureType.CertRevocation:
            uid_sigs.append(newest[0])
            address = normalize_address(uid.userid) if uid.is_uid else None
            if address:
                addresses.append(address)
        times += [s.created for s in newest[:1]]
    if not uid_sigs and not direct:
        raise BadKey("the key has no valid self-signature")
    times += [s.created for s in direct[:1]]
    holder = next((s for s in uid_sigs if _marks_primary(s)), uid_sigs[0] if uid_sigs else None)
    if direct and direct[0].key_expiration:
        holder = direct[0]
    components = [
        OwnComponent(_fpr(primary), "primary", created, _expiry(created, holder), revoked)
    ]
    for sub in primary.subkeys.values():
        newest = _newest(
            primary,
            sub,
            list(sub._signatures),
            {SignatureType.Subkey_Binding, SignatureType.SubkeyRevocation},
        )
        if not newest:
            continue
        times.append(newest[0].created)
        binding = next((s for s in newest if s.type == SignatureType.Subkey_Binding), None)
        sub_created = sub.created.astimezone(UTC)
        components.append(
            OwnComponent(
                _fpr(sub),
                _role(binding.key_flags if binding else set()),
                sub_created,
                _expiry(sub_created, binding),
                newest[0].type == SignatureType.SubkeyRevocation,
            )
        )
    return OwnKey(
        _fpr(primary),
        tuple(addresses),
        tuple(components),
        max(t.astimezone(UTC) for t in times),
        bool(primary.is_protected),
    )


def _marks_primary(sig: PGPSignature) -> bool:
    return any(p.primary for p in sig._signature.subpackets["h_PrimaryUserID"])


def _role(flags: set[KeyFlags]) -> str:
    if flags & ENCRYPT:
        return "encrypt"
    if KeyFlags.Sign in flags:
        return "sign"
    if KeyFlags.Authentication in flags:
        return "auth"
    return "other"


def _hash_for(primary: PGPKey) -> HashAlgorithm:
    prefs: list[HashAlgorithm] = []
    for uid in primary._uids:
        for sig in uid._signatures:
            if sig.signer == primary.fingerprint.keyid:
                prefs += list(sig.hashprefs)
    return next((h for h in prefs if h in STRONG_HASHES), HashAlgorithm.SHA256)


def _successor(
    primary: PGPKey, old: PGPSignature, signed_at: datetime, halg: HashAlgorithm
) -> PGPSignature:
    """A signature of the same type carrying every hashed subpacket of `old` but the RESET ones."""
    new = PGPSignature.new(
        old.type, primary.key_algorithm, halg, primary.fingerprint.keyid, created=signed_at
    )
    for (name, _), packet in old._signature.subpackets._hashed_sp.items():
        if name not in RESET:
            new._signature.subpackets["h_" + name] = packet
    return new


def _resign_primary(
    primary: PGPKey, expires: datetime, signed_at: datetime, halg: HashAlgorithm
) -> None:
    lifetime = expires - primary.created.astimezone(UTC)
    direct = _newest(primary, primary, list(primary._signatures), {SignatureType.DirectlyOnKey})
    if direct and direct[0].key_expiration:
        sig = _successor(primary, direct[0], signed_at, halg)
        sig._signature.subpackets.addnew("KeyExpirationTime", hashed=True, expires=lifetime)
        primary |= primary._sign(primary, sig)
    for uid in list(primary._uids):
        newest = _newest(
            primary, uid, list(uid._signatures), CERTIFICATIONS | {SignatureType.CertRevocation}
        )
        if not newest or newest[0].type == SignatureType.CertRevocation:
            continue
        sig = _successor(primary, newest[0], signed_at, halg)
        sig._signature.subpackets.addnew("KeyExpirationTime", hashed=True, expires=lifetime)
        uid |= primary._sign(uid, sig)


def _rebind(
    primary: PGPKey, sub: PGPKey, expires: datetime, signed_at: datetime, halg: HashAlgorithm
) -> None:
    newest = _newest(primary, sub, list(sub._signatures), {SignatureType.Subkey_Binding})
    sig = _successor(primary, newest[0], signed_at, halg)
    sig._signature.subpackets.addnew(
        "KeyExpirationTime", hashed=True, expires=expires - sub.created.astimezone(UTC)
    )
    if KeyFlags.Sign in (newest[0].key_flags or set()) or not newest[0].key_flags:
        back = PGPSignature.new(
            SignatureType.PrimaryKey_Binding,
            sub.key_algorithm,
            halg,
            sub.fingerprint.keyid,
            created=signed_at,
        )
        back = sub._sign(primary, back)
        sig._signature.subpackets.addnew("EmbeddedSignature", hashed=False, _sig=back._signature)
    sub |= primary._sign(sub, sig)


def _drop_signatures(sub: PGPKey) -> None:
    """Remove the binding pgpy made without an expiry, so only the explicit one remains."""
    sub._signatures.clear()
