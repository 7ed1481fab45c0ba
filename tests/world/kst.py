"""A Key Storage Service as 001_ef4959fe9811f7b2.txt describes it (section IV, figures 3-6).

Why: no real KST exists, so the test world runs this one behind a Postfix pipe transport for
`keys@<domain>`. It is a standalone stdlib program (it runs as `nobody` under the system
Python, started by Postfix's pipe(8)): `kst.py STATE_DIR SENDER RECIPIENT`, the mail on stdin.

Rules (the paper's, with what it leaves open made explicit):
1. A mail whose topmost Received header (the one this provider's MSA prepended) carries
   "(Authenticated sender: ACCOUNT)" with ACCOUNT in the KST's own domain, and whose body holds
   an ASCII-armored public key block followed by a line with a base64 K_auth of 32 bytes, is a
   publication (Key Publication Protocol): the block is stored for ACCOUNT and a confirmation
   goes to ACCOUNT whose body is base64(HMAC-SHA256(K_auth, K_pub)).
2. Any other mail is a key request (Key Retrieval Protocol): its body's first two non-empty
   lines are the queried address and a base64 K_auth of 32 bytes. When a key is stored for that
   address, the response to the envelope sender holds the key block and then, on its own line,
   base64(HMAC-SHA256(K_auth, K_pub)); when none is stored, nothing is sent (the paper defines
   no negative answer).
3. K_pub is the armored block from its BEGIN line to its END line, lines joined by "\\n", no
   trailing newline. Answers carry In-Reply-To: the request's Message-ID.
4. Malformed mail is logged and dropped (exit 0, so Postfix bounces nothing).
Answers are submitted to the provider's own MX door (STATE_DIR/config.json: {"mx": [host,
port]}). STATE_DIR/faults.json may ask for a wrong HMAC ({"hmac": "wrong"}) or another From
({"from": "someone@else"}): the test world's way to play an attacker on the path.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.message
import email.policy
import email.utils
import hashlib
import hmac
import json
import re
import smtplib
import sys
import time
from pathlib import Path

MAX_MAIL = 1 << 20
BEGIN = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
END = "-----END PGP PUBLIC KEY BLOCK-----"
AUTHENTICATED = re.compile(r"\(Authenticated sender: ([^)\s]+)\)")


def k_auth(line: str) -> bytes | None:
    try:
        raw = base64.b64decode(line.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def key_block(lines: list[str]) -> tuple[str, int] | None:
    """The armored block and the index of the line after it."""
    try:
        start = lines.index(BEGIN)
        end = lines.index(END, start)
    except ValueError:
        return None
    return "\n".join(lines[start : end + 1]), end + 1


def mac(key: bytes, k_pub: str) -> str:
    return base64.b64encode(hmac.new(key, k_pub.encode(), hashlib.sha256).digest()).decode()


def main(argv: list[str]) -> int:
    state, sender, recipient = Path(argv[1]), argv[2].lower(), argv[3].lower()
    domain = recipient.rpartition("@")[2]
    log = state / "log.jsonl"

    def note(event: str, **fields: object) -> None:
        with log.open("a") as out:
            out.write(json.dumps({"event": event, "recipient": recipient, **fields}) + "\n")

    data = sys.stdin.buffer.read(MAX_MAIL + 1)
    if len(data) > MAX_MAIL:
        note("dropped", reason="mail too large")
        return 0
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    payload = message.get_payload(decode=True) if not message.is_multipart() else None
    if not isinstance(payload, bytes):
        note("dropped", reason="not a single-part mail")
        return 0
    lines = [line.strip() for line in payload.decode("utf-8", "replace").splitlines()]
    received = message.get_all("Received") or [""]
    auth = AUTHENTICATED.search(" ".join(received[0].split()))
    account = auth.group(1).lower() if auth else None
    block = key_block(lines)
    request_id = (message.get("Message-ID") or "").strip()
    faults = (
        json.loads((state / "faults.json").read_text()) if (state / "faults.json").exists() else {}
    )
    config = json.loads((state / "config.json").read_text())

    def answer(to: str, body: str, subject: str) -> None:
        reply = email.message.Message()
        reply["From"] = faults.get("from") or f"keys@{domain} (Key Storage Service)"
        reply["To"] = f"<{to}>"
        reply["Subject"] = subject
        reply["Date"] = email.utils.formatdate(localtime=False)
        reply["Message-ID"] = email.utils.make_msgid(domain=domain)
        if request_id:
            reply["In-Reply-To"] = request_id
        reply.set_payload(body + "\n")
        host, port = config["mx"]
        with smtplib.SMTP(host, port, timeout=30) as smtp:
            smtp.sendmail(f"keys@{domain}", [to], reply.as_bytes())

    def hmac_for(key: bytes, k_pub: str) -> str:
        return mac(bytes(32) if faults.get("hmac") == "wrong" else key, k_pub)

    if account and account.rpartition("@")[2] == domain and block is not None:
        k_pub, after = block
        rest = [line for line in lines[after:] if line]
        key = k_auth(rest[0]) if rest else None
        if key is None:
            note("dropped", reason="publication without a K_auth", account=account)
            return 0
        (state / "keys").mkdir(exist_ok=True)
        (state / "keys" / account).write_text(k_pub)
        note("published", account=account, at=time.time())
        answer(account, hmac_for(key, k_pub), "Key publication confirmation")
        return 0
    queried = [line for line in lines if line]
    key = k_auth(queried[1]) if len(queried) >= 2 else None
    address = queried[0].lower() if queried else ""
    if key is None or not re.fullmatch(r"[^@\s/]+@[^@\s/]+", address):
        note("dropped", reason="neither a publication nor a key request", sender=sender)
        return 0
    stored = state / "keys" / address
    if address.rpartition("@")[2] != domain or not stored.is_file():
        note("unknown", address=address, sender=sender)
        return 0
    k_pub = stored.read_text()
    note("answered", address=address, sender=sender)
    answer(sender, k_pub + "\n" + hmac_for(key, k_pub), "Key response")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
