"""Mail as plain data: the few facts refreshd reads from a message, and the mails it writes.

Rules:
1. A mail larger than the caller's limit, or one the stdlib parser cannot read, is refused
   with MailError; nothing else about it is looked at.
2. The facts: Message-ID; the ids it answers (In-Reply-To, then References); the From address
   (lower-cased, one address, else none); the text: the body of a single-part text/plain mail,
   or of the first text/plain part of a multipart one (at most MAX_PARTS parts looked at).
3. refreshd's own mails are plain ASCII text/plain with From, To, Subject, Date, Message-ID;
   a header value holding a line break or non-ASCII is refused (no header injection).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from datetime import datetime
from email import message_from_bytes, policy
from email.message import Message
from email.utils import format_datetime, getaddresses

from refreshd.errors import MailError

__all__ = ["Incoming", "build_mail", "domain_of", "parse", "read_mime"]

MAX_PARTS = 16
MESSAGE_ID = re.compile(r"<[^<>\s]{1,250}>")


@dataclass(frozen=True)
class Incoming:
    message_id: str
    answered: tuple[str, ...]  # In-Reply-To, then References
    sender: str  # the From address, lower-cased; "" when there is not exactly one
    text: str
    raw: bytes

    def answers(self, message_id: str) -> bool:
        return message_id in self.answered


def domain_of(address: str) -> str:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise MailError(f"not a mail address: {address[:100]!r}")
    return domain.lower()


def parse(raw: bytes, max_bytes: int) -> Incoming:
    """Rules 1 and 2."""
    if len(raw) > max_bytes:
        raise MailError(f"mail of {len(raw)} bytes is larger than {max_bytes}")
    message = read_mime(raw)
    try:
        senders = getaddresses(message.get_all("From", []))
        sender = senders[0][1].lower() if len(senders) == 1 and "@" in senders[0][1] else ""
        answered = tuple(
            MESSAGE_ID.findall(str(message.get("In-Reply-To", "")))
            + MESSAGE_ID.findall(str(message.get("References", "")))
        )
        ids = MESSAGE_ID.findall(str(message.get("Message-ID", "")))
        return Incoming(ids[0] if ids else "", answered, sender, _text(message), raw)
    except MailError:
        raise
    except Exception as exc:  # hostile headers reach corners of the stdlib parser
        raise MailError(f"unreadable mail headers: {type(exc).__name__}") from exc


def read_mime(raw: bytes, what: str = "mail", error: type[MailError] = MailError) -> Message:
    """The MIME structure of a mail (or a MIME entity, `what`), or `error` saying why not."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            message = message_from_bytes(raw, policy=policy.compat32)
            message.get_content_type()
            return message
        except Exception as exc:  # the stdlib parser raises assorted errors on hostile input
            raise error(f"unreadable {what}: {type(exc).__name__}") from exc


def _text(message: Message) -> str:
    try:
        parts = [p for _, p in zip(range(MAX_PARTS), message.walk(), strict=False)]
    except RecursionError:
        raise MailError("mail nested too deeply") from None
    for part in parts:
        if part.get_content_type() == "text/plain" and not part.is_multipart():
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                return data.decode(part.get_content_charset() or "utf-8", "replace")
    return ""


def build_mail(
    sender: str, to: str, subject: str, body: str, *, message_id: str, date: datetime
) -> bytes:
    """Rule 3."""
    for value in (sender, to, subject, message_id, body):
        if not value.isascii():
            raise MailError(f"cannot send non-ASCII text: {value[:100]!r}")
    for value in (sender, to, subject, message_id):
        if any(c in value for c in "\r\n"):
            raise MailError(f"cannot put {value[:100]!r} into a mail header")
    head = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {format_datetime(date)}\r\n"
        f"Message-ID: {message_id}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
    )
    return (head + body.replace("\r\n", "\n").replace("\n", "\r\n")).encode()
