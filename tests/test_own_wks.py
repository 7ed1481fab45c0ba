"""WKS submission round trips, file to file, against GnuPG's real gpg-wks-server."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refreshd import wks
from refreshd.core import ownpolicy
from refreshd.openpgp import resign

ADDRESS = "alice@example.org"
SUBMISSION = "key-submission@example.org"
PASS = "alice pass"


@dataclass(frozen=True)
class Server:
    home: Path  # GNUPGHOME holding the submission key
    top: Path  # the server's --directory
    submission_key: bytes

    def run(self, *args: str, mail: bytes | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "GNUPGHOME": str(self.home)}
        argv = ["gpg-wks-server", "-C", str(self.top), *args]
        return subprocess.run(argv, input=mail, capture_output=True, env=env, timeout=60)

    def receive(self, mail: bytes, out: Path) -> bytes:
        done = self.run("--receive", "-o", str(out), mail=mail)
        assert done.returncode == 0, done.stderr.decode()
        return out.read_bytes()

    @property
    def domain(self) -> Path:
        return self.top / "example.org"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    base = Path(tempfile.mkdtemp(prefix="wks", dir="/tmp"))
    home = base / "gnupg"
    home.mkdir(mode=0o700)
    top = base / "top"
    (top / "example.org" / "hu").mkdir(parents=True)
    (top / "example.org" / "pending").mkdir()
    (top / "example.org" / "submission-address").write_text(SUBMISSION + "\n")
    (top / "example.org" / "policy").write_text("")
    for path in (top, top / "example.org"):
        path.chmod(0o750)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback"]
    subprocess.run(
        [
            *gpg,
            "--passphrase",
            "",
            "--quick-gen-key",
            SUBMISSION,
            "future-default",
            "default",
            "never",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    key = subprocess.run([*gpg, "--export", SUBMISSION], check=True, capture_output=True).stdout
    yield Server(home, top, key)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
    shutil.rmtree(base)


@pytest.fixture(scope="module")
def own_key() -> str:
    created = datetime.now(UTC) - timedelta(days=2)
    return resign.generate(
        ADDRESS, "Alice", now=created, expiry=timedelta(days=180), passphrase=PASS
    )


def wkd_file(server: Server, address: str) -> Path:
    """Where GnuPG's own client says the key must be published."""
    hashed = subprocess.run(
        ["/usr/lib/gnupg/gpg-wks-client", "--print-wkd-hash", address],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[0]
    return server.domain / "hu" / hashed


def published(path: Path) -> list[list[str]]:
    """gpg's view of a published key: its pub/sub colon records."""
    listing = subprocess.run(
        ["gpg", "--batch", "--with-colons", "--show-keys", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [
        line.split(":") for line in listing.splitlines() if line[:4] in ("pub:", "sub:", "fpr:")
    ]


def submit_and_confirm(
    server: Server, key: str, tmp: Path, *, sealed: bool, n: int
) -> wks.ConfirmationRequest:
    """One full round: submission mail, confirmation request, confirmation response."""
    facts = resign.read_own(key, datetime.now(UTC))
    to = wks.submission_address((server.domain / "submission-address").read_text())
    seal = wks.sealer(server.submission_key) if sealed else None
    now = datetime.now(UTC)
    mail = wks.build_submission(
        resign.read_own(key, datetime.now(UTC)).public,
        ADDRESS,
        to,
        message_id=f"<s{n}@example.org>",
        date=now,
        seal=seal,
    )
    request_mail = server.receive(mail, tmp / f"request{n}.mail")
    request = wks.parse_confirmation_request(request_mail, unseal=wks.unsealer(key, PASS))
    response = wks.build_confirmation_response(
        request,
        own_fingerprint=facts.fingerprint,
        own_addresses=facts.addresses,
        message_id=f"<r{n}@example.org>",
        date=now,
        seal=seal,
    )
    server.receive(response, tmp / f"done{n}.mail")
    return request


def test_sealed_round_trip_publishes_and_republishes_after_extension(
    server: Server, own_key: str, tmp_path: Path
) -> None:
    target = wkd_file(server, ADDRESS)
    target.unlink(missing_ok=True)
    request = submit_and_confirm(server, own_key, tmp_path, sealed=True, n=1)
    facts = resign.read_own(own_key, datetime.now(UTC))
    assert (request.address, request.sender, request.fingerprint) == (
        ADDRESS,
        SUBMISSION,
        facts.fingerprint,
    )
    first = published(target)
    assert first[1][9] == facts.fingerprint
    assert server.run("--check", ADDRESS).returncode == 0

    part = ownpolicy.taking_part(facts.components, datetime.now(UTC))
    new = {c.fingerprint: c.expires + timedelta(days=90) for c in part}
    signed_at = ownpolicy.sig_time(datetime.now(UTC), facts.last_signature)
    extended = resign.extend(own_key, PASS, new, sig_time=signed_at, now=datetime.now(UTC))
    submit_and_confirm(server, extended, tmp_path, sealed=True, n=2)
    again = published(target)
    expiries = {rec[9]: int(prev[6]) for prev, rec in itertools.pairwise(again) if rec[0] == "fpr"}
    assert expiries == {fpr: int(when.timestamp()) for fpr, when in new.items()}


def test_plain_round_trip_is_accepted_too(server: Server, own_key: str, tmp_path: Path) -> None:
    target = wkd_file(server, ADDRESS)
    target.unlink(missing_ok=True)
    submit_and_confirm(server, own_key, tmp_path, sealed=False, n=3)
    assert published(target)[1][9] == resign.read_own(own_key, datetime.now(UTC)).fingerprint


def test_cron_expires_unconfirmed_submissions(server: Server, own_key: str, tmp_path: Path) -> None:
    mail = wks.build_submission(
        resign.read_own(own_key, datetime.now(UTC)).public,
        ADDRESS,
        SUBMISSION,
        message_id="<c@example.org>",
        date=datetime.now(UTC),
        seal=wks.sealer(server.submission_key),
    )
    before = set((server.domain / "pending").iterdir())
    server.receive(mail, tmp_path / "request.mail")
    (pending,) = set((server.domain / "pending").iterdir()) - before
    old = time.time() - 10 * 86400
    os.utime(pending, (old, old))
    assert server.run("--cron").returncode == 0
    assert not pending.exists()


def test_response_refused_for_another_key_or_address(own_key: str) -> None:
    facts = resign.read_own(own_key, datetime.now(UTC))
    base = {"message_id": "<x@example.org>", "date": datetime.now(UTC), "seal": None}
    other_key = wks.ConfirmationRequest(SUBMISSION, ADDRESS, "AB" * 20, "n" * 32)
    with pytest.raises(wks.WksError, match="not ours"):
        wks.build_confirmation_response(
            other_key, own_fingerprint=facts.fingerprint, own_addresses=facts.addresses, **base
        )
    other_address = wks.ConfirmationRequest(
        SUBMISSION, "mallory@example.org", facts.fingerprint, "n" * 32
    )
    with pytest.raises(wks.WksError, match="not one of our addresses"):
        wks.build_confirmation_response(
            other_address,
            own_fingerprint=facts.fingerprint,
            own_addresses=facts.addresses,
            **base,
        )


def test_header_injection_is_refused(own_key: str) -> None:
    with pytest.raises(wks.WksError, match="mail header"):
        wks.build_submission(
            resign.read_own(own_key, datetime.now(UTC)).public,
            "a@example.org\nBcc: x@example.net",
            SUBMISSION,
            message_id="<i@example.org>",
            date=datetime.now(UTC),
            seal=None,
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key-submission@example.org\n", "key-submission@example.org"),
        ("\n  Submit@EXAMPLE.org  \nignored@example.org\n", "Submit@example.org"),
    ],
)
def test_submission_address_file(text: str, expected: str) -> None:
    assert wks.submission_address(text) == expected


@pytest.mark.parametrize("text", ["", "\n\n", "not an address", "Name <a@example.org>", "a@b"])
def test_submission_address_file_without_address(text: str) -> None:
    with pytest.raises(wks.WksError):
        wks.submission_address(text)


def plain_request(**fields: str) -> bytes:
    body = "".join(f"{k}: {v}\n" for k, v in fields.items())
    return f"From: {SUBMISSION}\nContent-Type: application/vnd.gnupg.wks\n\n{body}".encode()


GOOD = {
    "type": "confirmation-request",
    "sender": SUBMISSION,
    "address": ADDRESS,
    "fingerprint": "AB" * 20,
    "nonce": "ybndrfg8ejkmcpqxot1uwisza345h769",
}


def no_unseal(armored: str) -> bytes:
    raise AssertionError("a plain request needs no decryption")


def test_plain_request_fields_are_checked() -> None:
    assert (
        wks.parse_confirmation_request(plain_request(**GOOD), unseal=no_unseal).nonce
        == (GOOD["nonce"])
    )
    for name, bad in [
        ("type", "confirmation-response"),
        ("sender", "x"),
        ("address", "a@"),
        ("fingerprint", "AB" * 10),
        ("nonce", "short"),
        ("nonce", "a b" * 10),
    ]:
        with pytest.raises(wks.WksError):
            wks.parse_confirmation_request(plain_request(**{**GOOD, name: bad}), unseal=no_unseal)
    with pytest.raises(wks.WksError, match="larger"):
        wks.parse_confirmation_request(b"x" * (wks.MAX_MAIL + 1), unseal=no_unseal)


@pytest.fixture(scope="module")
def open_key() -> str:
    """A key without passphrase: unlocking costs a quarter second, too much for fuzzing."""
    return resign.generate(
        ADDRESS,
        None,
        now=datetime.now(UTC) - timedelta(days=1),
        expiry=timedelta(days=30),
        passphrase=None,
    )


@pytest.fixture(scope="module")
def real_request(server: Server, open_key: str) -> bytes:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        mail = wks.build_submission(
            resign.read_own(open_key, datetime.now(UTC)).public,
            ADDRESS,
            SUBMISSION,
            message_id="<h@example.org>",
            date=datetime.now(UTC),
            seal=wks.sealer(server.submission_key),
        )
        return server.receive(mail, Path(tmp) / "request.mail")


def test_request_for_a_locked_key_says_locked(real_request: bytes, own_key: str) -> None:
    with pytest.raises(resign.Locked):
        wks.parse_confirmation_request(real_request, unseal=wks.unsealer(own_key, "wrong"))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(at=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255), cut=st.booleans())
def test_damaged_requests_get_a_clear_error(
    real_request: bytes, open_key: str, at: int, flip: int, cut: bool
) -> None:
    data = bytearray(real_request)
    index = at % len(data)
    if cut:
        del data[index:]
    else:
        data[index] ^= flip
    try:
        request = wks.parse_confirmation_request(bytes(data), unseal=wks.unsealer(open_key, None))
    except wks.WksError as exc:
        assert str(exc)
        return
    assert re.fullmatch(r"[a-z0-9]{17,128}", request.nonce)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=2000),
        st.builds(
            lambda h, b: h + b"\n\n" + b,
            st.sampled_from(
                [
                    b"Content-Type: multipart/encrypted; boundary=x",
                    b"Content-Type: multipart/signed; boundary=x",
                    b"Content-Type: application/vnd.gnupg.wks",
                    b'Content-Type: multipart/mixed; boundary="x"',
                ]
            ),
            st.binary(max_size=2000),
        ),
    )
)
def test_arbitrary_mail_gets_a_clear_error(mail: bytes) -> None:
    def unseal(armored: str) -> bytes:
        raise wks.WksError("cannot decrypt")

    try:
        wks.parse_confirmation_request(mail, unseal=unseal)
    except wks.WksError:
        return
