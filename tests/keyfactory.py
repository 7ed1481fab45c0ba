"""Real OpenPGP keys for tests, made by gpg, sq and pgpy, plus flooded copies.

Every key here is produced by the real tool (a throw-away gpg home, `sq key generate`, pgpy);
flood certifications are real Ed25519 signatures by throw-away third-party keys, written at the
packet level so 150,000 of them take seconds instead of minutes.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from refreshd.openpgp.keyview import certifiers, parse_one, primary_key, rejecting, view_of
from refreshd.openpgp.packets import (
    Bundle,
    Cert,
    Packet,
    StreamingKeyFilter,
    armor,
    key_fingerprint,
)

ED25519_OID = bytes.fromhex("2b06010401da470f01")


def new_packet(tag: int, body: bytes) -> Packet:
    """A packet with a new-format header."""
    n = len(body)
    if n < 192:
        length = bytes([n])
    elif n < 8384:
        length = bytes([((n - 192) >> 8) + 192, (n - 192) & 0xFF])
    else:
        length = b"\xff" + n.to_bytes(4, "big")
    return Packet(tag, body, bytes([0xC0 | tag]) + length + body)


def dearmor(data: bytes) -> bytes:
    """Binary form of one armored or binary key, everything kept."""
    if data[:1] and data[0] & 0x80:
        return data
    return subprocess.run(["sq", "dearmor"], input=data, capture_output=True, check=True).stdout


def when(at: datetime) -> str:
    return str(int(at.timestamp()))


class Gpg:
    """A throw-away GnuPG home; all keys unprotected."""

    def __init__(self, home: Path):
        self.home = home
        home.mkdir(mode=0o700, parents=True, exist_ok=True)

    def run(self, *args: str, at: datetime | None = None, data: bytes | None = None) -> bytes:
        cmd = ["gpg", "--homedir", str(self.home), "--batch", "--yes", "--no-tty", "--quiet"]
        cmd += ["--passphrase", "", "--pinentry-mode", "loopback"]
        if at is not None:
            cmd += ["--faked-system-time", when(at)]
        done = subprocess.run([*cmd, *args], input=data, capture_output=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"gpg {args}: {done.stderr.decode(errors='replace')}")
        return done.stdout

    def _created(self, *args: str, at: datetime | None) -> str:
        for line in self.run("--status-fd", "1", *args, at=at).decode().splitlines():
            if line.startswith("[GNUPG:] KEY_CREATED"):
                return line.split()[-1]
        raise RuntimeError("gpg did not report a created key")

    def generate(
        self,
        uid: str,
        algo: str = "future-default",
        usage: str = "default",
        expire: str = "1y",
        at: datetime | None = None,
    ) -> str:
        return self._created("--quick-gen-key", uid, algo, usage, expire, at=at)

    def add_subkey(
        self, fpr: str, algo: str, usage: str, expire: str, at: datetime | None = None
    ) -> str:
        return self._created("--quick-add-key", fpr, algo, usage, expire, at=at)

    def add_uid(self, fpr: str, uid: str, at: datetime | None = None) -> None:
        self.run("--quick-add-uid", fpr, uid, at=at)

    def revoke_uid(self, fpr: str, uid: str, at: datetime | None = None) -> None:
        self.run("--quick-revoke-uid", fpr, uid, at=at)

    def set_expire(
        self, fpr: str, expire: str, subkeys: str | None = None, at: datetime | None = None
    ) -> None:
        self.run("--quick-set-expire", fpr, expire, *([subkeys] if subkeys else []), at=at)

    def certify(self, signer: str, target: str, uid: str, at: datetime | None = None) -> None:
        self.run("--local-user", signer, "--quick-sign-key", target, uid, at=at)

    def export(self, fpr: str) -> bytes:
        return self.run("--export", fpr)

    def export_secret(self, fpr: str) -> bytes:
        return self.run("--export-secret-keys", fpr)

    def revocation(self, fpr: str) -> bytes:
        """The revocation certificate gpg wrote when it generated the key."""
        text = (self.home / "openpgp-revocs.d" / f"{fpr}.rev").read_text()
        return text.replace(":-----BEGIN", "-----BEGIN").encode()

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], check=False)


def sq(*args: str, data: bytes | None = None) -> bytes:
    done = subprocess.run(["sq", *args], input=data, capture_output=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"sq {args}: {done.stderr.decode(errors='replace')}")
    return done.stdout


class Sq:
    """Keys made by Sequoia's sq, kept as files in a scratch directory."""

    def __init__(self, work: Path):
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self._n = 0

    def _file(self, data: bytes) -> str:
        self._n += 1
        path = self.work / f"f{self._n}.pgp"
        path.write_bytes(data)
        return str(path)

    def generate(
        self,
        *uids: str,
        suite: str = "cv25519",
        expires_in: str = "3y",
        created: datetime | None = None,
        extra: tuple[str, ...] = (),
    ) -> bytes:
        """The secret key (binary)."""
        self._n += 1
        out = self.work / f"k{self._n}.pgp"
        args = ["key", "generate", "--cipher-suite", suite, "--expires-in", expires_in]
        if created is not None:
            args += ["--creation-time", created.strftime("%Y%m%dT%H%M%SZ")]
        for uid in uids:
            args += ["--userid", uid]
        sq(*args, *extra, "--export", str(out))
        return dearmor(out.read_bytes())

    def cert(self, secret: bytes) -> bytes:
        return sq("key", "extract-cert", "--binary", self._file(secret))

    def merge(self, *blobs: bytes) -> bytes:
        return sq("keyring", "merge", "--binary", *(self._file(b) for b in blobs))

    def revoke_certificate(self, secret: bytes) -> bytes:
        """The public key with a key revocation merged in."""
        rev = sq("revoke", "certificate", "--binary", "--certificate", self._file(secret),
                 "retired", "gone")  # fmt: skip
        cert = parse_one(self.cert(secret))
        primary = Bundle(cert.primary.packet, (*cert.primary.sigs, Packet(2, rev[2:], rev)))
        return Cert(primary, cert.uids, cert.subkeys).serialize()

    def revoke_subkey(self, secret: bytes, subkey: str) -> bytes:
        """The public key with subkey revoked (sq emits the whole key with the revocation)."""
        revoked = sq("revoke", "subkey", "--binary", "--certificate", self._file(secret),
                     subkey, "retired", "gone")  # fmt: skip
        return self.cert(revoked)

    def certify(self, certifier_secret: bytes, public: bytes, uid: str) -> bytes:
        """public with a certification of uid by certifier merged in."""
        signed = sq("certify", "--binary", self._file(certifier_secret), self._file(public), uid)
        return self.merge(public, signed)


def pgpy_key(uid: str, *, rsa: bool = False, expires: timedelta | None = None) -> bytes:
    """A pgpy-made public key: Ed25519 + Cv25519 (or RSA-2048 + RSA-2048), SHA-256 signed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgpy
        from pgpy.constants import (
            EllipticCurveOID,
            HashAlgorithm,
            KeyFlags,
            PubKeyAlgorithm,
            SymmetricKeyAlgorithm,
        )

        if rsa:
            primary = pgpy.PGPKey.new(PubKeyAlgorithm.RSAEncryptOrSign, 2048)
            sub = pgpy.PGPKey.new(PubKeyAlgorithm.RSAEncryptOrSign, 2048)
        else:
            primary = pgpy.PGPKey.new(PubKeyAlgorithm.EdDSA, EllipticCurveOID.Ed25519)
            sub = pgpy.PGPKey.new(PubKeyAlgorithm.ECDH, EllipticCurveOID.Curve25519)
        name, _, rest = uid.partition(" <")
        user = pgpy.PGPUID.new(name, email=rest.rstrip(">"))
        prefs = {
            "usage": {KeyFlags.Certify, KeyFlags.Sign},
            "hashes": [HashAlgorithm.SHA256, HashAlgorithm.SHA512],
            "ciphers": [SymmetricKeyAlgorithm.AES256, SymmetricKeyAlgorithm.AES128],
            "hash": HashAlgorithm.SHA256,
        }
        if expires is not None:
            prefs["key_expiration"] = expires
        primary.add_uid(user, **prefs)
        primary.add_subkey(
            sub,
            usage={KeyFlags.EncryptCommunications, KeyFlags.EncryptStorage},
            hash=HashAlgorithm.SHA256,
        )
        return bytes(primary.pubkey)


# --- flooding at the packet level -------------------------------------------------------------


def _mpi(value: bytes) -> bytes:
    value = value.lstrip(b"\0")
    bits = int.from_bytes(value, "big").bit_length()
    return bits.to_bytes(2, "big") + value


def _subpacket(kind: int, payload: bytes) -> bytes:
    return bytes([len(payload) + 1, kind]) + payload


class Certifier:
    """A throw-away Ed25519 key that makes real v4 certifications."""

    def __init__(self, created: int):
        self.secret = Ed25519PrivateKey.generate()
        raw = self.secret.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.body = (
            b"\x04" + created.to_bytes(4, "big") + b"\x16" + bytes([len(ED25519_OID)])
            + ED25519_OID + _mpi(b"\x40" + raw)
        )  # fmt: skip
        self.fingerprint = key_fingerprint(self.body)

    def public(self) -> bytes:
        return new_packet(6, self.body).raw

    def certification(self, prefix: hashlib._Hash, created: int, sigtype: int = 0x10) -> Packet:
        """A certification packet; prefix = hash state over the key and user id contexts."""
        hashed = _subpacket(2, created.to_bytes(4, "big")) + _subpacket(
            33, b"\x04" + self.fingerprint
        )
        part = bytes([4, sigtype, 22, 8]) + len(hashed).to_bytes(2, "big") + hashed
        state = prefix.copy()
        state.update(part + b"\x04\xff" + len(part).to_bytes(4, "big"))
        digest = state.digest()
        value = self.secret.sign(digest)
        unhashed = _subpacket(16, self.fingerprint[-8:])
        body = (
            part + len(unhashed).to_bytes(2, "big") + unhashed + digest[:2]
            + _mpi(value[:32]) + _mpi(value[32:])
        )  # fmt: skip
        return new_packet(2, body)


def uid_prefix(cert: Cert, uid_index: int) -> hashlib._Hash:
    primary = cert.primary.packet.body
    uid = cert.uids[uid_index].packet.body
    state = hashlib.sha256(b"\x99" + len(primary).to_bytes(2, "big") + primary)
    state.update(b"\xb4" + len(uid).to_bytes(4, "big") + uid)
    return state


def flood(public: bytes, count: int, *, signers: int = 200, uid_index: int = 0) -> bytes:
    """public (binary) with count real third-party certifications spliced in after one of its
    user ids' signatures; every packet already there is kept."""
    cert = parse_one(public)
    prefix = uid_prefix(cert, uid_index)
    base = int.from_bytes(cert.primary.packet.body[1:5], "big") + 60
    keys = [Certifier(base - 3600) for _ in range(max(1, min(signers, count)))]
    extra = b"".join(keys[i % len(keys)].certification(prefix, base + i).raw for i in range(count))
    following = [*cert.uids[uid_index + 1 :], *cert.subkeys]
    at = public.index(following[0].packet.raw) if following else len(public)
    return public[:at] + extra + public[at:]


def strip_all(data: bytes) -> bytes:
    """The key with every third-party certification removed."""
    (key,) = strip_keys(data, max_response_bytes=len(data) + 1, max_key_bytes=len(data) + 1)
    return key


class Workshop:
    """One scratch area with a gpg home and an sq directory; close() stops gpg's agent."""

    def __init__(self, root: Path | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="keyfactory-", dir=root))
        self.gpg = Gpg(self.root / "gnupg")
        self.sq = Sq(self.root / "sq")
        self.now = datetime.now(UTC).replace(microsecond=0)

    def close(self) -> None:
        self.gpg.close()
        shutil.rmtree(self.root, ignore_errors=True)


def gpg_oracle(key: bytes, home: Path) -> bytes:
    """gpg --with-colons listing of key imported into a fresh home."""
    gpg = Gpg(home)
    try:
        gpg.run("--import", data=key)
        return gpg.run("--with-colons", "--fixed-list-mode", "--list-keys")
    finally:
        gpg.close()  # no gpg-agent left behind


def add_primary_sig(public: bytes, raw: bytes) -> bytes:
    """public with one more signature packet (raw, header included) on its primary key."""
    cert = parse_one(public)
    head = 2 if raw[1] < 192 else 3 if raw[1] < 224 else 6
    primary = Bundle(cert.primary.packet, (*cert.primary.sigs, Packet(2, raw[head:], raw)))
    return Cert(primary, cert.uids, cert.subkeys).serialize()


def without_uids(public: bytes) -> bytes:
    """The copy keys.openpgp.org serves for an unverified key: no user ids."""
    cert = parse_one(public)
    return Cert(cert.primary, (), cert.subkeys).serialize()


@dataclass(frozen=True)
class Zoo:
    keys: dict[str, bytes]  # oracle set: name -> binary public key
    chain: dict[str, bytes]  # copies of one key as its expiry changed over time
    chain_expiry: dict[str, datetime]
    transition: dict[str, bytes]


def _day(now: datetime, days: int) -> str:
    return (now + timedelta(days=days)).strftime("%Y-%m-%d")


def _gpg_keys(w: Workshop, keys: dict[str, bytes]) -> None:
    g, now = w.gpg, w.now
    fpr = g.generate("Alice <alice@example.org>")
    keys["gpg-ed25519-1y"] = g.export(fpr)
    keys["gpg-ed25519-revoked"] = add_primary_sig(g.export(fpr), dearmor(g.revocation(fpr)))

    fpr = g.generate("Rita <rita@example.org>", "rsa2048", "cert,sign", "never")
    g.add_subkey(fpr, "rsa2048", "encr", "never")
    keys["gpg-rsa2048-never"] = g.export(fpr)

    fpr = g.generate("Old <old@example.org>", expire="2d", at=now - timedelta(days=30))
    keys["gpg-expired"] = g.export(fpr)

    fpr = g.generate("Multi <multi@example.org>", expire="2y", at=now - timedelta(days=20))
    g.add_uid(fpr, "Multi Work <multi@work.example>")
    g.add_uid(fpr, "Multi Gone <multi@gone.example>")
    g.revoke_uid(fpr, "Multi Gone <multi@gone.example>")
    g.add_subkey(fpr, "cv25519", "encr", "1d", at=now - timedelta(days=10))
    g.add_subkey(fpr, "ed25519", "sign", "1y")
    g.add_subkey(fpr, "ed25519", "auth", "never")
    doomed = g.add_subkey(fpr, "cv25519", "encr", "3y")
    revoked = w.sq.revoke_subkey(g.export_secret(fpr), doomed)
    keys["gpg-multi"] = w.sq.merge(g.export(fpr), revoked)

    fpr = g.generate(
        "Lapsed <lapsed@example.org>", "ed25519", "cert,sign", "never", at=now - timedelta(20)
    )
    g.add_subkey(fpr, "cv25519", "encr", "1d", at=now - timedelta(days=10))
    keys["gpg-encryption-lapsed"] = g.export(fpr)

    fpr = g.generate("Renewed <renewed@example.org>", expire="5d", at=now - timedelta(days=40))
    g.set_expire(fpr, "1y", at=now - timedelta(days=1))
    g.set_expire(fpr, "1y", "*", at=now - timedelta(days=1))
    keys["gpg-renewed"] = g.export(fpr)


def _sq_keys(w: Workshop, keys: dict[str, bytes]) -> None:
    s, now = w.sq, w.now
    secret = s.generate("Bob <bob@example.org>")
    keys["sq-cv25519-3y"] = s.cert(secret)
    keys["sq-revoked"] = s.revoke_certificate(secret)
    encryption = [
        line.split(":")[4]
        for line in gpg_oracle(keys["sq-cv25519-3y"], w.root / "probe").decode().splitlines()
        if line.startswith("sub:") and "e" in line.split(":")[11]
    ]
    keys["sq-subkey-revoked"] = s.merge(
        keys["sq-cv25519-3y"], s.revoke_subkey(secret, encryption[0])
    )
    keys["sq-rsa3k-never"] = s.cert(
        s.generate("Rsa <rsa@example.org>", suite="rsa3k", expires_in="never")
    )
    keys["sq-expired"] = s.cert(
        s.generate("Past <past@example.org>", expires_in="1y", created=now - timedelta(days=400))
    )


def _chain(w: Workshop) -> tuple[dict[str, bytes], dict[str, datetime]]:
    """One gpg key whose expiry was changed at four moments (oldest first)."""
    g, now = w.gpg, w.now
    fpr = g.generate("Chain <chain@example.org>", expire=_day(now, 300), at=now - timedelta(60))
    copies: dict[str, bytes] = {}
    expiry: dict[str, datetime] = {}
    for name, days, ago in (("t1-short", 100, 50), ("t2-long", 400, 40), ("t3-shorter", 200, 30)):
        at = now - timedelta(days=ago)
        g.set_expire(fpr, _day(now, days), at=at)
        g.set_expire(fpr, _day(now, days), "*", at=at)
        copies[name] = g.export(fpr)
        day = (now + timedelta(days=days)).replace(hour=12, minute=0, second=0)
        expiry[name] = day
    g.add_subkey(fpr, "cv25519", "encr", "1y", at=now - timedelta(days=20))
    copies["t4-new-subkey"] = g.export(fpr)
    g.add_uid(fpr, "Chain Two <chain@two.example>", at=now - timedelta(days=19))
    copies["t5-new-uid"] = g.export(fpr)
    copies["t6-revoked"] = add_primary_sig(copies["t5-new-uid"], dearmor(g.revocation(fpr)))
    return copies, expiry


def _transition(w: Workshop) -> dict[str, bytes]:
    g = w.gpg
    old = g.generate("Tess <tess@example.org>")
    other = g.generate("Mallory <mallory@example.org>")
    new = g.generate("Tess <tess@example.org>")
    g.add_uid(new, "Tess Work <tess@work.example>")
    out = {"old": g.export(old), "other": g.export(other), "new": g.export(new)}
    g.certify(old, new, "Tess Work <tess@work.example>")
    out["new-certified-other-uid"] = g.export(new)
    g.certify(old, new, "Tess <tess@example.org>")
    out["new-certified"] = g.export(new)
    g.run("--local-user", old, "--quick-revoke-sig", new, old, "Tess <tess@example.org>")
    out["new-certification-revoked"] = g.export(new)
    g.certify(other, new, "Tess <tess@example.org>")
    out["new-certified-by-other"] = g.export(new)
    sq_old = w.sq.generate("Tess <tess@example.org>")
    out["sq-old"] = w.sq.cert(sq_old)
    out["new-certified-by-sq"] = w.sq.certify(sq_old, out["new"], "Tess <tess@example.org>")
    return out


def build_zoo() -> Zoo:
    w = Workshop()
    try:
        keys: dict[str, bytes] = {}
        _gpg_keys(w, keys)
        _sq_keys(w, keys)
        keys["pgpy-ed25519-30d"] = pgpy_key("Pat <pat@example.org>", expires=timedelta(days=30))
        keys["pgpy-rsa2048-never"] = pgpy_key("Ray <ray@example.org>", rsa=True)
        chain, expiry = _chain(w)
        return Zoo(keys, chain, expiry, _transition(w))
    finally:
        w.close()


@cache
def zoo() -> Zoo:
    """The keys every openpgp test shares, made once per test process."""
    return build_zoo()


def armor_secret(secret: bytes) -> bytes:
    """A secret key in ASCII armor, as a careless server might publish it."""
    return armor(secret).replace("PUBLIC KEY", "PRIVATE KEY").encode()


def strip_keys(
    data: bytes,
    *,
    max_response_bytes: int,
    max_key_bytes: int,
    keep_issuers: frozenset[str] = frozenset(),
) -> list[bytes]:
    """One StreamingKeyFilter pass over data already in memory (as tests want it)."""
    filt = StreamingKeyFilter(
        max_response_bytes=max_response_bytes,
        max_key_bytes=max_key_bytes,
        keep_issuers=keep_issuers,
    )
    filt.feed(data)
    return filt.finish()


@rejecting
def certifies_uid(new_key: bytes, old_key: bytes, address: str) -> bool:
    """Whether old_key made a valid, unrevoked certification of new_key's user id for address
    (keyview.certifiers over the two keys as bytes)."""
    old_cert = parse_one(old_key)
    view_of(old_cert, datetime.now(UTC))
    old = primary_key(old_cert)
    cert = parse_one(new_key, frozenset({old.fingerprint.hex().upper()}))
    return bool(certifiers(cert, address, [old], datetime.now(UTC)))


def many_subkeys(public: bytes, count: int) -> bytes:
    """public (binary) with `count` more subkeys: copies of its first subkey, each with its own
    creation time (so its own fingerprint) and the original binding signature, which no longer
    verifies. Every one costs a signature check, as a flood of real subkeys would."""
    cert = parse_one(public)
    sub = cert.subkeys[0]
    created = int.from_bytes(sub.packet.body[1:5], "big")
    extra = b"".join(
        new_packet(
            sub.packet.tag,
            sub.packet.body[:1] + (created + i + 1).to_bytes(4, "big") + sub.packet.body[5:],
        ).raw
        + b"".join(s.raw for s in sub.sigs)
        for i in range(count)
    )
    return public + extra
