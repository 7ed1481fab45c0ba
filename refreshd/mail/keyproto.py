"""The SMTP key protocols of 001_ef4959fe9811f7b2.txt: Key Publication (KPP) and Key Retrieval
(KRP), as mails built and read by plain functions (SPEC 10).

Rules:
1. K_auth is 32 random bytes (passed in), written in base64 on a line of its own.
2. K_pub is the ASCII-armored public key block, from its BEGIN line to its END line, lines
   stripped of surrounding white space and joined by "\\n", no trailing newline. The MAC is
   base64(HMAC-SHA256(K_auth, K_pub)) and is compared in constant time.
3. A publication goes to keys@<own domain> through authenticated submission; its body is K_pub
   and then the K_auth line. Its confirmation must come From keys@<own domain>, answer the
   publication (In-Reply-To or References name its Message-ID) and carry exactly the MAC of
   what was sent; anything else fails the publication.
4. A key request goes to keys@<domain of the queried address>; its body is the queried address
   and then the K_auth line. The response must come From keys@<that domain>, answer the
   request, and hold a K_pub whose MAC is the response's last non-empty line. Whether the key
   belongs to the address is rule 5.3's, decided by the key manager, not here.
Mails are built with the caller's Message-ID and Date; nothing here touches the network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime

from refreshd.errors import MailError
from refreshd.mail.message import Incoming, build_mail, domain_of

__all__ = [
    "K_AUTH_BYTES",
    "check_confirmation",
    "check_response",
    "keys_address",
    "new_k_auth",
    "publication",
    "request",
]

K_AUTH_BYTES = 32
BEGIN = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
END = "-----END PGP PUBLIC KEY BLOCK-----"


@dataclass(frozen=True)
class Sent:
    """What refreshd remembers of a KPP or KRP mail until its answer arrives."""

    message_id: str
    k_auth: str  # base64
    peer: str  # keys@<domain>: the only sender whose answer counts
    k_pub: str = ""  # the published block (KPP)
    queried: str = ""  # the address asked for (KRP)


def new_k_auth(random_bytes: bytes) -> str:
    """Rule 1: `random_bytes` must be K_AUTH_BYTES from a CSPRNG (the caller's)."""
    if len(random_bytes) != K_AUTH_BYTES:
        raise ValueError(f"K_auth needs {K_AUTH_BYTES} bytes")
    return base64.b64encode(random_bytes).decode()


def k_pub_block(text: str) -> str:
    """Rule 2: the armored block inside `text`, canonical; MailError without one."""
    lines = [line.strip() for line in text.splitlines()]
    try:
        start = lines.index(BEGIN)
        end = lines.index(END, start)
    except ValueError:
        raise MailError("no armored public key block") from None
    return "\n".join(lines[start : end + 1])


def mac(k_auth: str, k_pub: str) -> str:
    """Rule 2's MAC of a canonical block."""
    try:
        key = base64.b64decode(k_auth, validate=True)
    except (binascii.Error, ValueError):
        raise MailError("K_auth is not base64") from None
    return base64.b64encode(hmac.new(key, k_pub.encode(), hashlib.sha256).digest()).decode()


def keys_address(address: str) -> str:
    return f"keys@{domain_of(address)}"


def publication(
    own_address: str, armored_public: str, k_auth: str, *, message_id: str, date: datetime
) -> tuple[bytes, Sent]:
    """Rule 3: the publication mail and what to remember of it."""
    k_pub = k_pub_block(armored_public)
    to = keys_address(own_address)
    mail = build_mail(
        own_address,
        to,
        "Key publication",
        f"{k_pub}\n{k_auth}\n",
        message_id=message_id,
        date=date,
    )
    return mail, Sent(message_id, k_auth, to, k_pub=k_pub)


def request(
    own_address: str, queried: str, k_auth: str, *, message_id: str, date: datetime
) -> tuple[bytes, Sent]:
    """Rule 4: the key request mail and what to remember of it."""
    to = keys_address(queried)
    mail = build_mail(
        own_address,
        to,
        "Key request",
        f"{queried}\n{k_auth}\n",
        message_id=message_id,
        date=date,
    )
    return mail, Sent(message_id, k_auth, to, queried=queried)


def check_confirmation(sent: Sent, answer: Incoming) -> None:
    """Rule 3: returns when `answer` confirms the publication; MailError says why not."""
    _check_answer(sent, answer)
    lines = [line.strip() for line in answer.text.splitlines() if line.strip()]
    if not lines:
        raise MailError("confirmation without a MAC")
    if not hmac.compare_digest(lines[-1].encode(), mac(sent.k_auth, sent.k_pub).encode()):
        raise MailError("confirmation MAC does not match the published key")


def check_response(sent: Sent, answer: Incoming) -> str:
    """Rule 4: the armored key of a response whose MAC verifies; MailError says why not."""
    _check_answer(sent, answer)
    k_pub = k_pub_block(answer.text)
    after = answer.text.split(END, 1)[1]
    lines = [line.strip() for line in after.splitlines() if line.strip()]
    if not lines:
        raise MailError("key response without a MAC")
    if not hmac.compare_digest(lines[-1].encode(), mac(sent.k_auth, k_pub).encode()):
        raise MailError("key response MAC does not match its key")
    return k_pub + "\n"


def _check_answer(sent: Sent, answer: Incoming) -> None:
    if not answer.answers(sent.message_id):
        raise MailError("the mail does not answer this request")
    if answer.sender != sent.peer:
        raise MailError(f"answer from {answer.sender or 'nobody'}, not {sent.peer}")
