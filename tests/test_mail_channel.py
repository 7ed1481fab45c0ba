"""The mail channel against the test world's real Postfix and Dovecot (direct: via_tor = false;
the Tor path is in tests/test_e2e_mail.py)."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from refreshd.audit import AuditLog
from refreshd.config import Config, MailConfig, NetworkConfig
from refreshd.errors import MailError
from refreshd.mail import keyproto
from refreshd.mail.channel import MailChannel, parse_door, search_criteria
from refreshd.mail.exchange import MailExchange, Outcome, Verdict
from refreshd.mail.message import Incoming, parse
from tests.world.mail import MailServers

pytestmark = pytest.mark.e2e

KEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nbWFkZSB1cA==\n-----END PGP PUBLIC KEY BLOCK-----"


def channel_for(
    servers: MailServers, tmp_path: Path, user: str, *, password: str | None = None, ca: bool = True
) -> MailChannel:
    secret = tmp_path / f"{user}.pw"
    secret.write_text((password or servers.users[user]) + "\n")
    host, at = servers.address, user.replace("@", "%40")
    cfg = Config(
        network=NetworkConfig(
            ca_file=str(servers.ca.ca_file) if ca else "", timeout=30, connect_to=()
        ),
        mail=MailConfig(
            submission=f"smtp+starttls://{at}@{host}:{servers.submission_port}",
            imap=f"imaps://{at}@{host}:{servers.imaps_port}/INBOX",
            password_file=str(secret),
            via_tor=False,
        ),
    )
    return MailChannel(cfg, None)


def test_door_urls_and_search_keys() -> None:
    door = parse_door("imaps://alice%40example.org@mail.example.org/Answers")
    assert (door.user, door.host, door.port, door.mailbox) == (
        "alice@example.org",
        "mail.example.org",
        993,
        "Answers",
    )
    assert parse_door("smtps://u@h").port == 465
    with pytest.raises(MailError):
        parse_door("http://u@h")
    keys = search_criteria([("In-Reply-To", "<a@b>"), ("From", "x@y")])
    assert keys == [
        "UNKEYWORD",
        "$Refreshd",
        '(OR (HEADER In-Reply-To "<a@b>") (HEADER From "x@y"))',
    ]
    with pytest.raises(MailError):
        search_criteria([("From", 'x"@y')])


def test_key_request_answered_and_only_the_answer_marked(
    mail_servers: MailServers, tmp_path: Path
) -> None:
    user = "frank@example.org"
    mail_servers.kst_store("gina@example.net", KEY)
    unrelated = mail_servers.mail_from("gina@example.net", user, "just a letter\r\n")
    mail_servers.inject("gina@example.net", [user], unrelated)
    before = mail_servers.wait_messages(user, 1)
    channel = channel_for(mail_servers, tmp_path, user)
    k_auth = keyproto.new_k_auth(os.urandom(32))
    mid = f"<{os.urandom(8).hex()}@example.org>"
    mail, sent = keyproto.request(
        user, "gina@example.net", k_auth, message_id=mid, date=datetime.now(UTC)
    )
    audit = AuditLog(tmp_path / "audit.jsonl")
    exchange = MailExchange(channel, audit, 1 << 20)

    async def check(answer: Incoming) -> Outcome:
        return Outcome(Verdict.DONE, "ok", keyproto.check_response(sent, answer))

    async def main() -> Outcome:
        async with trio.open_nursery() as nursery:
            await nursery.start(exchange.run)
            await exchange.send("krp", mail, user, sent.peer)
            outcome = await exchange.answer("krp", [("In-Reply-To", mid)], check, 60)
            nursery.cancel_scope.cancel()
        return outcome

    outcome = trio.run(main)
    assert outcome.verdict is Verdict.DONE, outcome
    assert outcome.value == keyproto.k_pub_block(KEY) + "\n"
    after = mail_servers.listing(user)
    assert after[: len(before)] == before, "the unrelated letter is untouched"
    answer = [m for m in after if m not in before]
    assert len(answer) == 1 and "$Refreshd" in answer[0].flags and "\\Seen" in answer[0].flags
    audit.close()


def test_wrong_password_and_untrusted_tls_are_clear_errors(
    mail_servers: MailServers, tmp_path: Path
) -> None:
    user = "frank@example.org"
    wrong = channel_for(mail_servers, tmp_path, user, password="not-it")
    with pytest.raises(MailError) as refused:
        trio.run(wrong.send, b"Subject: x\r\n\r\nx\r\n", user, [user])
    assert "refused the login" in refused.value.reason
    assert "not-it" not in refused.value.reason
    with pytest.raises(MailError) as imap_refused:
        trio.run(wrong.search, [("From", "x@example.org")], 1000)
    assert "refused" in imap_refused.value.reason
    untrusted = channel_for(mail_servers, tmp_path, user, ca=False)
    with pytest.raises(MailError) as tls:
        trio.run(untrusted.send, b"Subject: x\r\n\r\nx\r\n", user, [user])
    assert "TLS certificate not trusted" in tls.value.reason


def test_parse_refuses_oversized_and_reads_answers() -> None:
    with pytest.raises(MailError, match="larger than"):
        parse(b"x" * 101, 100)
    mail = parse(
        b"From: Keys <KEYS@example.net>\r\nIn-Reply-To: <a@b>\r\nReferences: <c@d> <e@f>\r\n"
        b"Message-ID: <z@y>\r\n\r\nbody\r\n",
        1000,
    )
    assert mail.sender == "keys@example.net"
    assert mail.answered == ("<a@b>", "<c@d>", "<e@f>")
    assert mail.text.strip() == "body"
    assert base64.b64decode(keyproto.new_k_auth(bytes(32))) == bytes(32)
