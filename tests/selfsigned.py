"""Keys signed packet by packet: a real Ed25519 primary key that makes whatever self-signature
a test asks for (misplaced, expiring, with critical subpackets, v3), which no key generator
lets a test choose. The signatures verify; gpg and sq read these keys."""

from __future__ import annotations

import hashlib

from refreshd.openpgp.packets import Packet
from tests.keyfactory import Certifier, _mpi, _subpacket, new_packet

T0 = 1_700_000_000  # the default creation time
CV25519 = bytes.fromhex("2b060104019755010501")
UID = b"Alice <alice@example.org>"
UID2 = b"Alice Work <alice@work.example>"


class Maker:
    """An Ed25519 primary key that signs whatever a test asks for."""

    def __init__(self, created: int = T0) -> None:
        self.created = created
        self.signer = Certifier(created)
        self.packet = new_packet(6, self.signer.body)
        raw = bytes(range(1, 33))
        self.sub_body = (
            b"\x04" + created.to_bytes(4, "big") + b"\x12" + bytes([len(CV25519)]) + CV25519
            + _mpi(b"\x40" + raw) + b"\x03\x01\x08\x07"
        )  # fmt: skip
        self.sub = new_packet(14, self.sub_body)

    @property
    def context(self) -> bytes:
        return b"\x99" + len(self.signer.body).to_bytes(2, "big") + self.signer.body

    def uid_ctx(self, uid: bytes) -> bytes:
        return self.context + b"\xb4" + len(uid).to_bytes(4, "big") + uid

    def sub_ctx(self) -> bytes:
        return self.context + b"\x99" + len(self.sub_body).to_bytes(2, "big") + self.sub_body

    def sign(self, context: bytes, sigtype: int, created: int, extra: bytes = b"") -> Packet:
        hashed = (
            _subpacket(2, created.to_bytes(4, "big"))
            + _subpacket(33, b"\x04" + self.signer.fingerprint)
            + extra
        )
        part = bytes([4, sigtype, 22, 8]) + len(hashed).to_bytes(2, "big") + hashed
        digest = hashlib.sha256(context + part + b"\x04\xff" + len(part).to_bytes(4, "big"))
        return self._packet(part, digest.digest(), _subpacket(16, self.signer.fingerprint[-8:]))

    def sign_v3(self, context: bytes, sigtype: int, created: int) -> Packet:
        fields = bytes([sigtype]) + created.to_bytes(4, "big")
        digest = hashlib.sha256(context + fields).digest()
        value = self.signer.secret.sign(digest)
        body = (
            b"\x03\x05" + fields + self.signer.fingerprint[-8:] + bytes([22, 8]) + digest[:2]
            + _mpi(value[:32]) + _mpi(value[32:])
        )  # fmt: skip
        return new_packet(2, body)

    def _packet(self, part: bytes, digest: bytes, unhashed: bytes) -> Packet:
        value = self.signer.secret.sign(digest)
        body = (
            part + len(unhashed).to_bytes(2, "big") + unhashed + digest[:2]
            + _mpi(value[:32]) + _mpi(value[32:])
        )  # fmt: skip
        return new_packet(2, body)

    def binding(self, uid: bytes = UID, extra: bytes = b"") -> Packet:
        return self.sign(self.uid_ctx(uid), 0x13, self.created, _subpacket(27, b"\x03") + extra)

    def subkey_binding(self) -> Packet:
        return self.sign(self.sub_ctx(), 0x18, self.created, _subpacket(27, b"\x0c"))

    def revocation(self, created: int = T0 + 60) -> Packet:
        return self.sign(self.context, 0x20, created)

    def key(self, *parts: Packet) -> bytes:
        return b"".join(p.raw for p in parts)

    def plain(self) -> list[Packet]:
        """Primary, one user id, one encryption subkey, each properly signed."""
        uid = new_packet(13, UID)
        return [self.packet, uid, self.binding(), self.sub, self.subkey_binding()]


def critical(kind: int, payload: bytes) -> bytes:
    return bytes([len(payload) + 1, 0x80 | kind]) + payload


def notation(name: bytes, value: bytes) -> bytes:
    return (
        b"\x80\x00\x00\x00"
        + len(name).to_bytes(2, "big")
        + len(value).to_bytes(2, "big")
        + (name + value)
    )
