"""End to end: the mail channel of `refreshd run` through the world's Tor, nginx (WKD), Postfix,
Dovecot, gpg-wks-server and the Key Storage Service (SPEC 10).

Each scenario runs its own daemon with its own mailbox (an own key is one per daemon); the
daemon is judged by its socket answers and audit log, and by what the servers and Tor saw:
the WKD file gpg reads back, the KST's storage, the IMAP listing, Tor's STREAM events.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import world
from tests.daemon_proc import Daemon, write_config
from tests.e2e_support import colon_expiry, wait_for
from tests.keyfactory import Gpg
from tests.world import names
from tests.world.ca import LocalCA
from tests.world.mail import SUBMISSION_ADDRESS, Listed, MailServers
from tests.world.nginx import WkdServer
from tests.world.tornet import EventLog, TorNetwork

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not world.https_port_443(),
        reason="refreshd asks WKD on port 443: nginx may not bind it here",
    ),
]

AuditLine = dict[str, Any]
GPG_SHOW = ("--batch", "--with-colons", "--import-options", "show-only", "--import")


class MailDaemon:
    def __init__(self, daemon: Daemon, state: Path) -> None:
        self.daemon = daemon
        self.state = state

    def audit(self) -> list[AuditLine]:
        import json

        path = self.state / "audit.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def wait(self, match: Callable[[AuditLine], bool], timeout: float = 150) -> AuditLine:
        try:
            line: AuditLine = wait_for(
                lambda: next((e for e in self.audit() if match(e)), None), timeout, "audit line"
            )
        except AssertionError as exc:
            tail = "\n".join(str(e) for e in self.audit()[-12:])
            raise AssertionError(f"{exc}; the audit log ends:\n{tail}") from None
        return line


@pytest.fixture
def mail_daemon(
    tor_network: TorNetwork,
    wkd_server: WkdServer,
    mail_servers: MailServers,
    test_ca: LocalCA,
    tmp_path: Path,
) -> Iterator[Callable[..., MailDaemon]]:
    """start(user, upload=[...], **own) -> a daemon whose mail goes out as `user`, over Tor."""
    running: list[Daemon] = []

    def start(
        user: str,
        upload: list[str],
        root: Path | None = None,
        discovery: dict[str, Any] | None = None,
        mail: dict[str, Any] | None = None,
        **own: Any,
    ) -> MailDaemon:
        root = root or tmp_path / user.split("@")[0]
        root.mkdir(exist_ok=True)
        secret = root / "mail-password"
        secret.write_text(mail_servers.users[user] + "\n")
        login = user.replace("@", "%40")
        sections = {
            "tor": tor_network.daemon_config(),
            "network": {"ca_file": str(test_ca.ca_file), "timeout": "30s"},
            "discovery": {"order": ["wkd"], "vks": [], "hkp": [], **(discovery or {})},
            "own": {"upload": upload, **own},
            "mail": {
                "submission": f"smtp+starttls://{login}@{names.MAIL_HOST}:{mail_servers.submission_port}",
                "imap": f"imaps://{login}@{names.MAIL_HOST}:{mail_servers.imaps_port}/INBOX",
                "password_file": str(secret),
                "via_tor": True,
                "answer_timeout": "90s",
                **(mail or {}),
            },
        }
        daemon = Daemon(write_config(root, sections))
        running.append(daemon)
        handle = MailDaemon(daemon, root / "state")
        wait_for(lambda: daemon.call("status")["tor"]["state"] == "ready", 60, "Tor ready")
        return handle

    try:
        yield start
    finally:
        for daemon in running:
            daemon.stop()
        for daemon in running:
            assert daemon.proc.returncode == 0


def uploaded(mechanism: str, stage: str, ok: bool = True) -> Callable[[AuditLine], bool]:
    return lambda e: (
        e["event"] == "own.uploaded"
        and e.get("mechanism") == mechanism
        and e.get("stage") == stage
        and e.get("ok") is ok
    )


def wkd_key(wkd_server: WkdServer, tor: TorNetwork, ca: LocalCA, address: str) -> bytes:
    """The key WKD serves for `address`, fetched through Tor."""
    proxy = tor.socks_url("probe-" + address, "x")
    with httpx.Client(proxy=proxy, trust_env=False, verify=ca.client_context(), timeout=60) as c:
        response = c.get(wkd_server.wkd_url(address))
    assert response.status_code == 200, response.status_code
    return response.content


def wkd_listing(wkd_server: WkdServer, tor: TorNetwork, ca: LocalCA, address: str) -> str:
    """That key as gpg lists it."""
    key = wkd_key(wkd_server, tor, ca, address)
    with tempfile.TemporaryDirectory(prefix="refreshd-wkd-") as home:
        done = subprocess.run(
            ["gpg", "--homedir", home, *GPG_SHOW],
            input=key,
            capture_output=True,
            timeout=60,
            check=True,
        )
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], check=False)
    return done.stdout.decode()


def sealed_request(recipient_key: bytes | None, address: str, fingerprint: str) -> str:
    """A WKS confirmation request (PGP/MIME) for `address`, encrypted to `recipient_key`, or to
    a throw-away key when None (wrong encryption)."""
    body = (
        "Content-Type: application/vnd.gnupg.wks\n\ntype: confirmation-request\n"
        f"sender: {SUBMISSION_ADDRESS}\naddress: {address}\nfingerprint: {fingerprint}\n"
        "nonce: abcdefghijklmnopqrstuvwxyz\n"
    )
    with tempfile.TemporaryDirectory(prefix="refreshd-seal-") as home:
        gpg = Gpg(Path(home) / "g")
        if recipient_key is None:
            recipient = gpg.generate("Stranger <stranger@example.net>")
        else:
            gpg.run("--import", data=recipient_key)
            recipient = fingerprint
        armored = gpg.run(
            "--armor", "--trust-model", "always", "--encrypt", "-r", recipient, data=body.encode()
        ).decode()
        gpg.close()
    return (
        "--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n"
        f"--b\r\nContent-Type: application/octet-stream\r\n\r\n{armored}\r\n--b--\r\n"
    )


PGP_MIME = 'multipart/encrypted; protocol="application/pgp-encrypted"; boundary=b'


def mail_streams(log: EventLog, servers: MailServers, status: str) -> list[Any]:
    """STREAM events to the submission or IMAP door: NEW names the host the daemon gave Tor
    (the test name: socks5h), later events the address MapAddress turned it into."""
    ports = (f":{servers.submission_port}", f":{servers.imaps_port}")
    hosts = (names.MAIL_HOST, servers.address)
    return [
        s
        for s in log.streams
        if s.status == status and s.target.startswith(hosts) and s.target.endswith(ports)
    ]


def unchanged(before: list[Listed], after: list[Listed]) -> None:
    """Every message listed before is still there, with the same bytes and flags."""
    by_uid = {m.uid: m for m in after}
    for message in before:
        assert by_uid.get(message.uid) == message, message


# -- acceptance 1 and 6: WKS through the daemon, WKD read back, every connection a Tor stream --


def test_wks_publication_confirmed_by_the_daemon_and_read_back_from_wkd(
    mail_daemon: Callable[..., MailDaemon],
    mail_servers: MailServers,
    wkd_server: WkdServer,
    tor_network: TorNetwork,
    test_ca: LocalCA,
    tmp_path: Path,
) -> None:
    user = "alice@example.org"
    root = tmp_path / "alice"
    # Bad input waiting in the mailbox, From the submission address the daemon listens to.
    hostile = [
        mail_servers.mail_from(SUBMISSION_ADDRESS, user, "not a WKS mail\r\n"),
        mail_servers.mail_from(
            SUBMISSION_ADDRESS,
            user,
            "--b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
            "--b\r\nContent-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n"
            "garbage\r\n-----END PGP MESSAGE-----\r\n--b--\r\n",
            Content_Type='multipart/encrypted; protocol="application/pgp-encrypted"; boundary=b',
        ),
        mail_servers.mail_from(SUBMISSION_ADDRESS, user, "x" * (5 << 20)),
        mail_servers.mail_from("someone@example.net", user, "an ordinary letter\r\n"),
    ]
    for mail in hostile:
        mail_servers.inject(SUBMISSION_ADDRESS, [user], mail)
    before = mail_servers.wait_messages(user, len(hostile))

    with tor_network.record_events() as log:
        scene = mail_daemon(user, ["wks"], root=root)
        own = scene.daemon.call("own_generate", address=user, name="Alice")
        fingerprint, expires = own["fingerprint"], own["expires"]
        published = scene.wait(uploaded("wks", "published"))
        assert log.wait_until(
            lambda events: mail_streams(events, mail_servers, "SUCCEEDED") != [], 10
        )

    events = [e for e in scene.audit() if e["event"] == "own.uploaded"]
    assert [e["stage"] for e in events] == ["submitted", "confirmed", "published"], events
    assert published["fingerprint"] == fingerprint
    assert published["expires"] == expires
    listing = wkd_listing(wkd_server, tor_network, test_ca, user)
    assert f"fpr:::::::::{fingerprint}:" in listing
    assert colon_expiry(listing) == int(datetime.fromisoformat(expires).timestamp())
    # gpg-wks-server received the submission and the daemon's answer.
    assert len(mail_servers.wks_log()) >= 2
    assert all(entry["status"] == 0 for entry in mail_servers.wks_log()), mail_servers.wks_log()
    # The hostile mails were refused or ignored, audited, and left exactly as they were.
    refused = [e for e in scene.audit() if e["event"] in ("mail.refused", "mail.answer")]
    assert any("larger than" in e.get("reason", "") for e in refused), refused
    assert sum(e.get("verdict") == "ignored" for e in refused) >= 2, refused
    after = mail_servers.listing(user)
    unchanged(before, after)
    handled = [m for m in after if "$Refreshd" in m.flags]
    assert len(handled) == 1, after  # the confirmation request, nothing else
    # Every mail connection was a Tor stream, each session on its own credentials.
    opened = mail_streams(log, mail_servers, "NEW")
    assert len(opened) >= 3  # submission, IMAP polls, the answer's submission
    assert all(s.target.startswith(names.MAIL_HOST) for s in opened), "Tor resolves the name"
    usernames = [s.socks_username for s in opened]
    assert None not in usernames and len(set(usernames)) == len(usernames)
    status = scene.daemon.call("own")
    assert status[0]["last_upload"]

    # -- a time-compressed extension: the restarted daemon extends at once and republishes.
    scene.daemon.stop()
    # Waiting for it: a request for another address sealed to our key, one sealed to another.
    ours = wkd_key(wkd_server, tor_network, test_ca, user)
    for sealed in (
        sealed_request(ours, "bob@example.org", fingerprint),
        sealed_request(None, user, fingerprint),
    ):
        forged = mail_servers.mail_from(SUBMISSION_ADDRESS, user, sealed, Content_Type=PGP_MIME)
        mail_servers.inject(SUBMISSION_ADDRESS, [user], forged)
    before = mail_servers.wait_messages(user, len(after) + 2)
    before = [m for m in before if "$Refreshd" not in m.flags]
    # Inside the window at once (180d left < 300d), one extension leaves it (180d + 400d).
    scene = mail_daemon(user, ["wks"], root=root, extend_when_left="300d", extend_by="400d")
    extended = scene.wait(lambda e: e["event"] == "own.extended")
    republished = scene.wait(
        lambda e: uploaded("wks", "published")(e) and e["seq"] > extended["seq"]
    )
    new_expiry = (datetime.fromisoformat(expires) + timedelta(days=400)).isoformat()
    assert scene.daemon.call("own")[0]["expires"] == new_expiry
    assert extended["expiries"][fingerprint] == new_expiry
    assert republished["expires"] == new_expiry
    listing = wkd_listing(wkd_server, tor_network, test_ca, user)
    assert colon_expiry(listing) == int(datetime.fromisoformat(new_expiry).timestamp())
    unchanged(before, mail_servers.listing(user))
    ignored = [
        e["reason"]
        for e in scene.audit()
        if e["event"] == "mail.answer" and e["seq"] > extended["seq"] and e["verdict"] == "ignored"
    ]
    assert any("bob@example.org, not one of our addresses" in r for r in ignored), ignored
    assert any("cannot decrypt" in r for r in ignored), ignored


# -- acceptance 2 and 4: KPP confirmed, a wrong MAC or another sender fails it ------------------


def test_kpp_publication_confirmed_with_a_verified_mac(
    mail_daemon: Callable[..., MailDaemon], mail_servers: MailServers
) -> None:
    user = "carol@example.org"
    scene = mail_daemon(user, ["kpp"])
    own = scene.daemon.call("own_generate", address=user)
    confirmed = scene.wait(uploaded("kpp", "confirmed"))
    assert confirmed["fingerprint"] == own["fingerprint"]
    stored = mail_servers.kst_key(user)
    assert stored and "BEGIN PGP PUBLIC KEY BLOCK" in stored
    handled = [m for m in mail_servers.listing(user) if "$Refreshd" in m.flags]
    assert len(handled) == 1


@pytest.mark.parametrize(
    ("user", "fault", "reason"),
    [
        ("dave@example.org", {"hmac": "wrong"}, "MAC does not match"),
        ("erin@example.org", {"from": "mallory@example.net"}, "not keys@example.org"),
    ],
)
def test_kpp_confirmation_with_a_wrong_mac_or_sender_fails_and_nothing_else_changes(
    mail_daemon: Callable[..., MailDaemon],
    mail_servers: MailServers,
    user: str,
    fault: dict[str, str],
    reason: str,
) -> None:
    # Look-alikes: a replayed confirmation (an old token), a spoofed one, an ordinary letter.
    old = mail_servers.mail_from(
        "keys@example.org", user, "AAAA\r\n", In_Reply_To="<replayed@example.org>"
    )
    spoofed = mail_servers.mail_from("keys@example.org", user, "not a MAC\r\n")
    letter = mail_servers.mail_from("gina@example.net", user, "hello\r\n")
    for mail in (old, spoofed, letter):
        mail_servers.inject("keys@example.org", [user], mail)
    before = mail_servers.wait_messages(user, 3)
    mail_servers.kst_faults(**fault)
    try:
        scene = mail_daemon(user, ["kpp"])
        scene.daemon.call("own_generate", address=user)
        failed = scene.wait(uploaded("kpp", "confirmed", ok=False))
    finally:
        mail_servers.kst_faults()
    assert reason in failed["reason"], failed
    assert scene.daemon.call("own")[0]["last_upload"] is None
    retry = scene.wait(lambda e: e["event"] == "own.upload_retry")
    assert reason in retry["reason"]
    after = mail_servers.wait_messages(user, 4)
    unchanged(before, after)
    assert not [m for m in after if "$Refreshd" in m.flags], "a failed answer is not marked"
    assert scene.daemon.call("status")["version"]  # still serving


# -- acceptance 3: KRP as the smtp discovery source -------------------------------------------


def test_krp_registers_a_verified_key_and_rejects_bad_answers(
    mail_daemon: Callable[..., MailDaemon], mail_servers: MailServers, tmp_path: Path
) -> None:
    gpg = Gpg(tmp_path / "keys")
    try:
        kim = gpg.generate("Kim <kim@example.org>")
        lou = gpg.generate("Lou <lou@example.org>")
        other = gpg.generate("Someone Else <else@example.org>")
        for address, fpr in (("kim@example.org", kim), ("lou@example.org", lou)):
            mail_servers.kst_store(address, gpg.run("--armor", "--export", fpr).decode())
        mail_servers.kst_store("max@example.org", gpg.run("--armor", "--export", other).decode())
    finally:
        gpg.close()
    scene = mail_daemon(
        "bob@example.net", [], discovery={"order": ["smtp"]}, mail={"answer_timeout": "20s"}
    )

    first = scene.daemon.call("lookup", address="kim@example.org")
    assert first["state"] == "pending", first
    answer = scene.daemon.call("lookup", address="kim@example.org", wait=90)
    assert answer["state"] == "registered", answer
    assert answer["fingerprint"] == kim
    assert (answer["source"], answer["validation"]) == ("smtp", "weak-chain")
    assert answer["usable"] is True and answer["encrypt"] is True

    def failed(address: str) -> AuditLine:
        return scene.wait(
            lambda e: (
                e["event"] == "discovery.failed"
                and e.get("address") == address
                and e.get("source") == "smtp"
            )
        )

    mail_servers.kst_faults(hmac="wrong")
    try:
        bad = scene.daemon.call("lookup", address="lou@example.org", wait=90)
    finally:
        mail_servers.kst_faults()
    assert bad["state"] == "unknown", bad
    assert "MAC does not match" in bad["reason"], bad
    assert "MAC does not match" in failed("lou@example.org")["reason"]

    stranger = scene.daemon.call("lookup", address="max@example.org", wait=90)
    assert stranger["state"] == "unknown", stranger
    assert other not in {
        k["fingerprint"]
        for k in scene.daemon.call("history", address="max@example.org")["keys"]
        if k["status"] == "registered"
    }

    silent = scene.daemon.call("lookup", address="ned@example.org", wait=90)
    assert silent["state"] == "unknown", silent
    assert "no answer within 20 s" in silent["reason"], silent
    assert "no answer within 20 s" in failed("ned@example.org")["reason"]
    assert [e for e in mail_servers.kst_log() if e.get("address") == "ned@example.org"]
