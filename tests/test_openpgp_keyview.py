"""keyview against gpg and sq as oracles, on real keys made by gpg, sq and pgpy."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from refreshd.errors import KeyRejected
from refreshd.openpgp.keyview import (
    KeyView,
    normalize_address,
    parse_one,
    read_key,
)
from refreshd.openpgp.packets import Bundle, Cert, Packet, armor, signature_issuer
from tests import keyfactory as kf

NAMES = [
    "gpg-ed25519-1y",
    "gpg-ed25519-revoked",
    "gpg-rsa2048-never",
    "gpg-expired",
    "gpg-multi",
    "gpg-encryption-lapsed",
    "gpg-renewed",
    "sq-cv25519-3y",
    "sq-revoked",
    "sq-subkey-revoked",
    "sq-rsa3k-never",
    "sq-expired",
    "pgpy-ed25519-30d",
    "pgpy-rsa2048-never",
]


@pytest.fixture(scope="session")
def zoo() -> kf.Zoo:
    return kf.zoo()


# --- oracles -----------------------------------------------------------------------------------


@dataclass
class Oracle:
    """What an external tool says about each component (by fingerprint) and each user id."""

    expires: dict[str, int | None] = field(default_factory=dict)
    revoked: dict[str, bool] = field(default_factory=dict)
    uid_revoked: dict[str, bool] = field(default_factory=dict)
    can_encrypt: bool = False


def gpg_oracle(key: bytes, home: Path) -> Oracle:
    oracle = Oracle()
    pending: list[str] | None = None
    for line in kf.gpg_oracle(key, home).decode().splitlines():
        f = line.split(":")
        if f[0] in ("pub", "sub"):
            pending = f
            if f[0] == "pub":
                oracle.can_encrypt = "E" in f[11]
        elif f[0] == "fpr" and pending is not None:
            oracle.expires[f[9]] = int(pending[6]) if pending[6] else None
            oracle.revoked[f[9]] = pending[1] == "r"
            pending = None
        elif f[0] == "uid":
            oracle.uid_revoked[f[9]] = f[1] == "r"
    return oracle


def sq_oracle(key: bytes, path: Path, now: datetime) -> Oracle:
    path.write_bytes(key)
    out = subprocess.run(["sq", "inspect", str(path)], capture_output=True, text=True, check=True)
    oracle = Oracle()
    blocks: list[dict[str, object]] = []
    for line in out.stdout.splitlines():
        head = re.match(r"\s*(Fingerprint|Subkey): ([0-9A-F]{40})", line)
        if head:
            blocks.append({"fpr": head[2], "dead": False, "revoked": False, "exp": None, "enc": 0})
            continue
        if not blocks or re.match(r"\s*UserID:", line):
            if blocks and re.match(r"\s*UserID:", line):
                blocks.append({"fpr": None})
            continue
        block = blocks[-1]
        if block["fpr"] is None:
            continue
        if "Revoked" in line:
            block["revoked"] = block["dead"] = True
        if "Invalid:" in line or "Expired" in line:
            block["dead"] = True
        exp = re.search(r"Expiration time: (\S+ \S+) UTC", line)
        if exp:
            block["exp"] = int(
                datetime.strptime(exp[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
            )
        if "Key flags:" in line and "encryption" in line:
            block["enc"] = 1
    blocks = [b for b in blocks if b["fpr"]]
    for b in blocks:
        oracle.expires[str(b["fpr"])] = b["exp"]  # type: ignore[assignment]
        oracle.revoked[str(b["fpr"])] = bool(b["revoked"])
        exp = b["exp"]
        if isinstance(exp, int) and exp <= now.timestamp():
            b["dead"] = True
    primary_live = not blocks[0]["dead"]
    oracle.can_encrypt = primary_live and any(b["enc"] and not b["dead"] for b in blocks)
    return oracle


def ours(view: KeyView) -> Oracle:
    oracle = Oracle()
    for c in (view.primary, *view.subkeys):
        oracle.expires[c.fingerprint] = int(c.expires.timestamp()) if c.expires else None
        oracle.revoked[c.fingerprint] = c.revoked
    oracle.uid_revoked = {u.uid: u.revoked for u in view.uids}
    return oracle


# --- agreement with gpg and sq ------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_view_agrees_with_gpg(name: str, zoo: kf.Zoo, tmp_path: Path) -> None:
    key = zoo.keys[name]
    view = read_key(key, datetime.now(UTC))
    now = datetime.now(UTC)
    gpg = gpg_oracle(key, tmp_path / "gnupg")
    mine = ours(view)
    assert mine.expires == gpg.expires
    if view.revoked:
        # gpg marks every part of a revoked key revoked
        assert all(gpg.revoked.values()) and all(gpg.uid_revoked.values())
        assert set(mine.uid_revoked) == set(gpg.uid_revoked)
    else:
        assert mine.revoked == gpg.revoked
        assert mine.uid_revoked == gpg.uid_revoked
    assert view.can_encrypt(now) == gpg.can_encrypt


@pytest.mark.parametrize("name", NAMES)
def test_view_agrees_with_sq(name: str, zoo: kf.Zoo, tmp_path: Path) -> None:
    key = zoo.keys[name]
    view = read_key(key, datetime.now(UTC))
    now = datetime.now(UTC)
    sq = sq_oracle(key, tmp_path / "key.pgp", now)
    mine = ours(view)
    assert mine.expires == sq.expires
    assert mine.revoked == sq.revoked
    assert view.can_encrypt(now) == sq.can_encrypt


def test_zoo_covers_the_required_kinds(zoo: kf.Zoo) -> None:
    now = datetime.now(UTC)
    views = {name: read_key(zoo.keys[name], datetime.now(UTC)) for name in NAMES}
    algorithms = {v.primary.algorithm for v in views.values()}
    assert {"RSA", "EdDSA"} <= algorithms
    assert any(not v.usable(now) and not v.revoked for v in views.values())  # expired
    assert any(v.revoked for v in views.values())
    assert any(v.expires is None for v in views.values())
    assert any(len(v.subkeys) >= 4 for v in views.values())
    assert any(len(v.uids) >= 3 for v in views.values())


def test_armored_and_binary_read_the_same(zoo: kf.Zoo) -> None:
    key = zoo.keys["gpg-multi"]
    assert read_key(armor(key).encode(), datetime.now(UTC)) == read_key(key, datetime.now(UTC))


def test_renewal_by_newer_self_signature_counts(zoo: kf.Zoo) -> None:
    view = read_key(zoo.keys["gpg-renewed"], datetime.now(UTC))
    assert view.usable(datetime.now(UTC))
    assert view.newest_self_signature > view.primary.created


# --- verification is cryptographic -------------------------------------------------------------


def _corrupt_value(packet: Packet) -> Packet:
    """The same signature with its last value octet flipped (quick-check octets untouched)."""
    body = bytearray(packet.body)
    body[-1] ^= 0x01
    return kf.new_packet(2, bytes(body))


def test_bad_uid_self_signature_does_not_count(zoo: kf.Zoo) -> None:
    cert = parse_one(zoo.keys["gpg-multi"])
    uids = [Bundle(u.packet, tuple(_corrupt_value(s) for s in u.sigs)) for u in cert.uids]
    broken = Cert(cert.primary, (uids[0], *cert.uids[1:]), cert.subkeys).serialize()
    view = read_key(broken, datetime.now(UTC))
    assert "Multi <multi@example.org>" not in {u.uid for u in view.uids}
    assert "multi@work.example" in view.addresses()


def test_bad_subkey_binding_drops_the_subkey(zoo: kf.Zoo) -> None:
    cert = parse_one(zoo.keys["gpg-ed25519-1y"])
    (sub,) = cert.subkeys
    broken = Bundle(sub.packet, tuple(_corrupt_value(s) for s in sub.sigs))
    view = read_key(Cert(cert.primary, cert.uids, (broken,)).serialize(), datetime.now(UTC))
    assert view.subkeys == ()
    assert not view.can_encrypt(datetime.now(UTC))


def test_key_without_valid_self_signature_is_rejected(zoo: kf.Zoo) -> None:
    cert = parse_one(zoo.keys["gpg-ed25519-1y"])
    bare = Cert(cert.primary, tuple(Bundle(u.packet) for u in cert.uids), ()).serialize()
    with pytest.raises(KeyRejected, match="no valid self-signature"):
        read_key(bare, datetime.now(UTC))
    forged = Cert(
        cert.primary,
        tuple(Bundle(u.packet, tuple(_corrupt_value(s) for s in u.sigs)) for u in cert.uids),
        (),
    ).serialize()
    with pytest.raises(KeyRejected, match="no valid self-signature"):
        read_key(forged, datetime.now(UTC))


def test_uid_self_signed_by_another_key_does_not_count(zoo: kf.Zoo) -> None:
    """A user id carried over from another key (its signature made over other key material)."""
    victim = parse_one(zoo.keys["gpg-ed25519-1y"])
    thief = parse_one(zoo.keys["pgpy-ed25519-30d"])
    graft = Cert(thief.primary, (*thief.uids, victim.uids[0]), thief.subkeys).serialize()
    view = read_key(graft, datetime.now(UTC))
    assert view.addresses() == frozenset({"pat@example.org"})


def test_key_without_uids_is_read(zoo: kf.Zoo) -> None:
    view = read_key(kf.without_uids(zoo.keys["sq-cv25519-3y"]), datetime.now(UTC))
    assert view.uids == () and view.addresses() == frozenset()
    assert view.expires is not None  # sq states it on a direct-key signature


# --- verified key transition -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("new", "old", "address", "expected"),
    [
        ("new-certified", "old", "tess@example.org", True),
        ("new-certified", "old", "tess@EXAMPLE.org", True),
        ("new-certified", "old", "Tess@example.org", False),
        ("new-certified", "old", "tess@work.example", True),
        ("new-certified-other-uid", "old", "tess@example.org", False),
        ("new-certified-other-uid", "old", "tess@work.example", True),
        ("new-certified", "other", "tess@example.org", False),
        ("new-certified-by-other", "other", "tess@example.org", True),
        ("new", "old", "tess@example.org", False),
        ("new-certification-revoked", "old", "tess@example.org", False),
        ("new-certified-by-sq", "sq-old", "tess@example.org", True),
        ("new-certified-by-sq", "old", "tess@example.org", False),
        ("old", "old", "tess@example.org", False),
        ("new-certified", "old", "mallory@example.org", False),
    ],
)
def test_certifies_uid(new: str, old: str, address: str, expected: bool, zoo: kf.Zoo) -> None:
    t = zoo.transition
    assert kf.certifies_uid(t[new], t[old], address) is expected


def test_certification_survives_flood_and_forgery_does_not(zoo: kf.Zoo) -> None:
    t = zoo.transition
    flooded = kf.flood(t["new-certified"], 300)
    assert kf.certifies_uid(flooded, t["old"], "tess@example.org")
    old_fpr = read_key(t["old"], datetime.now(UTC)).fingerprint
    cert = parse_one(t["new-certified"], frozenset({old_fpr}))

    def forge(sig: Packet) -> Packet:
        issuer, _ = signature_issuer(sig.body)
        return _corrupt_value(sig) if issuer == bytes.fromhex(old_fpr)[-8:] else sig

    uids = tuple(Bundle(u.packet, tuple(forge(s) for s in u.sigs)) for u in cert.uids)
    forged = Cert(cert.primary, uids, cert.subkeys).serialize()
    assert forged != cert.serialize()
    assert (
        read_key(forged, datetime.now(UTC)).addresses()
        == read_key(t["new"], datetime.now(UTC)).addresses()
    )
    assert not kf.certifies_uid(forged, t["old"], "tess@example.org")


# --- addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Name <Bob@Example.ORG>", "Bob@example.org"),
        ("<bob@example.org>", "bob@example.org"),
        ("bob@example.org", "bob@example.org"),
        ("  Bob (work) <bob+tag@Sub.Example.org>  ", "bob+tag@sub.example.org"),
        ("Jörg <jörg@bücher.example>", "jörg@xn--bcher-kva.example"),
        ("x <jörg@XN--BCHER-KVA.example>", "jörg@xn--bcher-kva.example"),
        ("Bob", None),
        ("Bob <bob>", None),
        ("<bob@localhost>", None),
        ("a <b@example.org> <c@example.org>", None),
        ("<@example.org>", None),
        ("bob@@example.org", None),
        ("bob smith@example.org", None),
        ("<bob@exa mple.org>", None),
        ("<bob@-example.org>", None),
        ("", None),
    ],
)
def test_normalize_address(text: str, expected: str | None) -> None:
    assert normalize_address(text) == expected
