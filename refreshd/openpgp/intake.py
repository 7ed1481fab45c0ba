"""The one way a key from anywhere comes in: stripped once, parsed once.

Every source (WKD, nicknym, VKS, HKP, an OpenPGP header URL, mail, a GnuPG keyring) hands its
bytes to `intake` with the keep set the key manager chose for the address(es) concerned; the
parsed value flows on to merge, the certification checks and the rules, and nothing parses
those bytes again.

Rules:
- `intake` is a pure function of (bytes, keep set, limits, the time the views are taken at):
  no store, no network, no clock of its own, so it can run in a worker thread unchanged.
- The bytes go through the streaming packet filter (packets.py) once: third-party
  certifications are dropped unless their issuer is in the keep set, sizes are bounded.
- Each certificate is then read into its KeyView once. A certificate that cannot be read is a
  failure with its reason; the others still come in.
- A stream the filter refuses (too large, malformed armor, secret key material) raises
  KeyRejected with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from refreshd.errors import KeyRejected
from refreshd.openpgp.keyview import KeyView, parse_one, rejecting, view_of
from refreshd.openpgp.packets import Cert, StreamingKeyFilter

__all__ = ["Intake", "Limits", "ParsedKey", "intake", "read_cert", "read_stored"]

CHUNK = 1 << 16  # the filter walks the bytes in pieces, as they would stream in


@dataclass(frozen=True)
class Limits:
    max_response_bytes: int
    max_key_bytes: int


@dataclass(frozen=True)
class ParsedKey:
    """One certificate as it came in: its stripped bytes (what is stored), its packets and
    its view."""

    data: bytes
    cert: Cert
    view: KeyView

    @property
    def fingerprint(self) -> str:
        return self.view.fingerprint


@dataclass(frozen=True)
class Intake:
    keys: tuple[ParsedKey, ...]
    failures: tuple[str, ...]  # one reason per certificate that could not be read

    def for_address(self, address: str) -> tuple[ParsedKey, ...]:
        """A directory may answer with several keys: those carrying the address, else the
        first one (which the rules then reject with the reason)."""
        if len(self.keys) <= 1:
            return self.keys
        return tuple(k for k in self.keys if address in k.view.addresses()) or self.keys[:1]

    @property
    def failure(self) -> str:
        return self.failures[0] if self.failures else "no key in the data"


@rejecting
def read_cert(cert: Cert, now: datetime) -> ParsedKey:
    """A certificate already through the filter (a keyring export streamed through it) read
    into its view at now (keyview.view_of)."""
    return ParsedKey(cert.serialize(), cert, view_of(cert, now))


@rejecting
def read_stored(data: bytes, now: datetime) -> ParsedKey:
    """A key read back from our store, with every certification it was stored with, at now."""
    return read_cert(parse_one(data, keep_all=True), now)


def intake(data: bytes, keep: frozenset[str], limits: Limits, now: datetime) -> Intake:
    """Strip and parse every key in data (see module rules)."""
    flt = StreamingKeyFilter(
        max_response_bytes=limits.max_response_bytes,
        max_key_bytes=limits.max_key_bytes,
        keep_issuers=keep,
    )
    view = memoryview(data)
    for start in range(0, len(data), CHUNK):
        flt.feed(bytes(view[start : start + CHUNK]))
    keys: list[ParsedKey] = []
    failures: list[str] = []
    for cert in flt.finish_certificates():
        try:
            keys.append(read_cert(cert, now))
        except KeyRejected as exc:
            failures.append(exc.reason)
    return Intake(tuple(keys), tuple(failures))
