"""The SMTP key protocols (KPP, KRP) and the mail reader as plain functions: the MAC is the
paper's HMAC-SHA256(K_auth, K_pub), computed here independently with the stdlib; hostile mail
ends in MailError and nothing else."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refreshd.errors import MailError
from refreshd.mail import keyproto
from refreshd.mail.message import build_mail, parse

KEY = (
    "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ0000BYJKwYBBAHaRw8BAQdA\n=abcd\n"
    "-----END PGP PUBLIC KEY BLOCK-----\n"
)
K_AUTH = base64.b64encode(bytes(range(32))).decode()
WHEN = datetime(2026, 3, 4, 16, 47, tzinfo=UTC)


def paper_mac(k_auth: str, block: str) -> str:
    """Figure 3/4 of the paper: base64 of HMAC-SHA256 keyed with the 32 decoded K_auth bytes."""
    digest = hmac.new(base64.b64decode(k_auth), block.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def answer(sender: str, in_reply_to: str, body: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: alice@example.org\r\nIn-Reply-To: {in_reply_to}\r\n"
        f"Message-ID: <answer@example.org>\r\n\r\n{body}"
    ).encode()


def published() -> keyproto.Sent:
    mail, sent = keyproto.publication(
        "alice@example.org", KEY, K_AUTH, message_id="<pub@example.org>", date=WHEN
    )
    text = parse(mail, 1 << 20).text
    assert text.strip().splitlines()[-1] == K_AUTH  # K_auth on the line after the block
    assert sent.peer == "keys@example.org"
    return sent


def test_publication_confirmed_only_by_the_right_mac_from_keys_at_the_domain() -> None:
    sent = published()
    block = KEY.strip()
    good = answer(
        "keys@example.org (Key Storage Service)", "<pub@example.org>", paper_mac(K_AUTH, block)
    )
    keyproto.check_confirmation(sent, parse(good, 1 << 20))
    wrong_key = paper_mac(base64.b64encode(bytes(32)).decode(), block)
    for mail, why in (
        (answer("keys@example.org", "<pub@example.org>", wrong_key), "MAC does not match"),
        (answer("mallory@example.net", "<pub@example.org>", paper_mac(K_AUTH, block)), "not keys@"),
        (
            answer("keys@example.org", "<other@example.org>", paper_mac(K_AUTH, block)),
            "does not answer",
        ),
        (answer("keys@example.org", "<pub@example.org>", ""), "without a MAC"),
    ):
        with pytest.raises(MailError, match=why):
            keyproto.check_confirmation(sent, parse(mail, 1 << 20))


def test_key_response_gives_the_key_only_when_its_mac_verifies() -> None:
    mail, sent = keyproto.request(
        "bob@example.net", "alice@example.org", K_AUTH, message_id="<req@example.net>", date=WHEN
    )
    lines = parse(mail, 1 << 20).text.split()
    assert lines == ["alice@example.org", K_AUTH]  # figure 5: the address, then K_auth
    assert sent.peer == "keys@example.org"
    block = KEY.strip()
    body = f"{block}\n{paper_mac(K_AUTH, block)}\n"
    key = keyproto.check_response(
        sent, parse(answer("keys@example.org", "<req@example.net>", body), 1 << 20)
    )
    assert key == block + "\n"
    tampered = body.replace("mDMEZ0000", "mDMEZ0001")
    with pytest.raises(MailError, match="MAC does not match"):
        keyproto.check_response(
            sent, parse(answer("keys@example.org", "<req@example.net>", tampered), 1 << 20)
        )
    with pytest.raises(MailError, match="no armored public key"):
        keyproto.check_response(
            sent, parse(answer("keys@example.org", "<req@example.net>", "x"), 1 << 20)
        )


def test_own_mails_refuse_header_injection_and_non_ascii() -> None:
    with pytest.raises(MailError):
        build_mail("a@b", "c@d\r\nBcc: e@f", "s", "x", message_id="<m@b>", date=WHEN)
    with pytest.raises(MailError):
        build_mail("a@b", "c@d", "s", "ü", message_id="<m@b>", date=WHEN)
    with pytest.raises(ValueError):
        keyproto.new_k_auth(b"short")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_hostile_bytes_end_in_mail_error_or_a_reading(raw: bytes) -> None:
    sent = keyproto.Sent("<req@example.net>", K_AUTH, "keys@example.org")
    try:
        mail = parse(raw, 2048)
    except MailError:
        return
    for check in (keyproto.check_confirmation, keyproto.check_response):
        with contextlib.suppress(MailError):  # anything else fails the test
            check(sent, mail)


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=200),
    st.text(max_size=200),
    st.lists(
        st.sampled_from(["\r\n", "--b\r\n", "Content-Type: multipart/mixed; boundary=b\r\n"]),
        max_size=30,
    ),
)
def test_hostile_headers_and_mime_end_in_mail_error_or_a_reading(
    sender: str, reply: str, parts: list[str]
) -> None:
    raw = (f"From: {sender}\r\nIn-Reply-To: {reply}\r\n" + "".join(parts)).encode(
        "utf-8", "surrogateescape"
    )
    try:
        mail = parse(raw, 1 << 16)
    except MailError:
        return
    assert isinstance(mail.text, str)
