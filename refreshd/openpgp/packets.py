"""OpenPGP packets of transferable public keys, read as they stream in.

Keys come from strangers, so the first pass over them is a cheap walk over packet headers that
never hands a flooded key to a full parser.

Rules:
- Input is binary or ASCII armor; several certificates and several armor blocks (public key or
  signature blocks) may follow one another. Armor is decoded line-block by line-block with its
  CRC24 checked when present.
- More than `max_response_bytes` fed in, malformed armor or packet headers, partial or
  indeterminate lengths, secret key packets (tags 5 and 7) and packets that do not belong in a
  public key end the walk with `KeyRejected`.
- Only v4 certificates are read; a certificate of another version is skipped whole.
- Signatures before any key (a revocation certificate sent as its own block ahead of the key)
  join the certificate whose primary key issued them; when no certificate follows at all,
  `LoneSignatures` carries them (at most `MAX_LONE_SIGNATURES`) so the caller can apply them to
  a key it holds.
- Two copies of one certificate (same primary key packet) are merged into one: components and
  signatures of the later copy are added to the first, exact duplicates kept once.
- Signatures are kept when issued by the certificate's own primary key (self-signatures,
  direct-key signatures, revocations, subkey bindings). On the primary key and on user ids,
  signatures whose issuer key id or fingerprint is in `keep_issuers` are kept too (all
  attributable ones with `keep_all`, for keys read back from our own store). Every other
  signature (third-party certifications, unattributable ones) is dropped and counted.
- Trust, marker, padding and unknown non-critical packets (tags 40-63) are dropped.
- A certificate still larger than `max_key_bytes` after that is refused.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

from refreshd.errors import KeyRejected

__all__ = [
    "ALGORITHMS",
    "SUB_EMBEDDED",
    "SUB_KEY_EXPIRES",
    "SUB_KEY_FLAGS",
    "SUB_PREF_HASH",
    "SUB_PRIMARY_UID",
    "SUB_SIG_EXPIRES",
    "TAG_PUBLIC_SUBKEY",
    "TAG_USER_ID",
    "Bundle",
    "Cert",
    "LoneSignatures",
    "Packet",
    "PublicKey",
    "Signature",
    "StreamingKeyFilter",
    "armor",
    "key_fingerprint",
    "parse_public_key",
    "parse_signature",
    "signature_fields",
    "signature_issuer",
]

TAG_SIGNATURE = 2
TAG_SECRET_KEY = 5
TAG_PUBLIC_KEY = 6
TAG_SECRET_SUBKEY = 7
TAG_MARKER = 10
TAG_TRUST = 12
TAG_USER_ID = 13
TAG_PUBLIC_SUBKEY = 14
TAG_USER_ATTRIBUTE = 17
TAG_PADDING = 21
IGNORED_TAGS = frozenset({TAG_MARKER, TAG_TRUST, TAG_PADDING, *range(40, 64)})

SUB_CREATED = 2
SUB_SIG_EXPIRES = 3
SUB_KEY_EXPIRES = 9
SUB_PREF_HASH = 21
SUB_ISSUER = 16
SUB_PRIMARY_UID = 25
SUB_KEY_FLAGS = 27
SUB_EMBEDDED = 32
SUB_ISSUER_FPR = 33

_ARMOR_BEGIN = b"-----BEGIN PGP "
_PUBLIC_BEGIN = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"
_PUBLIC_END = b"-----END PGP PUBLIC KEY BLOCK-----"
_SIGNATURE_BEGIN = b"-----BEGIN PGP SIGNATURE-----"
_SIGNATURE_END = b"-----END PGP SIGNATURE-----"
_ARMOR_ENDS = {_PUBLIC_BEGIN: _PUBLIC_END, _SIGNATURE_BEGIN: _SIGNATURE_END}
MAX_LONE_SIGNATURES = 16
_WHITESPACE = b" \t\r\n\x0b\x0c"
_LINE_LIMIT = 4096
_T = TypeVar("_T")


class SecretKeyRefused(KeyRejected):
    """The data holds secret key material: refreshd takes public keys only."""

    def __init__(self) -> None:
        super().__init__("secret key material is refused: public keys only")

    def __reduce__(self) -> tuple[type[SecretKeyRefused], tuple[()]]:
        return SecretKeyRefused, ()  # raised in a worker process, re-raised here


class LoneSignatures(KeyRejected):
    """The data holds signatures but no key (a revocation certificate alone)."""

    def __init__(self, signatures: tuple[Packet, ...]):
        super().__init__(
            "the data holds only signatures, no public key (a revocation certificate alone "
            "is taken only for a key refreshd holds)"
        )
        self.signatures = signatures

    def __reduce__(self) -> tuple[type[LoneSignatures], tuple[tuple[Packet, ...]]]:
        return LoneSignatures, (self.signatures,)  # raised in a worker process, re-raised here


# --- CRC24 (RFC 4880 6.1) -------------------------------------------------------------------
# The armor checksum is computed with big-integer polynomial arithmetic over GF(2), so a 24 MB
# block costs a few dozen big-int shifts instead of a Python loop per byte.

_CRC_INIT = 0xB704CE
_CRC_POLY = 0x1864CFB
_xpow_cache: dict[int, int] = {}


def _clmul(a: int, b: int) -> int:
    result = 0
    shift = 0
    while b:
        if b & 1:
            result ^= a << shift
        b >>= 1
        shift += 1
    return result


def _mod_poly(a: int) -> int:
    while a.bit_length() > 24:
        a ^= _CRC_POLY << (a.bit_length() - 25)
    return a


def _xpow(k: int) -> int:
    """x^k mod P."""
    cached = _xpow_cache.get(k)
    if cached is None:
        result, base, e = 1, 2, k
        while e:
            if e & 1:
                result = _mod_poly(_clmul(result, base))
            base = _mod_poly(_clmul(base, base))
            e >>= 1
        cached = _xpow_cache[k] = result
    return cached


def _reduce(n: int) -> int:
    while n.bit_length() > 64:
        k = n.bit_length() // 2
        high = n >> k
        n = (n & ((1 << k) - 1)) ^ _clmul(high, _xpow(k))
    return _mod_poly(n)


def crc24_update(crc: int, data: bytes) -> int:
    """CRC24 of everything so far followed by data, given the CRC of everything so far."""
    if not data:
        return crc
    shifted = _mod_poly(_clmul(crc, _xpow(8 * len(data))))
    return shifted ^ _reduce(int.from_bytes(data, "big") << 24)


def crc24(data: bytes) -> int:
    return crc24_update(_CRC_INIT, data)


# --- packet structures ------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    tag: int
    body: bytes
    raw: bytes  # header and body exactly as received


@dataclass(frozen=True)
class Bundle:
    """A key, user id or subkey packet with the signatures that follow it."""

    packet: Packet
    sigs: tuple[Packet, ...] = ()


@dataclass(frozen=True)
class Cert:
    primary: Bundle
    uids: tuple[Bundle, ...]  # user ids and user attributes, in order
    subkeys: tuple[Bundle, ...]

    def fingerprint(self) -> str:
        """The primary key's v4 fingerprint, upper-case hex."""
        return key_fingerprint(self.primary.packet.body).hex().upper()

    def serialize(self) -> bytes:
        parts = [self.primary.packet.raw, *(s.raw for s in self.primary.sigs)]
        for bundle in (*self.uids, *self.subkeys):
            parts.append(bundle.packet.raw)
            parts.extend(s.raw for s in bundle.sigs)
        return b"".join(parts)


def _joined(first: Bundle, second: Bundle) -> Bundle:
    seen = {s.raw for s in first.sigs}
    return Bundle(first.packet, first.sigs + tuple(s for s in second.sigs if s.raw not in seen))


def _add_parts(parts: tuple[Bundle, ...], more: tuple[Bundle, ...]) -> tuple[Bundle, ...]:
    out = list(parts)
    index = {b.packet.raw: i for i, b in enumerate(out)}  # linear: a fuzzed keyring repeats
    for bundle in more:  # one key with 100,000s of user ids
        at = index.get(bundle.packet.raw)
        if at is None:
            index[bundle.packet.raw] = len(out)
            out.append(bundle)
        else:
            out[at] = _joined(out[at], bundle)
    return tuple(out)


def merge_copies(first: Cert, second: Cert) -> Cert:
    """Two copies of one certificate as one (module rules); the first copy's order is kept."""
    return Cert(
        _joined(first.primary, second.primary),
        _add_parts(first.uids, second.uids),
        _add_parts(first.subkeys, second.subkeys),
    )


def key_fingerprint(body: bytes) -> bytes:
    """v4 fingerprint of a public key or subkey packet body."""
    return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).digest()


def _spans(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type octet, payload start, payload end) of each subpacket in data[start:end]."""
    i = start
    while i < end:
        first = data[i]
        if first < 192:
            size, i = first, i + 1
        elif first < 255:
            if i + 2 > end:
                raise KeyRejected("a signature subpacket length is truncated")
            size, i = ((first - 192) << 8) + data[i + 1] + 192, i + 2
        else:
            if i + 5 > end:
                raise KeyRejected("a signature subpacket length is truncated")
            size, i = int.from_bytes(data[i + 1 : i + 5], "big"), i + 5
        if size == 0 or i + size > end:
            raise KeyRejected("a signature subpacket runs past its area")
        yield data[i], i + 1, i + size
        i += size


def subpackets(data: bytes, start: int, end: int) -> Iterator[tuple[int, bool, bytes]]:
    """(type, critical, payload) of each signature subpacket in data[start:end]."""
    for kind, first, last in _spans(data, start, end):
        yield kind & 0x7F, bool(kind & 0x80), data[first:last]


def _areas(body: bytes) -> tuple[int, int, int] | None:
    """(hashed end, unhashed end, total) of a v4 signature body, None if they do not fit."""
    if len(body) < 10 or body[0] != 4:
        return None
    hashed_end = 6 + int.from_bytes(body[4:6], "big")
    if hashed_end + 2 > len(body):
        return None
    unhashed_end = hashed_end + 2 + int.from_bytes(body[hashed_end : hashed_end + 2], "big")
    if unhashed_end + 2 > len(body):
        return None
    return hashed_end, unhashed_end, len(body)


@dataclass(frozen=True)
class Signature:
    """A v3 or v4 signature packet split into the parts verification and interpretation need.

    A v3 signature has no subpackets: its creation time and issuer key id are fixed fields,
    presented here as if they were a hashed creation-time and an unhashed issuer subpacket."""

    sigtype: int
    pubalg: int
    hashalg: int
    hashed_part: bytes  # the octets hashed before the trailer (v3: type and creation time)
    hashed: tuple[tuple[int, bool, bytes], ...]
    unhashed: tuple[tuple[int, bool, bytes], ...]
    left16: bytes
    material: bytes  # algorithm-specific signature fields
    created: int | None
    version: int = 4

    def first(self, kind: int) -> bytes | None:
        """Payload of the first hashed subpacket of this kind (only hashed ones are trusted)."""
        for sub_kind, _critical, payload in self.hashed:
            if sub_kind == kind:
                return payload
        return None


def _v3_signature(body: bytes) -> Signature:
    if len(body) < 19 or body[1] != 5:
        raise KeyRejected("a signature is not a well-formed version 3 signature")
    return Signature(
        sigtype=body[2],
        pubalg=body[15],
        hashalg=body[16],
        hashed_part=body[2:7],
        hashed=((SUB_CREATED, False, body[3:7]),),
        unhashed=((SUB_ISSUER, False, body[7:15]),),
        left16=body[17:19],
        material=body[19:],
        created=int.from_bytes(body[3:7], "big"),
        version=3,
    )


def parse_signature(body: bytes) -> Signature:
    """Parse a v3 or v4 signature packet body; KeyRejected when it is neither."""
    if body[:1] == b"\x03":
        return _v3_signature(body)
    areas = _areas(body)
    if areas is None:
        raise KeyRejected("a signature is not a well-formed version 4 signature")
    hashed_end, unhashed_end, _ = areas
    hashed = tuple(subpackets(body, 6, hashed_end))
    created = next((p for k, _c, p in hashed if k == SUB_CREATED), None)
    return Signature(
        sigtype=body[1],
        pubalg=body[2],
        hashalg=body[3],
        hashed_part=body[:hashed_end],
        hashed=hashed,
        unhashed=tuple(subpackets(body, hashed_end + 2, unhashed_end)),
        left16=body[unhashed_end : unhashed_end + 2],
        material=body[unhashed_end + 2 :],
        created=int.from_bytes(created, "big") if created and len(created) == 4 else None,
    )


def signature_issuer(body: bytes) -> tuple[bytes | None, bytes | None]:
    """(issuer key id, issuer fingerprint) of a v3 or v4 signature body; None when absent.

    This runs once per signature of a flooded key, so it scans inline instead of through
    _spans."""
    size = len(body)
    if size >= 19 and body[0] == 3:
        return body[7:15], None
    if size < 10 or body[0] != 4:
        return None, None
    hashed_end = 6 + ((body[4] << 8) | body[5])
    if hashed_end + 2 > size:
        return None, None
    unhashed_end = hashed_end + 2 + ((body[hashed_end] << 8) | body[hashed_end + 1])
    if unhashed_end + 2 > size:
        return None, None
    key_id = fpr = None
    i, end = 6, hashed_end
    while True:
        if i >= end:
            if end == unhashed_end:
                break
            i, end = hashed_end + 2, unhashed_end
            continue
        first = body[i]
        if first < 192:
            length, i = first, i + 1
        elif first < 255 and i + 2 <= end:
            length, i = ((first - 192) << 8) + body[i + 1] + 192, i + 2
        elif first == 255 and i + 5 <= end:
            length, i = int.from_bytes(body[i + 1 : i + 5], "big"), i + 5
        else:
            return None, None
        if length == 0 or i + length > end:
            return None, None
        kind = body[i] & 0x7F
        if kind == SUB_ISSUER_FPR and length == 22 and body[i + 1] == 4:
            fpr = body[i + 2 : i + 22]
        elif kind == SUB_ISSUER and length == 9:
            key_id = body[i + 1 : i + 9]
        i += length
    return (fpr[-8:], fpr) if fpr is not None else (key_id, None)


ALGORITHMS = {
    1: "RSA", 2: "RSA", 3: "RSA", 16: "Elgamal", 17: "DSA", 18: "ECDH", 19: "ECDSA", 20: "Elgamal",
    22: "EdDSA", 25: "X25519", 26: "X448", 27: "Ed25519", 28: "Ed448",
}  # fmt: skip
# curve OID (DER body, hex) -> (name, bits as gpg reports them)
CURVES = {
    "2b06010401da470f01": ("ed25519", 255),
    "2b060104019755010501": ("cv25519", 255),
    "2b6571": ("ed448", 448),
    "2b656f": ("cv448", 448),
    "2a8648ce3d030107": ("nistp256", 256),
    "2b81040022": ("nistp384", 384),
    "2b81040023": ("nistp521", 521),
    "2b8104000a": ("secp256k1", 256),
    "2b2403030208010107": ("brainpoolP256r1", 256),
    "2b240303020801010b": ("brainpoolP384r1", 384),
    "2b240303020801010d": ("brainpoolP512r1", 512),
}
_NATIVE_SIZES = {25: 32, 26: 56, 27: 32, 28: 57}


@dataclass(frozen=True)
class PublicKey:
    """A v4 public key or subkey packet body with its algorithm-specific fields."""

    body: bytes
    created: int
    algorithm: int
    curve: str | None  # hex OID for the ECC algorithms 18, 19, 22
    fields: tuple[bytes, ...]  # MPIs (or the native key for 25-28), big-endian

    @property
    def fingerprint(self) -> bytes:
        return key_fingerprint(self.body)

    @property
    def bits(self) -> int | None:
        if self.algorithm in (1, 2, 3, 16, 17, 20):
            return int.from_bytes(self.fields[0], "big").bit_length()
        if self.curve is not None:
            return CURVES.get(self.curve, ("", None))[1]
        return {25: 255, 26: 448, 27: 255, 28: 448}.get(self.algorithm)


def _mpi(data: bytes, i: int) -> tuple[bytes, int]:
    if i + 2 > len(data):
        raise KeyRejected("a key or signature field is truncated")
    size = (int.from_bytes(data[i : i + 2], "big") + 7) // 8
    if i + 2 + size > len(data):
        raise KeyRejected("a key or signature field is truncated")
    return data[i + 2 : i + 2 + size], i + 2 + size


def _mpis(data: bytes, i: int, count: int) -> tuple[tuple[bytes, ...], int]:
    values = []
    for _ in range(count):
        value, i = _mpi(data, i)
        values.append(value)
    return tuple(values), i


def parse_public_key(body: bytes) -> PublicKey:
    """Parse a v4 public key or subkey packet body; KeyRejected when malformed."""
    if len(body) < 6 or body[0] != 4:
        raise KeyRejected("a key packet is not a well-formed version 4 key")
    created, algorithm = int.from_bytes(body[1:5], "big"), body[5]
    curve = None
    if algorithm in (1, 2, 3):
        fields, _ = _mpis(body, 6, 2)
    elif algorithm in (16, 20):
        fields, _ = _mpis(body, 6, 3)
    elif algorithm == 17:
        fields, _ = _mpis(body, 6, 4)
    elif algorithm in (18, 19, 22):
        if len(body) < 7 or body[6] in (0, 0xFF) or 7 + body[6] > len(body):
            raise KeyRejected("a key packet has a malformed curve identifier")
        curve = body[7 : 7 + body[6]].hex()
        fields, _ = _mpis(body, 7 + body[6], 1)
    elif algorithm in _NATIVE_SIZES:
        size = _NATIVE_SIZES[algorithm]
        if len(body) < 6 + size:
            raise KeyRejected("a key packet is truncated")
        fields = (body[6 : 6 + size],)
    else:
        fields = ()
    return PublicKey(body, created, algorithm, curve, fields)


def signature_fields(pubalg: int, material: bytes) -> tuple[bytes, ...]:
    """The signature values: MPIs, or the native signature for Ed25519/Ed448 (27, 28)."""
    if pubalg == 27:
        return (material,) if len(material) == 64 else ()
    if pubalg == 28:
        return (material,) if len(material) == 114 else ()
    count = 1 if pubalg in (1, 3) else 2
    return _mpis(material, 0, count)[0]


# --- streaming filter -------------------------------------------------------------------------


@dataclass
class _Builder:
    primary: Packet
    fpr: bytes
    primary_sigs: list[Packet] = field(default_factory=list)
    components: list[tuple[Packet, list[Packet]]] = field(default_factory=list)
    size: int = 0

    def build(self) -> Cert:
        uids = tuple(Bundle(p, tuple(s)) for p, s in self.components if p.tag != TAG_PUBLIC_SUBKEY)
        subs = tuple(Bundle(p, tuple(s)) for p, s in self.components if p.tag == TAG_PUBLIC_SUBKEY)
        return Cert(Bundle(self.primary, tuple(self.primary_sigs)), uids, subs)


class Armor(Enum):
    """Where the armor decoder stands."""

    OUTSIDE = "outside"
    HEADERS = "headers"
    BODY = "body"


class Input(Enum):
    """How the data is encoded, known from its first non-blank octet."""

    BINARY = "binary"
    ARMOR = "armor"


class Place(Enum):
    """What the packets being read belong to."""

    PRIMARY = "primary"
    UID = "uid"
    SUBKEY = "subkey"
    SKIP = "skip"  # an unsupported certificate or subkey, read past


def _issuer_sets(keep: frozenset[str]) -> tuple[frozenset[bytes], frozenset[bytes]]:
    ids: set[bytes] = set()
    fprs: set[bytes] = set()
    for text in keep:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"keep_issuers entry {text!r} is not hex") from None
        if len(raw) == 20:
            fprs.add(raw)
            ids.add(raw[-8:])
        elif len(raw) == 8:
            ids.add(raw)
        else:
            raise ValueError(f"keep_issuers entry {text!r} is neither a key id nor a fingerprint")
    return frozenset(ids), frozenset(fprs)


class StreamingKeyFilter:
    """Feed raw bytes as they arrive; finish() returns the stripped certificates (see module)."""

    def __init__(
        self,
        *,
        max_response_bytes: int,
        max_key_bytes: int,
        keep_issuers: frozenset[str] = frozenset(),
        keep_all: bool = False,
    ):
        self.max_response_bytes = max_response_bytes
        self.keep_all = keep_all  # keys we stored: every certification already passed a strip
        self.max_key_bytes = max_key_bytes
        self._keep_ids, self._keep_fprs = _issuer_sets(keep_issuers)
        self.bytes_in = 0
        self.certifications_dropped = 0
        self.unsupported_certificates = 0
        self._mode: Input | None = None
        self._text = bytearray()
        self._armor = Armor.OUTSIDE
        self._b64 = b""
        self._crc = _CRC_INIT
        self._blocks = 0
        self._buf = bytearray()
        self._certs: list[Cert] = []
        self._lone: list[Packet] = []
        self._end_line = _PUBLIC_END
        self._cur: _Builder | None = None
        self._context = Place.SKIP
        self._closed = False

    # public interface

    def feed(self, chunk: bytes) -> None:
        self._guard(self._feed, chunk)

    def finish(self) -> list[bytes]:
        return [cert.serialize() for cert in self.finish_certificates()]

    def finish_certificates(self) -> list[Cert]:
        """Like finish(), returning the parsed structure instead of bytes."""
        return self._guard(self._finish)

    # boundary

    def _guard(self, step: Callable[..., _T], *args: object) -> _T:
        if self._closed:
            raise KeyRejected("the key data was already rejected or finished")
        try:
            return step(*args)
        except KeyRejected:
            self._closed = True
            raise
        except (ValueError, IndexError, OverflowError) as exc:
            self._closed = True
            raise KeyRejected(f"the key data is malformed ({exc})") from exc

    def _feed(self, chunk: bytes) -> None:
        self.bytes_in += len(chunk)
        if self.bytes_in > self.max_response_bytes:
            raise KeyRejected(
                f"the response is larger than the cap of {self.max_response_bytes} bytes"
            )
        if self._mode is None:
            chunk = chunk.lstrip(_WHITESPACE)
            if not chunk:
                return
            self._mode = Input.BINARY if chunk[0] & 0x80 else Input.ARMOR
        if self._mode is Input.BINARY:
            self._buf += chunk
            self._walk()
        else:
            self._text += chunk
            self._dearmor(final=False)

    def _finish(self) -> list[Cert]:
        self._closed = True
        if self._mode is None:
            raise KeyRejected("the response is empty")
        if self._mode is Input.ARMOR:
            self._dearmor(final=True)
            if self._armor != Armor.OUTSIDE:
                raise KeyRejected("the armored key block is truncated")
            if self._blocks == 0:
                raise KeyRejected("no armored public key block was found")
        if self._buf:
            raise KeyRejected("the key data ends in the middle of a packet")
        self._close_cert()
        self._attach_lone()
        if not self._certs:
            skipped = self.unsupported_certificates
            detail = f" ({skipped} certificate(s) of an unsupported version skipped)"
            raise KeyRejected("no OpenPGP public key was found" + (detail if skipped else ""))
        return self._certs

    # armor

    def _dearmor(self, *, final: bool) -> None:
        text = self._text
        while True:
            if self._armor == Armor.OUTSIDE:
                start = text.find(_ARMOR_BEGIN)
                if start < 0:
                    del text[: max(0, len(text) - len(_ARMOR_BEGIN))]
                    return
                line = self._take_line(start, final)
                if line is None:
                    return
                if line in _ARMOR_ENDS:
                    self._armor, self._b64, self._crc = Armor.HEADERS, b"", _CRC_INIT
                    self._end_line = _ARMOR_ENDS[line]
                elif b"PRIVATE KEY" in line:
                    raise SecretKeyRefused()
                else:
                    raise KeyRejected(
                        f"unexpected armor block {line[:48].decode('ascii', 'replace')!r}"
                    )
            elif self._armor == Armor.HEADERS:
                if not text:
                    return
                end = text.find(b"\n")
                if end < 0 and not final:
                    if len(text) > _LINE_LIMIT:
                        raise KeyRejected("an armor header line is too long")
                    return
                line = bytes(text[: end if end >= 0 else len(text)]).strip()
                if line and b":" not in line:
                    self._armor = Armor.BODY  # no blank line after the headers: body starts here
                    continue
                del text[: end + 1 if end >= 0 else len(text)]
                if not line:
                    self._armor = Armor.BODY
            else:
                if not self._armor_body(final):
                    return

    def _take_line(self, start: int, final: bool) -> bytes | None:
        text = self._text
        end = text.find(b"\n", start)
        if end < 0:
            if not final:
                if len(text) - start > _LINE_LIMIT:
                    raise KeyRejected("an armor line is too long")
                return None
            end = len(text)
        line = bytes(text[start:end]).strip()
        del text[: end + 1]
        return line

    def _armor_body(self, final: bool) -> bool:
        """Decode what is available; True when the block ended and parsing should go on."""
        text = self._text
        marks = [i for i in (text.find(b"="), text.find(b"-")) if i >= 0]
        stop = min(marks) if marks else len(text)
        if stop:
            self._decode(bytes(text[:stop]).translate(None, _WHITESPACE))
            del text[:stop]
        if not marks:
            if final:
                raise KeyRejected("the armored key block is truncated")
            return False
        end_at = text.find(b"-----END")
        if end_at < 0 or (text.find(b"\n", end_at) < 0 and not final):
            if len(text) > _LINE_LIMIT:
                raise KeyRejected("the armor checksum or end line is malformed")
            if final:
                raise KeyRejected("the armored key block has no end line")
            return False
        newline = text.find(b"\n", end_at)
        newline = len(text) if newline < 0 else newline
        tail = bytes(text[:end_at]).translate(None, _WHITESPACE)
        end_line = bytes(text[end_at:newline]).strip()
        del text[: newline + 1]
        self._end_block(tail, end_line)
        return True

    def _decode(self, chars: bytes) -> None:
        chars = self._b64 + chars
        whole = len(chars) // 4 * 4
        self._b64 = chars[whole:]
        if whole:
            self._binary(self._a2b(chars[:whole]))

    @staticmethod
    def _a2b(chars: bytes) -> bytes:
        try:
            return binascii.a2b_base64(chars, strict_mode=True)
        except binascii.Error:
            raise KeyRejected("the armor contains invalid base64") from None

    def _binary(self, data: bytes) -> None:
        self._crc = crc24_update(self._crc, data)
        self._buf += data
        self._walk()

    def _end_block(self, tail: bytes, end_line: bytes) -> None:
        if end_line != self._end_line:
            raise KeyRejected("the armored key block does not end with its END line")
        pad = -len(self._b64) % 4
        if len(self._b64) % 4 == 1 or tail[:pad] != b"=" * pad:
            raise KeyRejected("the armored key block's base64 is truncated")
        if self._b64:
            self._binary(self._a2b(self._b64 + b"=" * pad))
            self._b64 = b""
        checksum = tail[pad:]
        if checksum:
            if len(checksum) != 5 or checksum[:1] != b"=":
                raise KeyRejected("the armor checksum line is malformed")
            if int.from_bytes(self._a2b(checksum[1:]), "big") != self._crc:
                raise KeyRejected("the armor checksum (CRC24) does not match the key data")
        if self._buf:
            raise KeyRejected("an armored key block ends in the middle of a packet")
        self._blocks += 1
        self._armor = Armor.OUTSIDE

    # packets

    def _walk(self) -> None:
        buf = self._buf
        pos = 0
        view = memoryview(buf)
        try:
            pos = self._walk_view(view)
        finally:
            view.release()
        del buf[:pos]

    def _walk_view(self, buf: memoryview) -> int:
        """Hand every complete packet in buf to _packet; the offset where parsing stopped."""
        pos, end = 0, len(buf)
        limit = self.max_key_bytes
        while end - pos >= 2:
            first = buf[pos]
            if not first & 0x80:
                raise KeyRejected("the key data is not a sequence of OpenPGP packets")
            if first & 0x40:
                tag = first & 0x3F
                octet = buf[pos + 1]
                if octet < 192:
                    head, size = 2, octet
                elif octet < 224:
                    if end - pos < 3:
                        break
                    head, size = 3, ((octet - 192) << 8) + buf[pos + 2] + 192
                elif octet == 255:
                    if end - pos < 6:
                        break
                    head, size = 6, int.from_bytes(buf[pos + 2 : pos + 6], "big")
                else:
                    raise KeyRejected("a packet uses partial body lengths, not allowed in keys")
            else:
                tag, kind = (first >> 2) & 0x0F, first & 3
                if kind == 3:
                    raise KeyRejected("a packet has an indeterminate length")
                head = 1 + (1, 2, 4)[kind]
                if end - pos < head:
                    break
                size = int.from_bytes(buf[pos + 1 : pos + head], "big")
            if size > limit:
                raise KeyRejected(f"a packet of {size} bytes is larger than the key size cap")
            if end - pos < head + size:
                break
            self._packet(tag, buf[pos : pos + head + size].tobytes(), head)
            pos += head + size
        return pos

    def _packet(self, tag: int, raw: bytes, head: int) -> None:
        cur = self._cur
        if tag == TAG_SIGNATURE and cur is not None and self._context != Place.SKIP:
            body = raw[head:]
            if not self._keep(body, cur):
                self.certifications_dropped += 1
                return
            (cur.components[-1][1] if cur.components else cur.primary_sigs).append(
                Packet(tag, body, raw)
            )
            cur.size += len(raw)
            self._check_size(cur)
            return
        if tag in (TAG_SECRET_KEY, TAG_SECRET_SUBKEY):
            raise SecretKeyRefused()
        if tag == TAG_PUBLIC_KEY:
            self._open_cert(Packet(tag, raw[head:], raw))
            return
        if tag in IGNORED_TAGS:
            return
        if cur is None:
            if self._context == Place.SKIP and self.unsupported_certificates:
                return
            if tag == TAG_SIGNATURE and len(self._lone) < MAX_LONE_SIGNATURES:
                self._lone.append(Packet(tag, raw[head:], raw))
                return
            raise KeyRejected(f"a packet (tag {tag}) comes before any public key packet")
        if tag == TAG_SIGNATURE:  # after a skipped subkey
            return
        packet = Packet(tag, raw[head:], raw)
        if tag in (TAG_USER_ID, TAG_USER_ATTRIBUTE):
            cur.components.append((packet, []))
            self._context = Place.UID
        elif tag == TAG_PUBLIC_SUBKEY:
            if not packet.body or packet.body[0] != 4 or len(packet.body) < 6:
                self._context = Place.SKIP
                return
            cur.components.append((packet, []))
            self._context = Place.SUBKEY
        else:
            raise KeyRejected(f"a packet with tag {tag} does not belong in a public key")
        cur.size += len(raw)
        self._check_size(cur)

    def _open_cert(self, packet: Packet) -> None:
        self._close_cert()
        body = packet.body
        if len(body) < 6 or len(body) > 0xFFFF:
            raise KeyRejected("a public key packet has an impossible length")
        if body[0] != 4:
            self.unsupported_certificates += 1
            self._context = Place.SKIP
            return
        self._cur = _Builder(primary=packet, fpr=key_fingerprint(body), size=len(packet.raw))
        self._context = Place.PRIMARY
        self._check_size(self._cur)

    def _close_cert(self) -> None:
        if self._cur is not None:
            cert = self._cur.build()
            self._cur = None
            for i, known in enumerate(self._certs):
                if known.primary.packet.body == cert.primary.packet.body:
                    self._certs[i] = merge_copies(known, cert)
                    return
            self._certs.append(cert)

    def _attach_lone(self) -> None:
        """Signatures that came before any key join the certificate that issued them."""
        if not self._lone:
            return
        if not self._certs and not self.unsupported_certificates:
            raise LoneSignatures(tuple(self._lone))
        for packet in self._lone:
            key_id, fpr = signature_issuer(packet.body)
            for i, cert in enumerate(self._certs):
                own = key_fingerprint(cert.primary.packet.body)
                if fpr == own or (fpr is None and key_id == own[-8:]):
                    primary = Bundle(cert.primary.packet, (*cert.primary.sigs, packet))
                    self._certs[i] = Cert(primary, cert.uids, cert.subkeys)
                    break
            else:
                self.certifications_dropped += 1

    def _check_size(self, cur: _Builder) -> None:
        if cur.size > self.max_key_bytes:
            raise KeyRejected(
                f"the key is larger than the cap of {self.max_key_bytes} bytes even after "
                "third-party certifications are stripped"
            )

    def _keep(self, body: bytes, cur: _Builder) -> bool:
        key_id, fpr = signature_issuer(body)
        if key_id is None:
            return False
        if fpr == cur.fpr or (fpr is None and key_id == cur.fpr[-8:]):
            return True
        if self._context == Place.SUBKEY:
            return False
        if self.keep_all:
            return True
        if fpr is not None:
            return fpr in self._keep_fprs or fpr[-8:] in self._keep_ids
        return key_id in self._keep_ids


def armor(key: bytes) -> str:
    """ASCII-armored public key block, with CRC24."""
    lines = [
        binascii.b2a_base64(key[i : i + 48], newline=False).decode("ascii")
        for i in range(0, len(key), 48)
    ]
    checksum = binascii.b2a_base64(crc24(key).to_bytes(3, "big"), newline=False).decode()
    body = "\n".join(lines)
    return f"{_PUBLIC_BEGIN.decode()}\n\n{body}\n={checksum}\n{_PUBLIC_END.decode()}\n"
