"""Extending own keys made by refreshd, gpg and sq, checked with gpg, sq, rnp and pgpdump."""

from __future__ import annotations

import base64
import itertools
import re
import shlex
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pgpy import PGPKey

from refreshd.core import ownpolicy
from refreshd.openpgp import resign

EXTEND_BY = timedelta(days=90)
WHEN_LEFT = timedelta(days=60)
STRONG = {"SHA256", "SHA384", "SHA512"}


@dataclass(frozen=True)
class Made:
    name: str
    armored: str
    passphrase: str | None


def run(*argv: str, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, input=stdin, capture_output=True, timeout=60)
    if check and done.returncode:
        raise AssertionError(f"{argv[:4]} exited {done.returncode}: {done.stderr.decode()[-800:]}")
    return done


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """Short paths: gpg-agent's socket path must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="own", dir="/tmp"))
    yield path
    for home in path.glob("gpg*"):
        run("gpgconf", "--homedir", str(home), "--kill", "gpg-agent", check=False)
    shutil.rmtree(path)


def gpg_home(workdir: Path, name: str) -> Path:
    home = workdir / f"gpg-{name}"
    home.mkdir(mode=0o700)
    # a fixed, small S2K count: calibrating it takes gpg-agent seconds on a busy machine
    (home / "gpg-agent.conf").write_text("s2k-count 65536\n")
    return home


def gpg(home: Path, *args: str, stdin: bytes | None = None, check: bool = True):
    return run("gpg", "--homedir", str(home), "--batch", *args, stdin=stdin, check=check)


def make_gpg(workdir: Path, name: str, *, created: datetime, expire: str, pw: str) -> str:
    home = gpg_home(workdir, name)
    faked = ("--pinentry-mode", "loopback", "--passphrase", pw)
    faked += ("--faked-system-time", str(int(created.timestamp())))
    # SHA-1 first: a signer that follows the key's preferences would pick it
    faked += ("--default-preference-list", "SHA1 SHA256 AES256 AES ZLIB Uncompressed")
    gpg(home, *faked, "--quick-gen-key", f"{name} <{name}@example.org>", "ed25519", "cert", expire)
    fpr = re.search(
        r"^fpr:+([0-9A-F]{40}):", gpg(home, "--with-colons", "-K").stdout.decode(), re.M
    )
    gpg(home, *faked, "--quick-add-key", fpr.group(1), "cv25519", "encr", expire)
    armored = gpg(home, *faked, "--armor", "--export-secret-keys").stdout.decode()
    run("gpgconf", "--homedir", str(home), "--kill", "gpg-agent")
    return armored


def make_sq(workdir: Path, name: str, *, created: datetime, suite: str, pw: str | None) -> str:
    out = workdir / f"{name}.pgp"
    argv = ["sq", "key", "generate", "--cipher-suite", suite, "--userid", f"<{name}@example.org>"]
    argv += ["--creation-time", created.strftime("%Y%m%dT%H%M%SZ"), "--expires-in", "6m"]
    argv += ["--export", str(out)]
    if pw is None:
        run(*argv)
    else:  # sq reads the password from the terminal only
        run(
            "script",
            "-qec",
            shlex.join([*argv, "--with-password"]),
            "/dev/null",
            stdin=f"{pw}\n{pw}\n".encode(),
        )
    return run("sq", "armor", str(out)).stdout.decode()


@pytest.fixture(scope="module")
def made(workdir: Path) -> list[Made]:
    created = datetime.now(UTC) - timedelta(days=3)
    return [
        Made(
            "refreshd",
            resign.generate(
                "ann@example.org", "Ann", now=created, expiry=timedelta(days=180), passphrase=None
            ),
            None,
        ),
        Made(
            "refreshd-pw",
            resign.generate(
                "bea@example.org",
                None,
                now=created,
                expiry=timedelta(days=180),
                passphrase="bea pass",
            ),
            "bea pass",
        ),
        Made(
            "gpg-pw",
            make_gpg(workdir, "carol", created=created, expire="6m", pw="carol pass"),
            "carol pass",
        ),
        Made(
            "sq-cv25519", make_sq(workdir, "dave", created=created, suite="cv25519", pw=None), None
        ),
        Made(
            "sq-cv25519-pw",
            make_sq(workdir, "eve", created=created, suite="cv25519", pw="eve pass"),
            "eve pass",
        ),
        Made("sq-rsa3k", make_sq(workdir, "fay", created=created, suite="rsa3k", pw=None), None),
    ]


@dataclass(frozen=True)
class Seen:
    expires: dict[str, int | None]  # fingerprint -> epoch
    caps: dict[str, str]
    prefs: tuple[str, ...]
    sq_expires: dict[str, str]
    sq_flags: dict[str, str]
    rnp: dict[str, tuple[str, str]]  # fingerprint -> (flags, expiry date)
    signatures: list[str]  # pgpdump blocks


def observe(workdir: Path, tag: str, public: bytes) -> Seen:
    """What gpg, sq, rnp and pgpdump say about a public key."""
    cert = workdir / f"{tag}.pub"
    cert.write_bytes(public)
    home = gpg_home(workdir, tag)
    gpg(home, "--import", str(cert))
    colons = gpg(home, "--with-colons", "--fixed-list-mode", "-k").stdout.decode().splitlines()
    expires, caps, current = {}, {}, None
    for line in colons:
        f = line.split(":")
        if f[0] in ("pub", "sub"):
            current = f
        elif f[0] == "fpr" and current is not None:
            expires[f[9]] = int(current[6]) if current[6] else None
            caps[f[9]] = current[11]
            current = None
    primary = next(iter(expires))
    edit = gpg(home, "--with-colons", "--edit-key", primary, "quit").stdout.decode()
    prefs = tuple(line.split(":")[12] for line in edit.splitlines() if line.startswith("uid:"))
    inspect = run("sq", "inspect", str(cert)).stdout.decode()
    sq_expires, sq_flags, fpr = {}, {}, None
    for line in inspect.splitlines():
        key = re.match(r"\s*(Fingerprint|Subkey): ([0-9A-F]{40})", line)
        if key:
            fpr = key.group(2)
        elif "Expiration time:" in line:
            sq_expires[fpr] = line.split(": ", 1)[1].split(" (")[0]
        elif "Key flags:" in line:
            sq_flags[fpr] = line.split(": ", 1)[1]
    rnp_home = workdir / f"rnp-{tag}"
    rnp_home.mkdir()
    run("rnpkeys", "--homedir", str(rnp_home), "--import", str(cert))
    listing = run("rnpkeys", "--homedir", str(rnp_home), "--list-keys").stdout.decode().splitlines()
    rnp = {}
    for line, nxt in itertools.pairwise(listing):
        head = re.match(
            r"(pub|sub)\s+\S+\s+[0-9a-f]{16} \S+ \[(\w*)\](?: \[EXPIRE[SD] (\S+)\])?", line
        )
        if head:
            rnp[nxt.strip().upper()] = (head.group(2), head.group(3))
    dump = run("pgpdump", str(cert)).stdout.decode()
    blocks = [b for b in re.split(r"\n(?=Old|New)", dump) if "Signature Packet" in b]
    return Seen(expires, caps, prefs, sq_expires, sq_flags, rnp, blocks)


def hashes_of(block: str) -> set[str]:
    """Hash algorithms of a signature and of any signature embedded in it (one tab deep;
    preference lists are printed two tabs deep)."""
    return set(re.findall(r"^\tHash alg - (\w+)", block, re.M))


def extend_with_policy(key: Made, now: datetime) -> tuple[str, dict[str, datetime], datetime]:
    """Run the policy as if the extension moment had come, then extend."""
    facts = resign.read_own(key.armored, datetime.now(UTC))
    new = {
        c.fingerprint: c.expires + EXTEND_BY for c in ownpolicy.taking_part(facts.components, now)
    }
    signed_at = ownpolicy.sig_time(now, facts.last_signature)
    return (
        resign.extend(key.armored, key.passphrase, new, sig_time=signed_at, now=datetime.now(UTC)),
        new,
        signed_at,
    )


def test_extension_seen_by_gpg_sq_rnp_and_pgpdump(workdir: Path, made: list[Made]) -> None:
    now = datetime.now(UTC)
    for key in made:
        before = observe(
            workdir,
            f"{key.name}-0",
            resign.read_own(key.armored, datetime.now(UTC)).public.encode(),
        )
        extended, new, signed_at = extend_with_policy(key, now)
        after = observe(
            workdir, f"{key.name}-1", resign.read_own(extended, datetime.now(UTC)).public.encode()
        )
        facts = resign.read_own(extended, datetime.now(UTC))
        roles = {c.fingerprint: c.role for c in facts.components}
        assert "encrypt" in roles.values(), key.name
        assert set(new) == set(roles), key.name  # every component had an expiry
        assert signed_at == now.replace(hour=0, minute=0, second=0, microsecond=0)
        for fpr, expiry in new.items():
            assert after.expires[fpr] == int(expiry.timestamp()), (key.name, roles[fpr])
            assert after.expires[fpr] - before.expires[fpr] == EXTEND_BY.total_seconds()
            assert after.sq_expires[fpr] == expiry.strftime("%Y-%m-%d %H:%M:%S UTC"), key.name
            assert after.rnp[fpr][1] == expiry.strftime("%Y-%m-%d"), key.name
        assert after.caps == before.caps, key.name
        assert after.sq_flags == before.sq_flags, key.name
        assert {f: r[0] for f, r in after.rnp.items()} == {f: r[0] for f, r in before.rnp.items()}
        assert after.prefs == before.prefs and after.prefs[0], key.name
        fresh = [b for b in after.signatures if b not in before.signatures]
        assert len(fresh) >= len(new), key.name
        assert set().union(*map(hashes_of, fresh)) <= STRONG, key.name
        assert facts.protected == (key.passphrase is not None)


def test_extended_secret_key_keeps_its_passphrase_for_gpg(workdir: Path, made: list[Made]) -> None:
    key = next(k for k in made if k.name == "sq-cv25519-pw")
    extended, _, _ = extend_with_policy(key, datetime.now(UTC))
    home = gpg_home(workdir, "passphrase")
    loop = ("--pinentry-mode", "loopback")
    gpg(home, *loop, "--passphrase", "eve pass", "--import", stdin=extended.encode())
    signing = ("--armor", "--detach-sign", "-u", "eve@example.org")
    wrong = gpg(home, *loop, "--passphrase", "not it", *signing, stdin=b"x", check=False)
    assert wrong.returncode != 0
    right = gpg(home, *loop, "--passphrase", "eve pass", *signing, stdin=b"x", check=False)
    assert right.returncode == 0, right.stderr.decode()
    run("gpgconf", "--homedir", str(home), "--kill", "gpg-agent")
    assert resign.read_own(extended, datetime.now(UTC)).protected


def test_expired_ten_days_ago_is_valid_for_gpg_after_extension(workdir: Path) -> None:
    now = datetime.now(UTC)
    created = now - timedelta(days=200)
    key = Made(
        "old", make_gpg(workdir, "old", created=created, expire="190d", pw="old pass"), "old pass"
    )
    facts = resign.read_own(key.armored, datetime.now(UTC))
    assert all(
        now - timedelta(days=11) < c.expires < now - timedelta(days=9) for c in facts.components
    )
    decision = ownpolicy.plan(
        facts.components,
        now=now,
        extend_by=EXTEND_BY,
        extend_when_left=WHEN_LEFT,
        previous_signature=facts.last_signature,
        seed=b"seed",
    )
    assert decision.extend_now and "expired" in decision.reason
    extended = resign.extend(
        key.armored,
        key.passphrase,
        decision.new_expiries,
        sig_time=decision.signature_time,
        now=datetime.now(UTC),
    )
    home = gpg_home(workdir, "encrypt")
    encrypt = ("--trust-model", "always", "--encrypt", "-r", facts.fingerprint)
    gpg(home, "--import", stdin=resign.read_own(key.armored, datetime.now(UTC)).public.encode())
    assert gpg(home, *encrypt, stdin=b"hello", check=False).returncode != 0
    gpg(home, "--import", stdin=resign.read_own(extended, datetime.now(UTC)).public.encode())
    assert gpg(home, *encrypt, stdin=b"hello", check=False).returncode == 0
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    seen = observe(workdir, "old-1", resign.read_own(extended, datetime.now(UTC)).public.encode())
    assert set(seen.expires) == set(decision.new_expiries) and len(seen.expires) == 2
    for fpr in seen.expires:
        assert seen.expires[fpr] == int((today + EXTEND_BY).timestamp())
    assert "E" in seen.caps[facts.fingerprint]  # gpg: the key as a whole can encrypt again


def test_wrong_or_missing_passphrase_raises_locked(made: list[Made]) -> None:
    key = next(k for k in made if k.name == "refreshd-pw")
    facts = resign.read_own(key.armored, datetime.now(UTC))
    new = {c.fingerprint: c.expires + EXTEND_BY for c in facts.components}
    signed_at = facts.last_signature + timedelta(seconds=1)
    with pytest.raises(resign.Locked, match="no passphrase"):
        resign.extend(key.armored, None, new, sig_time=signed_at, now=datetime.now(UTC))
    with pytest.raises(resign.Locked, match="does not unlock"):
        resign.extend(key.armored, "wrong", new, sig_time=signed_at, now=datetime.now(UTC))
    assert resign.extend(key.armored, "bea pass", new, sig_time=signed_at, now=datetime.now(UTC))


def test_generated_key_shape(made: list[Made]) -> None:
    facts = resign.read_own(made[0].armored, datetime.now(UTC))
    assert facts.addresses == ("ann@example.org",)
    assert [c.role for c in facts.components] == ["primary", "encrypt"]
    assert facts.components[0].expires == facts.components[1].expires
    assert facts.components[0].expires - facts.components[0].created == timedelta(days=180)
    assert resign.read_own(made[1].armored, datetime.now(UTC)).addresses == ("bea@example.org",)


def test_refuses_signature_times_not_after_the_newest_and_unknown_components(made) -> None:
    facts = resign.read_own(made[0].armored, datetime.now(UTC))
    new = {facts.fingerprint: facts.components[0].expires + EXTEND_BY}
    with pytest.raises(ValueError, match="not after the newest"):
        resign.extend(
            made[0].armored, None, new, sig_time=facts.last_signature, now=datetime.now(UTC)
        )
    with pytest.raises(ValueError, match="not components"):
        resign.extend(
            made[0].armored,
            None,
            {"AB" * 20: datetime.now(UTC)},
            sig_time=datetime.now(UTC),
            now=datetime.now(UTC),
        )


def test_revoked_subkey_is_seen_and_never_extended() -> None:
    armored = resign.generate(
        "r@example.org",
        None,
        now=datetime(2024, 1, 1, tzinfo=UTC),
        expiry=timedelta(days=180),
        passphrase=None,
    )
    key, _ = PGPKey.from_blob(armored)
    sub = next(iter(key.subkeys.values()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sub |= key.revoke(sub, created=datetime(2024, 2, 1, tzinfo=UTC))
    facts = resign.read_own(str(key), datetime.now(UTC))
    primary, encrypt = facts.components
    assert encrypt.revoked and not primary.revoked
    now = datetime(2024, 6, 25, tzinfo=UTC)
    assert set(
        ownpolicy.plan(
            facts.components,
            now=now,
            extend_by=EXTEND_BY,
            extend_when_left=WHEN_LEFT,
            previous_signature=facts.last_signature,
            seed=b"",
        ).new_expiries
    ) == {primary.fingerprint}
    with pytest.raises(ValueError, match="revoked"):
        resign.extend(
            str(key),
            None,
            {encrypt.fingerprint: now + EXTEND_BY},
            sig_time=now,
            now=datetime.now(UTC),
        )


def test_public_key_is_refused_where_the_secret_is_needed(made: list[Made]) -> None:
    public = resign.read_own(made[0].armored, datetime.now(UTC)).public.encode()
    with pytest.raises(resign.BadKey, match="public key"):
        resign.read_own(public, datetime.now(UTC))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=400), st.text(max_size=400)))
def test_malformed_keys_get_a_clear_error(blob: bytes | str) -> None:
    with pytest.raises(resign.BadKey):
        resign.read_own(blob, datetime.now(UTC))


def dearmor(armored: str) -> bytes:
    body = armored.split("\n\n", 1)[1].split("\n=", 1)[0]
    return base64.b64decode(body)


GOOD = dearmor(
    resign.generate(
        "g@example.org",
        None,
        now=datetime(2024, 1, 1, tzinfo=UTC),
        expiry=timedelta(days=180),
        passphrase=None,
    )
)


@settings(max_examples=300, deadline=None)
@given(
    cut=st.integers(min_value=1, max_value=len(GOOD)),
    at=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
)
def test_damaged_key_bytes_get_a_clear_error_or_parse(cut: int, at: int, flip: int) -> None:
    data = bytearray(GOOD[:cut])
    data[at % len(data)] ^= flip
    try:
        facts = resign.read_own(bytes(data), datetime.now(UTC))
    except resign.BadKey as exc:
        assert str(exc)
        return
    assert re.fullmatch(r"[0-9A-F]{40}", facts.fingerprint)
