"""Cryptographic verification of v3 and v4 signatures over key material, with `cryptography`.

The hashed octets are rebuilt from the packets exactly as received (RFC 4880 5.2.4), so no
re-encoding by a parser can make a bad signature pass or a good one fail.

Rules:
- MD5 and unknown hash algorithms never verify; SHA-1 only for signatures created before
  2023-02-01 (the cut-off Sequoia's standard policy applies to self-signatures).
- The signature's public-key algorithm must match the key's; the two left octets of the digest
  must match the quick-check field.
- RSA (PKCS#1 v1.5), DSA, ECDSA (NIST, brainpool, secp256k1), EdDSA over Ed25519 (legacy 22 and
  RFC 9580 27) and Ed448 (28) are verified; anything else does not verify.
- Key material that is absurd or weak is refused before any arithmetic (`material_refusal`):
  an RSA public exponent that is even, below 3 or over 64 bits (e close to n is a known way to
  freeze a verifier for seconds), an RSA modulus over 16384 bits (cost) or under 1024 bits
  (factorable: anyone could have made its signatures).
- Material the backend cannot verify though the key may be sound (`backend_refusal`): DSA
  with p other than 1024, 2048, 3072 or 4096 bits or q other than 160, 224 or 256 bits,
  ECDSA on a curve not listed here. Readers name this limit instead of "no valid
  self-signature".
- Verifications and verifying keys are remembered (merges and refreshes see the same signatures
  again and again) under a SHA-256 of what they were computed from, never the bytes themselves:
  each memo holds a fixed number of 32-byte keys, so a stream of large distinct keys cannot grow
  it (`Memo`; about 0.5 MB for both together).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from refreshd.errors import KeyRejected
from refreshd.openpgp.packets import PublicKey, Signature, parse_public_key, signature_fields

__all__ = [
    "backend_refusal",
    "clear_caches",
    "key_context",
    "material_refusal",
    "uid_context",
    "verify",
]

SHA1_CUTOFF = 1675209600  # 2023-02-01T00:00:00Z

# hash id -> (hashlib name, cryptography algorithm, last creation time accepted or None)
HASHES: dict[int, tuple[str, type[hashes.HashAlgorithm], int | None]] = {
    2: ("sha1", hashes.SHA1, SHA1_CUTOFF),
    8: ("sha256", hashes.SHA256, None),
    9: ("sha384", hashes.SHA384, None),
    10: ("sha512", hashes.SHA512, None),
    11: ("sha224", hashes.SHA224, None),
    12: ("sha3_256", hashes.SHA3_256, None),
    14: ("sha3_512", hashes.SHA3_512, None),
}
_EC_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "2a8648ce3d030107": ec.SECP256R1,
    "2b81040022": ec.SECP384R1,
    "2b81040023": ec.SECP521R1,
    "2b8104000a": ec.SECP256K1,
    "2b2403030208010107": ec.BrainpoolP256R1,
    "2b240303020801010b": ec.BrainpoolP384R1,
    "2b240303020801010d": ec.BrainpoolP512R1,
}
_ED25519_OID = "2b06010401da470f01"
_RSA, _DSA, _ECDSA, _EDDSA = frozenset({1, 3}), 17, 19, 22
_CRYPTO_ERRORS = (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError, OverflowError)


MAX_RSA_EXPONENT_BITS = 64
MAX_RSA_MODULUS_BITS = 16384
MIN_RSA_MODULUS_BITS = 1024
_DSA_P_BITS, _DSA_Q_BITS = frozenset({1024, 2048, 3072, 4096}), frozenset({160, 224, 256})


def material_refusal(key: PublicKey) -> str | None:
    """Why this key's material is refused outright (absurdly slow or weak), None if it is not."""
    if key.algorithm in _RSA and len(key.fields) == 2:
        n, e = (int.from_bytes(f, "big") for f in key.fields)
        bits = n.bit_length()
        if bits > MAX_RSA_MODULUS_BITS:
            return f"an RSA modulus of {bits} bits is over the limit of {MAX_RSA_MODULUS_BITS}"
        if bits < MIN_RSA_MODULUS_BITS:
            return f"an RSA modulus of {bits} bits is too weak (under {MIN_RSA_MODULUS_BITS})"
        if e < 3 or not e & 1 or e.bit_length() > MAX_RSA_EXPONENT_BITS:
            return f"an RSA public exponent of {e.bit_length()} bits is refused (odd, 3 to 64 bits)"
    return None


def backend_refusal(key: PublicKey) -> str | None:
    """Why the crypto backend cannot verify with this key though it may be sound."""
    if key.algorithm == _DSA and len(key.fields) == 4:
        p, q = (int.from_bytes(f, "big").bit_length() for f in key.fields[:2])
        if p not in _DSA_P_BITS or q not in _DSA_Q_BITS:
            return f"DSA with a {p}-bit p and a {q}-bit q cannot be verified here"
    if key.algorithm == _ECDSA and key.curve not in _EC_CURVES:
        return "ECDSA on this curve cannot be verified here"
    return None


def hashed_data(context: bytes, sig: Signature) -> bytes:
    """What a signature hashes: the context and its hashed part, and for v4 the trailer."""
    part = sig.hashed_part
    if sig.version == 3:
        return context + part
    return context + part + b"\x04\xff" + len(part).to_bytes(4, "big")


def key_context(key: PublicKey) -> bytes:
    return b"\x99" + len(key.body).to_bytes(2, "big") + key.body


def uid_context(tag: int, body: bytes) -> bytes:
    return (b"\xb4" if tag == 13 else b"\xd1") + len(body).to_bytes(4, "big") + body


def verify(key: PublicKey, sig: Signature, context: bytes) -> bool:
    """True iff sig is a valid signature by key over context (see module rules)."""
    entry = HASHES.get(sig.hashalg)
    created = sig.created
    if entry is None or created is None:
        return False
    name, _algorithm, cutoff = entry
    if cutoff is not None and created >= cutoff:
        return False
    if not (sig.pubalg == key.algorithm or {sig.pubalg, key.algorithm} <= _RSA):
        return False
    digest = hashlib.new(name, hashed_data(context, sig)).digest()
    if digest[:2] != sig.left16:
        return False
    return _verified(key.body, sig.pubalg, sig.material, sig.hashalg, digest)


T = TypeVar("T")


class Memo(Generic[T]):
    """At most `entries` results, least recently used first out, each under the SHA-256 of
    the octets it was computed from: the memory it holds does not depend on their size."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._held: OrderedDict[bytes, T] = OrderedDict()

    def get(self, parts: tuple[bytes, ...], compute: Callable[[], T]) -> T:
        h = hashlib.sha256()
        for part in parts:  # length-prefixed, so no two tuples share a key
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        key = h.digest()
        if key in self._held:
            self._held.move_to_end(key)
            return self._held[key]
        value = compute()
        self._held[key] = value
        if len(self._held) > self.entries:
            self._held.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._held)

    def clear(self) -> None:
        self._held.clear()


_VERIFIED: Memo[bool] = Memo(4096)
_PUBLIC_KEYS: Memo[Public] = Memo(256)


def _verified(body: bytes, pubalg: int, material: bytes, hashalg: int, digest: bytes) -> bool:
    """The public-key check alone, remembered."""
    parts = (body, bytes((pubalg, hashalg)), material, digest)
    return _VERIFIED.get(parts, lambda: _compute_verified(body, pubalg, material, hashalg, digest))


def _compute_verified(
    body: bytes, pubalg: int, material: bytes, hashalg: int, digest: bytes
) -> bool:
    try:
        key = parse_public_key(body)
        return _check(key, signature_fields(pubalg, material), digest, HASHES[hashalg][1]())
    except (*_CRYPTO_ERRORS, KeyRejected):
        return False


def _check(
    key: PublicKey, values: tuple[bytes, ...], digest: bytes, algorithm: hashes.HashAlgorithm
) -> bool:
    public = _public_key(key.body)
    if isinstance(public, rsa.RSAPublicKey):
        size = (public.key_size + 7) // 8
        if len(values) != 1 or len(values[0]) > size:
            return False
        signature = values[0].rjust(size, b"\0")
        public.verify(signature, digest, padding.PKCS1v15(), Prehashed(algorithm))
    elif isinstance(public, (dsa.DSAPublicKey, ec.EllipticCurvePublicKey)):
        if len(values) != 2:
            return False
        r, s = (int.from_bytes(v, "big") for v in values)
        der = encode_dss_signature(r, s)
        if isinstance(public, dsa.DSAPublicKey):
            public.verify(der, digest, Prehashed(algorithm))
        else:
            public.verify(der, digest, ec.ECDSA(Prehashed(algorithm)))
    elif isinstance(public, ed25519.Ed25519PublicKey):
        if key.algorithm == 27:
            signature = values[0] if len(values) == 1 else b""
        elif len(values) == 2 and all(len(v) <= 32 for v in values):
            signature = values[0].rjust(32, b"\0") + values[1].rjust(32, b"\0")
        else:
            return False
        public.verify(signature, digest)
    elif isinstance(public, ed448.Ed448PublicKey):
        if len(values) != 1:
            return False
        public.verify(values[0], digest)
    else:
        return False
    return True


Public = (
    rsa.RSAPublicKey
    | dsa.DSAPublicKey
    | ec.EllipticCurvePublicKey
    | ed25519.Ed25519PublicKey
    | ed448.Ed448PublicKey
    | None
)


def clear_caches() -> None:
    """Forget remembered verifications and keys (a measurement of a cold read needs this)."""
    _VERIFIED.clear()
    _PUBLIC_KEYS.clear()


def _public_key(body: bytes) -> Public:
    """The verifying key of a key packet body, or None for encryption-only algorithms."""
    return _PUBLIC_KEYS.get((body,), lambda: _compute_public_key(body))


def _compute_public_key(body: bytes) -> Public:
    key = parse_public_key(body)
    ints = [int.from_bytes(f, "big") for f in key.fields]
    if key.algorithm in _RSA:
        return rsa.RSAPublicNumbers(ints[1], ints[0]).public_key()
    if key.algorithm == _DSA:
        p, q, g, y = ints
        return dsa.DSAPublicNumbers(y, dsa.DSAParameterNumbers(p, q, g)).public_key()
    if key.algorithm == _ECDSA and key.curve in _EC_CURVES:
        curve = _EC_CURVES[key.curve]()
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, key.fields[0])
    if key.algorithm == _EDDSA and key.curve == _ED25519_OID:
        point = key.fields[0]
        if len(point) != 33 or point[0] != 0x40:
            return None
        return ed25519.Ed25519PublicKey.from_public_bytes(point[1:])
    if key.algorithm == 27:
        return ed25519.Ed25519PublicKey.from_public_bytes(key.fields[0])
    if key.algorithm == 28:
        return ed448.Ed448PublicKey.from_public_bytes(key.fields[0])
    return None
