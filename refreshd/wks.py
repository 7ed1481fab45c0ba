"""Web Key Service submission (draft-koch-openpgp-webkey-service, as GnuPG's WKS tools speak it).

Rules:
1. The submission address is the first line of the domain's WKD `submission-address` file.
2. A submission is a mail From the address To the submission address whose payload is the
   MIME entity "Content-Type: application/pgp-keys" with the armored public key. With the
   provider's submission key it is sealed (OpenPGP-encrypted) into a PGP/MIME
   multipart/encrypted mail; without one it is sent as a plain application/pgp-keys mail.
3. The provider answers with a confirmation request: multipart/encrypted, sealed to our key,
   whose inner entity is application/vnd.gnupg.wks holding "name: value" lines: type
   (confirmation-request), sender, address, fingerprint, nonce.
4. It is answered only when its fingerprint is our key's and its address is ours: a mail From
   the address To the request's sender carrying type confirmation-response, sender, address and
   nonce, sealed to the submission key when there is one, like the submission.
5. Mails larger than MAX_MAIL and every malformed part are refused with WksError and a reason.
The builders and parsers are pure; sealing and unsealing are passed in as functions (`sealer`,
`unsealer` at the bottom do it with pgpy).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from email.utils import format_datetime

from refreshd.errors import MailError
from refreshd.mail.message import read_mime
from refreshd.openpgp.keyview import normalize_address

__all__ = [
    "WksError",
    "build_confirmation_response",
    "build_submission",
    "parse_confirmation_request",
    "sealer",
    "submission_address",
    "unsealer",
]

MAX_MAIL = 256 * 1024
DRAFT_VERSION = "3"
WKS_TYPE = "application/vnd.gnupg.wks"
NONCE = re.compile(r"[a-z0-9]{17,128}")
ARMORED_MESSAGE = b"-----BEGIN PGP MESSAGE-----"
MAX_PARTS = 16
FINGERPRINT = re.compile(r"[0-9A-F]{40}|[0-9A-F]{64}")

Seal = Callable[[bytes], str]  # payload -> armored OpenPGP message
Unseal = Callable[[str], bytes]  # armored OpenPGP message -> payload


class WksError(MailError):
    """A WKS mail or file that cannot be used; the message says why."""


@dataclass(frozen=True)
class ConfirmationRequest:
    sender: str
    address: str
    fingerprint: str
    nonce: str


def submission_address(text: str) -> str:
    """The submission address from the text of a WKD `submission-address` file (rule 1)."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    address = normalize_address(first)
    if address is None or "<" in first:
        raise WksError(f"submission-address file holds no mail address: {first[:100]!r}")
    return address


def build_submission(
    key_armored: str,
    address: str,
    submission_to: str,
    *,
    message_id: str,
    date: datetime,
    seal: Seal | None,
) -> bytes:
    """The mail that asks the provider to publish the armored public key for `address` (rule 2)."""
    if "-----BEGIN PGP PUBLIC KEY BLOCK-----" not in key_armored:
        raise WksError("the key to submit is not an armored public key")
    entity = b"Content-Type: application/pgp-keys\n\n" + key_armored.strip().encode() + b"\n"
    return _mail(
        address,
        submission_to,
        "Key publishing request",
        entity,
        message_id=message_id,
        date=date,
        seal=seal,
    )


def parse_confirmation_request(mail: bytes, *, unseal: Unseal) -> ConfirmationRequest:
    """The fields of a confirmation request, checked for form (rule 3)."""
    fields = _fields(_wks_text(mail, unseal))
    if fields.get("type") != "confirmation-request":
        raise WksError(f"not a confirmation request (type {fields.get('type')!r})")
    sender, address = _mailbox(fields, "sender"), _mailbox(fields, "address")
    fingerprint = fields.get("fingerprint", "").upper()
    if not FINGERPRINT.fullmatch(fingerprint):
        raise WksError("confirmation request without a valid fingerprint")
    nonce = fields.get("nonce", "")
    if not NONCE.fullmatch(nonce):
        raise WksError("confirmation request without a valid nonce")
    return ConfirmationRequest(sender, address, fingerprint, nonce)


def build_confirmation_response(
    request: ConfirmationRequest,
    *,
    own_fingerprint: str,
    own_addresses: tuple[str, ...],
    message_id: str,
    date: datetime,
    seal: Seal | None,
) -> bytes:
    """The mail confirming the publication the request asks about (rule 4)."""
    if request.fingerprint != own_fingerprint.upper():
        raise WksError(f"the request is for key {request.fingerprint}, not ours")
    if request.address not in {normalize_address(a) for a in own_addresses}:
        raise WksError(f"the request is for {request.address}, not one of our addresses")
    body = (
        "type: confirmation-response\n"
        f"sender: {request.sender}\n"
        f"address: {request.address}\n"
        f"nonce: {request.nonce}\n"
    ).encode()
    entity = f"Content-Type: {WKS_TYPE}\nContent-Transfer-Encoding: 8bit\n\n".encode() + body
    return _mail(
        request.address,
        request.sender,
        "Key publication confirmation",
        entity,
        message_id=message_id,
        date=date,
        seal=seal,
    )


def _mail(
    sender: str,
    to: str,
    subject: str,
    entity: bytes,
    *,
    message_id: str,
    date: datetime,
    seal: Seal | None,
) -> bytes:
    """Headers, then the entity itself (plain) or sealed into PGP/MIME (RFC 3156)."""
    for value in (sender, to, message_id):
        if not value.isascii() or any(c in value for c in "\r\n"):
            raise WksError(f"cannot put {value[:100]!r} into a mail header")
    head = (
        f"From: {sender}\nTo: {to}\nSubject: {subject}\nDate: {format_datetime(date)}\n"
        f"Message-ID: {message_id}\nWks-Draft-Version: {DRAFT_VERSION}\nMIME-Version: 1.0\n"
    ).encode()
    if seal is None:
        return head + entity
    boundary = "=_wks_" + hashlib.sha256(message_id.encode()).hexdigest()[:24]
    armored = seal(entity).strip()
    return (
        head
        + (
            'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\n'
            f' boundary="{boundary}"\n\n'
            "This is an OpenPGP/MIME encrypted message (RFC 3156).\n"
            f"--{boundary}\nContent-Type: application/pgp-encrypted\n\nVersion: 1\n\n"
            f"--{boundary}\nContent-Type: application/octet-stream\n\n{armored}\n\n"
            f"--{boundary}--\n"
        ).encode()
    )


def _wks_text(mail: bytes, unseal: Unseal) -> str:
    """The "name: value" text of a WKS mail in any of the forms GnuPG sends (rule 3)."""
    if len(mail) > MAX_MAIL:
        raise WksError(f"mail of {len(mail)} bytes is larger than {MAX_MAIL}")
    message = read_mime(mail, "mail", WksError)
    if message.get_content_type() == "multipart/encrypted":
        return _entity_text(unseal(_sealed_part(message)))
    part = _find_wks_part(message)
    body = _bytes_of(part)
    if ARMORED_MESSAGE in body:
        return _entity_text(unseal(body.decode("ascii", "replace")))
    return body.decode("utf-8", "replace")


def _sealed_part(message: Message) -> str:
    """The armored message of an RFC 3156 multipart/encrypted mail."""
    parts = message.get_payload()
    if not isinstance(parts, list) or len(parts) != 2:
        raise WksError("multipart/encrypted mail without exactly two parts")
    control, sealed = parts
    if control.get_content_type() != "application/pgp-encrypted":
        raise WksError("first part is not application/pgp-encrypted")
    if b"Version: 1" not in _bytes_of(control):
        raise WksError("unknown PGP/MIME version")
    armored = _bytes_of(sealed)
    if ARMORED_MESSAGE not in armored:
        raise WksError("second part holds no armored OpenPGP message")
    return armored.decode("ascii", "replace")


def _find_wks_part(message: Message) -> Message:
    """The application/vnd.gnupg.wks part: the mail itself, or one in a signed or mixed tree."""
    try:
        parts = list(message.walk())
    except RecursionError as exc:
        raise WksError("mail nested too deeply") from exc
    found = [p for p in parts[:MAX_PARTS] if p.get_content_type() == WKS_TYPE]
    if len(found) != 1:
        raise WksError(f"expected one {WKS_TYPE} part, found {len(found)}")
    return found[0]


def _bytes_of(part: Message) -> bytes:
    if part.is_multipart():
        raise WksError(f"{part.get_content_type()} part may not be multipart")
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _entity_text(plain: bytes) -> str:
    """Decrypted WKS data: an application/vnd.gnupg.wks entity, or the bare lines (draft 2+)."""
    if not plain.lstrip().lower().startswith(b"content-type:"):
        return plain.decode("utf-8", "replace")
    entity = read_mime(plain, "WKS entity", WksError)
    if entity.get_content_type() != WKS_TYPE:
        raise WksError(f"expected {WKS_TYPE}, got {entity.get_content_type()}")
    return _bytes_of(entity).decode("utf-8", "replace")


def _fields(text: str) -> dict[str, str]:
    """The first value of each name in "name: value" lines."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        key = name.strip().lower()
        if colon and key and key not in fields:
            fields[key] = value.strip()
    return fields


def _mailbox(fields: dict[str, str], name: str) -> str:
    value = fields.get(name, "")
    address = normalize_address(value)
    if address is None or "<" in value:
        raise WksError(f"confirmation request without a valid {name}")
    return address


def sealer(recipient_public: bytes) -> Seal:
    """Encrypt to the provider's submission key with pgpy (imported here: a daemon that never
    sends WKS mail does not carry pgpy's several MB)."""
    from pgpy import PGPKey, PGPMessage
    from pgpy.constants import CompressionAlgorithm, SymmetricKeyAlgorithm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            key, _ = PGPKey.from_blob(recipient_public)
        except Exception as exc:  # pgpy's errors on bad input are of every kind
            raise WksError(f"unusable submission key: {type(exc).__name__}") from exc

    def seal(payload: bytes) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            message = PGPMessage.new(payload, compression=CompressionAlgorithm.Uncompressed)
            return str(key.encrypt(message, cipher=SymmetricKeyAlgorithm.AES256))

    return seal


def unsealer(armored_secret: str, passphrase: str | None) -> Unseal:
    """Decrypt with the own key (resign.decrypt), turning failures into WksError."""
    from refreshd.openpgp import resign  # pgpy, only once there is mail to decrypt

    def unseal(armored: str) -> bytes:
        try:
            return resign.decrypt(armored_secret, passphrase, armored)
        except (resign.BadKey, resign.BadMessage) as exc:
            raise WksError(f"cannot decrypt the request: {exc}") from exc

    return unseal
